/**
 * The shims' build: each `shims/<name>.ts` is bundled by esbuild into one executable CommonJS file,
 * `.gpuops/sandbox-bin/<name>` (shebang, mode 0755), which starts as plain `node` with no TypeScript loader — the
 * node worker runs the shims several times a second. `npm start` / `npm test` build them first (scripts/bootstrap.mjs
 * → scripts/build-sandbox-shims.ts); whatever hands out the shim directory ({@link ensureShims}: SandboxNode,
 * sandboxHypervisorEnv, the sandbox tests' helpers) rebuilds them when a source is newer, so a jest run without the
 * npm hook, or after an edit, still runs current shims.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type * as Esbuild from 'esbuild';

/** The shims, by the name of the tool each stands in for. */
export const SHIMS = ['docker', 'nvidia-smi', 'qm', 'dmesg', 'systemctl', 'journalctl'] as const;

/** The repository root (as config/load's PROJECT_ROOT; not imported from there so this stays light). */
const ROOT = path.resolve(__dirname, '..', '..');

/** Directory of the built shims (what goes first on a sandbox node's PATH); {@link ensureShims} fills it. */
export const SHIM_DIR = path.join(ROOT, '.gpuops', 'sandbox-bin');

/** Written last by a build, beside the shims: the inputs it read, so a later check knows what to compare. */
const STAMP = '.inputs.json';

interface Stamp {
  /** When the build began (epoch ms): a source changed after that may not be in it. */
  startedAt: number;
  /** Every source file the bundles contain, repository-relative (esbuild's metafile inputs). */
  inputs: string[];
}

/** Checked once per process: a long-running process keeps the shims it started with, as it keeps its own code. */
let ready = false;

/** Sources of the shim entry points; .ts under tsx or jest, .js in a tsc build of src/. */
function entryPoints(): Record<string, string> {
  const ext = path.extname(__filename);
  return Object.fromEntries(SHIMS.map((name) => [name, path.join(__dirname, 'shims', `${name}${ext}`)]));
}

function mtime(file: string): number | undefined {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
}

/**
 * Up to date when the stamp and every shim exist and no input (nor this builder) changed since the build began: a
 * dozen stat calls. A new import shows up as a change of the file that imports it.
 */
export function shimsUpToDate(dir = SHIM_DIR): boolean {
  let stamp: Stamp;
  try {
    stamp = JSON.parse(fs.readFileSync(path.join(dir, STAMP), 'utf8')) as Stamp;
  } catch {
    return false;
  }
  if (typeof stamp.startedAt !== 'number' || !Array.isArray(stamp.inputs)) return false;
  const sources = [__filename, ...Object.values(entryPoints()), ...stamp.inputs.map((f) => path.resolve(ROOT, f))];
  if (sources.some((f) => (mtime(f) ?? Infinity) >= stamp.startedAt)) return false;
  return SHIMS.every((name) => mtime(path.join(dir, name)) !== undefined);
}

/** Write `text` to `file` so that no reader ever sees it half-written: a temp file beside it, then rename. */
function writeAtomic(file: string, text: string | Uint8Array, mode: number): void {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    fs.writeFileSync(tmp, text, { mode });
    fs.chmodSync(tmp, mode); // the umask must not take the execute bits away
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

/**
 * Bundle every shim now. Concurrent builds (several jest workers finding the shims stale at once) are harmless:
 * each writes whole files by rename, and the stamp goes last, after every shim it vouches for.
 */
export function buildShims(dir = SHIM_DIR): void {
  const startedAt = Date.now();
  // esbuild is loaded only for a build (about 25 ms), not on every check.
  const esbuild = createRequire(__filename)('esbuild') as typeof Esbuild;
  const result = esbuild.buildSync({
    entryPoints: entryPoints(),
    absWorkingDir: ROOT,
    outdir: dir,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    charset: 'utf8',
    banner: { js: '#!/usr/bin/env node' },
    legalComments: 'none',
    metafile: true,
    write: false,
    logLevel: 'silent',
  });
  fs.mkdirSync(dir, { recursive: true });
  for (const f of result.outputFiles) {
    // esbuild names the outputs <name>.js; the tools are called by their bare names.
    writeAtomic(path.join(dir, path.basename(f.path, '.js')), f.contents, 0o755);
  }
  const stamp: Stamp = { startedAt, inputs: Object.keys(result.metafile.inputs).sort() };
  writeAtomic(path.join(dir, STAMP), `${JSON.stringify(stamp, null, 1)}\n`, 0o644);
}

/** Make sure the built shims are current (rebuilding them if not) and return their directory. */
export function ensureShims(): string {
  if (!ready) {
    if (!shimsUpToDate()) buildShims();
    ready = true;
  }
  return SHIM_DIR;
}
