/**
 * The model arguments of an engine container's command line, read and rewritten: what a canary slot changes when it
 * recreates a vLLM or llama.cpp `llama-server` container with another model. Pure: no I/O, unit-tested over the real
 * CLIs' argument forms.
 *
 * - vLLM: `--model X` / `--model=X`, or the positional model of `vllm serve X`; `--revision R`; `--served-model-name
 *   A [B …]` (the names /v1/models lists; the model id when unset).
 * - llama.cpp: `-m/--model PATH`, `-hf/-hfr/--hf-repo OWNER/REPO[:QUANT]` with `-hff/--hf-file FILE`,
 *   `-mu/--model-url URL`; `-a/--alias NAME` (the id /v1/models lists).
 */

/** Engine kinds whose model is a command-line argument (one model per container). */
export type SlotEngineType = 'vllm' | 'llamacpp';

/** The model a command line serves. */
export interface CmdModel {
  /** vLLM: the model id or path; llama.cpp: the -m path, the -hf repo[:quant] (plus "/" and the --hf-file), or URL. */
  model: string | null;
  /** vLLM --revision; null when unset (the repository's default branch). */
  revision: string | null;
  /** vLLM --served-model-name (first) or llama.cpp --alias; null when unset. */
  servedName: string | null;
}

/** What to serve. */
export interface ModelSpec {
  /**
   * vLLM: a Hugging Face repo id (`Qwen/Qwen2.5-7B-Instruct`) or a local path. llama.cpp: a `.gguf` file (an absolute
   * path, or a bare file name in the directory of the current `-m` model) or a Hugging Face GGUF repo
   * `owner/repo[:quant]` (`-hf`).
   */
  model: string;
  /** vLLM only: a branch, tag or commit of the repo. */
  revision?: string | undefined;
}

/** Thrown for a model spec the engine cannot take on its command line (a revision for llama.cpp, a bad name). */
export class ModelArgsError extends Error {
  override readonly name = 'ModelArgsError';
}

const VLLM_MODEL = ['--model'];
const VLLM_REVISION = ['--revision'];
const VLLM_SERVED = ['--served-model-name'];
const LLAMA_PATH = ['-m', '--model'];
const LLAMA_REPO = ['-hf', '-hfr', '--hf-repo'];
const LLAMA_FILE = ['-hff', '--hf-file'];
const LLAMA_URL = ['-mu', '--model-url'];
const LLAMA_ALIAS = ['-a', '--alias'];

interface Flag {
  /** Index of the flag token. */
  at: number;
  name: string;
  values: string[];
  /** Tokens the flag occupies (flag plus separate values). */
  span: number;
}

/** Find `--flag V`, `--flag=V` (and for nargs-many flags, every value up to the next flag) in argv. */
function findFlags(argv: readonly string[], names: readonly string[], many = false): Flag[] {
  const out: Flag[] = [];
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i] ?? '';
    const eq = tok.indexOf('=');
    const head = tok.startsWith('--') && eq > 0 ? tok.slice(0, eq) : tok;
    if (!names.includes(head)) continue;
    if (head !== tok) {
      out.push({ at: i, name: head, values: [tok.slice(eq + 1)], span: 1 });
      continue;
    }
    const values: string[] = [];
    let j = i + 1;
    while (j < argv.length && !(argv[j] ?? '').startsWith('-') && (many || values.length === 0)) {
      values.push(argv[j] ?? '');
      j++;
    }
    out.push({ at: i, name: head, values, span: j - i });
    i = j - 1;
  }
  return out;
}

/** Remove every occurrence of the named flags; returns the remaining argv and where the first one was. */
function dropFlags(argv: readonly string[], names: readonly string[], many = false): { argv: string[]; at: number } {
  const flags = findFlags(argv, names, many);
  const skip = new Set<number>();
  for (const f of flags) for (let k = 0; k < f.span; k++) skip.add(f.at + k);
  const first = flags[0]?.at ?? -1;
  const kept: string[] = [];
  let at = -1;
  argv.forEach((tok, i) => {
    if (i === first) at = kept.length;
    if (!skip.has(i)) kept.push(tok);
  });
  return { argv: kept, at };
}

/**
 * Index in `cmd` of vLLM's positional model (`vllm serve MODEL`), looking across the entrypoint: `serve` may end the
 * entrypoint (image `vllm/vllm-openai` ≥ 0.9 has ENTRYPOINT ["vllm", "serve"]) or sit in the command.
 */
function vllmPositional(cmd: readonly string[], entrypoint: readonly string[]): number {
  const full = [...entrypoint, ...cmd];
  for (let i = 1; i < full.length; i++) {
    const prev = full[i - 1] ?? '';
    if (full[i] === 'serve' && (prev === 'vllm' || prev.endsWith('/vllm'))) {
      const at = i + 1 - entrypoint.length;
      const tok = full[i + 1];
      return at >= 0 && tok !== undefined && !tok.startsWith('-') ? at : -1;
    }
  }
  return -1;
}

/** The model a vLLM or llama.cpp command line serves. */
export function modelOfCmd(type: SlotEngineType, cmd: readonly string[], entrypoint: readonly string[] = []): CmdModel {
  const last = (names: readonly string[], many = false): string | null => {
    const f = findFlags(cmd, names, many).at(-1);
    return f?.values[0] ?? null;
  };
  if (type === 'vllm') {
    const pos = vllmPositional(cmd, entrypoint);
    return {
      model: last(VLLM_MODEL) ?? (pos >= 0 ? (cmd[pos] ?? null) : null),
      revision: last(VLLM_REVISION),
      servedName: last(VLLM_SERVED, true),
    };
  }
  const repo = last(LLAMA_REPO);
  const file = last(LLAMA_FILE);
  return {
    model: last(LLAMA_PATH) ?? (repo !== null && file !== null ? `${repo}/${file}` : repo) ?? last(LLAMA_URL),
    revision: null,
    servedName: last(LLAMA_ALIAS),
  };
}

const HF_REPO = /^[A-Za-z0-9][\w.-]*\/[\w.-]+(?::[\w.-]+)?$/;

/** The llama.cpp model flags for a spec: `-m PATH` or `-hf REPO[:QUANT]`. */
function llamaModelFlags(model: string, current: readonly string[]): string[] {
  if (/\.gguf$/i.test(model)) {
    if (model.includes('/')) return ['-m', model];
    // A bare file name lives next to the model the container serves now (its models volume).
    const path = findFlags(current, LLAMA_PATH).at(-1)?.values[0];
    const dir = path?.includes('/') ? path.slice(0, path.lastIndexOf('/')) : undefined;
    return ['-m', dir !== undefined ? `${dir}/${model}` : model];
  }
  if (HF_REPO.test(model)) return ['-hf', model];
  throw new ModelArgsError(
    `llama.cpp model must be a .gguf file or a Hugging Face GGUF repo owner/repo[:quant] (got "${model}")`,
  );
}

/**
 * `cmd` with its model replaced by `spec`, and the name the engine will list in /v1/models (the router's model name
 * for it): always `spec.model`. vLLM: `--model` (or the positional `serve` model) replaced in place, `--revision`
 * set or removed, `--served-model-name` (when the command had one) set to the model. llama.cpp: the `-m`/`-hf`/
 * `--hf-file`/`-mu` flags replaced by one `-m` or `-hf`, and `--alias` set to the model so /v1/models names it
 * exactly. Everything else in the command is kept in order.
 */
export function withModel(
  type: SlotEngineType,
  cmd: readonly string[],
  spec: ModelSpec,
  entrypoint: readonly string[] = [],
): { cmd: string[]; servedModel: string } {
  const model = spec.model.trim();
  if (model === '' || model.startsWith('-')) throw new ModelArgsError(`model must be a name (got "${spec.model}")`);
  if (type === 'vllm') {
    const pos = vllmPositional(cmd, entrypoint);
    const hadServed = findFlags(cmd, VLLM_SERVED, true).length > 0;
    let argv = [...cmd];
    if (pos >= 0) argv[pos] = `\u0000model`; // a marker that no flag scan matches
    const served = dropFlags(argv, VLLM_SERVED, true);
    const revision = dropFlags(served.argv, VLLM_REVISION);
    const flag = dropFlags(revision.argv, VLLM_MODEL);
    argv = flag.argv;
    const extra = [
      ...(spec.revision ? ['--revision', spec.revision] : []),
      ...(hadServed ? ['--served-model-name', model] : []),
    ];
    const marker = argv.indexOf(`\u0000model`);
    if (marker >= 0) {
      // Positional model: flags go after it (vLLM accepts flags anywhere after `serve MODEL`).
      argv.splice(marker, 1, model, ...extra);
      // A --model beside a positional model would be a second model; it was dropped above.
    } else {
      const at = flag.at >= 0 ? flag.at : 0;
      argv.splice(at, 0, '--model', model, ...extra);
    }
    return { cmd: argv, servedModel: model };
  }
  if (spec.revision) {
    throw new ModelArgsError('llama.cpp takes no revision: name the .gguf file or repo:quant instead');
  }
  const flags = llamaModelFlags(model, cmd);
  let argv = [...cmd];
  const alias = dropFlags(argv, LLAMA_ALIAS);
  argv = alias.argv;
  let at = -1;
  for (const names of [LLAMA_PATH, LLAMA_REPO, LLAMA_FILE, LLAMA_URL]) {
    const d = dropFlags(argv, names);
    if (d.at >= 0) at = at < 0 ? d.at : Math.min(at, d.at);
    argv = d.argv;
  }
  argv.splice(at >= 0 ? at : 0, 0, ...flags, '--alias', model);
  return { cmd: argv, servedModel: model };
}

/** True when `cmd` already serves `spec` exactly as {@link withModel} would write it. */
export function servesModel(
  type: SlotEngineType,
  cmd: readonly string[],
  spec: ModelSpec,
  entrypoint: readonly string[] = [],
): boolean {
  try {
    const next = withModel(type, cmd, spec, entrypoint).cmd;
    return next.length === cmd.length && next.every((t, i) => t === cmd[i]);
  } catch {
    return false;
  }
}

/** Flags whose value is a secret (vLLM --api-key, llama.cpp --api-key and --hf-token, …). */
const SECRET_FLAG = /^--?(?:[\w-]*-)?(?:api-key|token|secret|password|hft)$/i;

/**
 * argv with the values of secret-bearing flags replaced by "<redacted>": command lines go into errors, results
 * and workflow history, and an engine's API key on its command line must not.
 */
export function redactArgs(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i] ?? '';
    const eq = tok.indexOf('=');
    if (tok.startsWith('-') && eq > 0 && SECRET_FLAG.test(tok.slice(0, eq))) {
      out.push(`${tok.slice(0, eq)}=<redacted>`);
    } else if (SECRET_FLAG.test(tok) && i + 1 < argv.length) {
      out.push(tok, '<redacted>');
      i++;
    } else {
      out.push(tok);
    }
  }
  return out;
}
