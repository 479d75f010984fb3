/**
 * The docker CLI adapter: container state from `docker inspect`, lifecycle commands and recent logs. It shells out
 * to the `docker` binary (not the Engine socket) so the sandbox's `docker` shim drives exactly the same code.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ContainerState } from '../domain/health';
import { redactArgs, servesModel, withModel, type ModelSpec, type SlotEngineType } from './engines/model-args';
import { describeFailure, runTool, ToolError, type ToolResult } from './exec';
import { NoSuchContainerError, type EngineRuntime, type RecreateResult } from './runtime';

/** Options of DockerCli. */
export interface DockerCliOptions {
  /** docker binary; looked up on PATH at call time. */
  bin?: string;
  /** Extra environment, e.g. DOCKER_HOST. */
  env?: Record<string, string | undefined>;
  /** Per-command timeout (default 60 s; restart adds its own stop timeout on top). */
  timeoutMs?: number;
}

export { NoSuchContainerError };

const STATUSES = ['created', 'running', 'paused', 'restarting', 'removing', 'exited', 'dead'] as const;
type DockerStatus = (typeof STATUSES)[number];

/**
 * Podman's own state names (libpod `ContainerStatus.String()`), printed by its docker-compatible inspect: `configured`
 * (podman < 2; created, never started), `initialized` (prepared for start, not yet started), `stopped` (older podman
 * for a stopped container) and `stopping`. `configured` must not read as `exited`: a never-started container is
 * standby, an exited one may be a crash.
 */
const PODMAN_STATUSES: Readonly<Record<string, DockerStatus | ((running: boolean) => DockerStatus)>> = {
  configured: 'created',
  initialized: 'created',
  stopped: 'exited',
  stopping: (running) => (running ? 'running' : 'exited'),
};
const HEALTH = ['healthy', 'unhealthy', 'starting'] as const;

/** Docker prints this zero time for StartedAt/FinishedAt of a container that never started or never stopped. */
const ZERO_TIME = '0001-01-01T00:00:00Z';

// Fault signatures worth surfacing from engine logs. Kept narrow: every match is shown to an operator and the CUDA
// OOM ones feed fault classification (src/domain/classify.ts).
const LOG_SIGNATURES: readonly RegExp[] = [
  /CUDA out of memory/i,
  /CUDA error: out of memory/i,
  /cudaMalloc failed/i,
  /CUBLAS_STATUS_ALLOC_FAILED/,
  /OutOfMemoryError/,
  /\bXid\b/,
  /illegal memory access/i,
  /NCCL error/i,
];
const MAX_SIGNALS = 5;
const MAX_SIGNAL_CHARS = 300;

/**
 * The lines of a log that match a known fault signature: the most recent `max`, deduplicated, each cut to 300
 * characters so one runaway stack trace cannot bloat a workflow history.
 */
export function scanLogSignals(lines: readonly string[], max = MAX_SIGNALS): string[] {
  const hits: string[] = [];
  for (let i = lines.length - 1; i >= 0 && hits.length < max; i--) {
    const line = (lines[i] ?? '').trim();
    if (line === '' || !LOG_SIGNATURES.some((re) => re.test(line))) continue;
    const cut = line.length > MAX_SIGNAL_CHARS ? `${line.slice(0, MAX_SIGNAL_CHARS - 1)}…` : line;
    if (!hits.includes(cut)) hits.push(cut);
  }
  return hits.reverse();
}

/** A container missing from `docker inspect`: reported, not thrown, so a probe still sees every other container. */
export function missingContainer(name: string): ContainerState {
  return {
    name,
    exists: false,
    status: 'missing',
    running: false,
    exitCode: 0,
    oomKilled: false,
    restartCount: 0,
    health: 'none',
    logSignals: [],
  };
}

function asRecord(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

/** One element of `docker inspect`'s JSON array → ContainerState (logSignals left empty). */
export function parseInspectEntry(entry: unknown, name?: string): ContainerState {
  const e = asRecord(entry);
  const state = asRecord(e?.State);
  if (!e || !state) throw new Error('docker inspect entry has no State object (not a container?)');
  const rawName = typeof e.Name === 'string' ? e.Name.replace(/^\//, '') : undefined;
  const rawStatus = typeof state.Status === 'string' ? state.Status : '';
  const running = state.Running === true;
  const podman = PODMAN_STATUSES[rawStatus];
  // Unknown future statuses degrade to what Running says rather than failing the whole probe.
  const status: DockerStatus = (STATUSES as readonly string[]).includes(rawStatus)
    ? (rawStatus as DockerStatus)
    : podman !== undefined
      ? typeof podman === 'function'
        ? podman(running)
        : podman
      : running
        ? 'running'
        : 'exited';
  // Podman 2.x and 3.x name the health record State.Healthcheck; docker (and podman 4+) State.Health.
  const healthStatus = (asRecord(state.Health) ?? asRecord(state.Healthcheck))?.Status;
  const health = (HEALTH as readonly unknown[]).includes(healthStatus)
    ? (healthStatus as ContainerState['health'])
    : 'none';
  const config = asRecord(e.Config);
  const time = (v: unknown): string | undefined =>
    typeof v === 'string' && v !== '' && v !== ZERO_TIME ? v : undefined;
  const startedAt = time(state.StartedAt);
  const finishedAt = time(state.FinishedAt);
  return {
    name: name ?? rawName ?? String(e.Id ?? ''),
    exists: true,
    status,
    running,
    exitCode: typeof state.ExitCode === 'number' ? state.ExitCode : 0,
    oomKilled: state.OOMKilled === true,
    restartCount: typeof e.RestartCount === 'number' ? e.RestartCount : 0,
    health,
    ...(typeof config?.Image === 'string' ? { image: config.Image } : {}),
    ...(startedAt ? { startedAt } : {}),
    ...(finishedAt ? { finishedAt } : {}),
    logSignals: [],
  };
}

/**
 * Names docker reported missing, in any casing and with or without quotes: "Error: No such object: X" (docker
 * inspect before 29), "error: no such object: X" (docker 29+), "Error response from daemon: No such container: X"
 * and podman's `no such object: "X"` / `no such container "X"`.
 */
export function missingNames(stderr: string): Set<string> {
  const out = new Set<string>();
  for (const m of stderr.matchAll(/no such (?:object|container):?\s+"?([^"\s]+)"?/gi)) {
    if (m[1]) out.add(m[1]);
  }
  return out;
}

/**
 * Interpret one `docker inspect NAME...` run. docker prints the containers it found as a JSON array on stdout and one
 * "Error: No such object: NAME" line per missing name on stderr, exiting 1 if any was missing. Anything else that
 * fails (daemon down, permission denied) throws with the command and its stderr.
 */
export function parseDockerInspect(
  result: Pick<ToolResult, 'exitCode' | 'stdout' | 'stderr'>,
  names: readonly string[],
): ContainerState[] {
  const missing = missingNames(result.stderr);
  let entries: unknown[] = [];
  const text = result.stdout.trim();
  if (text !== '') {
    const parsed: unknown = JSON.parse(text);
    if (!Array.isArray(parsed)) throw new Error('docker inspect did not print a JSON array');
    entries = parsed;
  }
  const byName = new Map<string, unknown>();
  for (const entry of entries) {
    const e = asRecord(entry);
    if (!e || !asRecord(e.State)) continue; // an image or network that happens to share the name
    if (typeof e.Name === 'string') byName.set(e.Name.replace(/^\//, ''), entry);
    if (typeof e.Id === 'string') byName.set(e.Id, entry);
  }
  return names.map((name) => {
    // Containers may also be named by an id prefix, as docker itself allows.
    const byIdPrefix = /^[0-9a-f]{12,}$/.test(name)
      ? [...byName.entries()].find(([k]) => k.startsWith(name))?.[1]
      : undefined;
    const entry = byName.get(name) ?? byIdPrefix;
    if (entry !== undefined) return parseInspectEntry(entry, name);
    if (missing.has(name) || result.exitCode === 0) return missingContainer(name);
    throw new Error(
      `docker inspect failed for "${name}": ${result.stderr.trim() || `exit ${String(result.exitCode)}`}`,
    );
  });
}

/** The docker CLI. Every command is an argument array; exit codes are checked and failures name the command. */
export class DockerCli implements EngineRuntime {
  readonly kind = 'docker' as const;
  private readonly bin: string;
  private readonly env: Record<string, string | undefined> | undefined;
  private readonly timeoutMs: number;

  constructor(opts: DockerCliOptions = {}) {
    this.bin = opts.bin ?? 'docker';
    this.env = opts.env;
    this.timeoutMs = opts.timeoutMs ?? 60_000;
  }

  private run(
    args: string[],
    extra: { timeoutMs?: number; all?: boolean; signal?: AbortSignal } = {},
  ): Promise<ToolResult> {
    return runTool(this.bin, args, {
      timeoutMs: extra.timeoutMs ?? this.timeoutMs,
      ...(this.env ? { env: this.env } : {}),
      ...(extra.all ? { all: true } : {}),
      ...(extra.signal ? { signal: extra.signal } : {}),
    });
  }

  /**
   * State of each named container, in the order asked. Missing containers come back as `exists: false`,
   * `status: 'missing'`. With `logSignals`, the logs of each existing container since it last started are scanned
   * for fault signatures (so an OOM from a previous run does not haunt the current one).
   */
  async inspect(
    names: readonly string[],
    opts: { logSignals?: { tail?: number } | false } = {},
  ): Promise<ContainerState[]> {
    if (names.length === 0) return [];
    // No --type flag: plain `docker inspect` is what every docker version (and the sandbox shim) accepts; entries
    // without a State (an image sharing the name) are filtered out by the parser.
    const result = await this.run(['inspect', ...names]);
    if (result.spawnError !== null || result.timedOut) throw new ToolError(describeFailure(result), result);
    let states: ContainerState[];
    try {
      states = parseDockerInspect(result, names);
    } catch (err) {
      throw new ToolError(`${describeFailure(result)} (${(err as Error).message})`, result);
    }
    if (!opts.logSignals) return states;
    const tail = opts.logSignals.tail ?? 200;
    return Promise.all(
      states.map(async (s) => {
        if (!s.exists) return s;
        const lines = await this.logs(s.name, { tail, ...(s.startedAt ? { since: s.startedAt } : {}) }).catch(() => []);
        return { ...s, logSignals: scanLogSignals(lines) };
      }),
    );
  }

  /** State of one container (missing → `exists: false`). */
  async inspectOne(name: string): Promise<ContainerState> {
    const [state] = await this.inspect([name]);
    return state ?? missingContainer(name);
  }

  /** `docker restart -t N NAME`: docker stops (SIGTERM, then SIGKILL after N s) and starts it again. */
  async restart(name: string, opts: { timeoutSec?: number; signal?: AbortSignal } = {}): Promise<void> {
    const t = opts.timeoutSec ?? 10;
    await this.lifecycle(name, ['restart', '-t', String(t), name], t, opts.signal);
  }

  /** `docker start NAME`; starting a running container succeeds (docker itself is idempotent here). */
  async start(name: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.lifecycle(name, ['start', name], 0, opts.signal);
  }

  /** `docker stop -t N NAME`; stopping a stopped container succeeds. */
  async stop(name: string, opts: { timeoutSec?: number; signal?: AbortSignal } = {}): Promise<void> {
    const t = opts.timeoutSec ?? 10;
    await this.lifecycle(name, ['stop', '-t', String(t), name], t, opts.signal);
  }

  private async lifecycle(name: string, args: string[], stopSec: number, signal?: AbortSignal): Promise<void> {
    // The stop grace period is spent inside docker, so the command timeout must cover it.
    const result = await this.run(args, { timeoutMs: this.timeoutMs + stopSec * 1000, ...(signal ? { signal } : {}) });
    if (result.exitCode === 0) return;
    if (missingNames(result.stderr).has(name)) throw new NoSuchContainerError(name);
    throw new ToolError(describeFailure(result), result);
  }

  /**
   * Recent log lines, stdout and stderr interleaved (docker logs replays the container's stderr on its own stderr,
   * and engines write their errors there).
   */
  async logs(name: string, opts: { tail?: number; since?: string; signal?: AbortSignal } = {}): Promise<string[]> {
    const args = ['logs', '--tail', String(opts.tail ?? 200)];
    if (opts.since) args.push('--since', opts.since);
    args.push(name);
    const result = await this.run(args, { all: true, ...(opts.signal ? { signal: opts.signal } : {}) });
    if (result.exitCode !== 0) {
      if (missingNames(result.stderr).has(name)) throw new NoSuchContainerError(name);
      throw new ToolError(describeFailure(result), result);
    }
    return result.all === '' ? [] : result.all.split(/\r?\n/);
  }

  /** Fault signatures in a container's recent logs. */
  async logSignals(name: string, opts: { tail?: number; since?: string } = {}): Promise<string[]> {
    return scanLogSignals(await this.logs(name, opts));
  }

  /** The raw `docker inspect` entry of one container, or undefined when docker has no such container. */
  async inspectEntry(name: string): Promise<Record<string, unknown> | undefined> {
    const result = await this.run(['inspect', name]);
    if (result.spawnError !== null || result.timedOut) throw new ToolError(describeFailure(result), result);
    const text = result.stdout.trim();
    const entries: unknown = text === '' ? [] : JSON.parse(text);
    const entry = (Array.isArray(entries) ? entries : [])
      .map(asRecord)
      .find((e) => e !== undefined && asRecord(e.State) !== undefined);
    if (entry) return entry;
    if (missingNames(result.stderr).has(name) || result.exitCode === 0) return undefined;
    throw new ToolError(describeFailure(result), result);
  }

  /** The container's Cmd and Entrypoint as docker records them, or undefined when there is no such container. */
  async command(
    name: string,
  ): Promise<{ cmd: string[]; entrypoint: string[]; running: boolean; id: string } | undefined> {
    const entry = await this.inspectEntry(name);
    if (!entry) return undefined;
    const config = asRecord(entry.Config) ?? {};
    return {
      cmd: strings(config.Cmd),
      entrypoint: strings(config.Entrypoint),
      running: asRecord(entry.State)?.Running === true,
      id: typeof entry.Id === 'string' ? entry.Id : '',
    };
  }

  /** What an image sets by itself (`docker image inspect`), or undefined when docker cannot say. */
  async imageDefaults(image: string): Promise<ImageDefaults | undefined> {
    const result = await this.run(['image', 'inspect', image]);
    if (result.exitCode !== 0) return undefined;
    try {
      const entries: unknown = JSON.parse(result.stdout);
      return Array.isArray(entries) && entries.length > 0 ? parseImageDefaults(entries[0]) : undefined;
    } catch {
      return undefined;
    }
  }

  /** `docker rm [-f] NAME`. With force, a missing container is already success (as docker ≥ 20.10 says too). */
  async remove(name: string, opts: { force?: boolean } = {}): Promise<void> {
    const result = await this.run(['rm', ...(opts.force ? ['-f'] : []), name]);
    if (result.exitCode === 0) return;
    if (missingNames(result.stderr).has(name)) {
      if (opts.force) return;
      throw new NoSuchContainerError(name);
    }
    throw new ToolError(describeFailure(result), result);
  }

  /**
   * `docker run -d` (or `docker create`) of a {@link RunSpec}; the environment goes in a private --env-file that is
   * removed afterwards. Returns the new container's id. A failure names the command with secret flag values
   * redacted, never the environment.
   */
  async runSpec(spec: RunSpec, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<string> {
    const dir = spec.env.length > 0 ? await mkdtemp(path.join(os.tmpdir(), 'gpuops-env-')) : undefined;
    try {
      const args = [...spec.args];
      if (dir) {
        if (spec.env.some((kv) => /[\r\n]/.test(kv))) {
          throw new Error(`container ${spec.name}: an environment value holds a line break; --env-file cannot pass it`);
        }
        const file = path.join(dir, 'env');
        await writeFile(file, `${spec.env.join('\n')}\n`, { mode: 0o600 });
        args.splice(args.indexOf('--name') + 2, 0, '--env-file', file);
      }
      // Starting may first pull the image (same tag, usually present): allow minutes.
      const result = await this.run(args, {
        timeoutMs: opts.timeoutMs ?? Math.max(this.timeoutMs, 300_000),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      const id = result.stdout
        .split(/\r?\n/)
        .map((l) => l.trim())
        .filter((l) => /^[0-9a-f]{64}$/.test(l))
        .at(-1);
      if (result.exitCode === 0 && id) return id;
      const shown = { ...result, command: [this.bin, ...redactArgs(args)].join(' ') };
      throw new ToolError(describeFailure(shown), shown);
    } finally {
      if (dir) await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * Recreate a container with another command, keeping everything else ({@link runArgsFromInspect}): inspect it,
   * `docker rm -f`, `docker run -d` with the same name (`docker create` with `start: false`). If the new run fails
   * the previous container is run again (same command) before the error is thrown, so the container the config
   * names never simply vanishes.
   */
  async recreate(
    name: string,
    rewrite: (cmd: readonly string[], entrypoint: readonly string[]) => string[],
    opts: { signal?: AbortSignal; start?: boolean } = {},
  ): Promise<RecreateResult> {
    const entry = await this.inspectEntry(name);
    if (!entry) throw new NoSuchContainerError(name);
    const config = asRecord(entry.Config) ?? {};
    const previousCmd = strings(config.Cmd);
    const image = typeof config.Image === 'string' ? await this.imageDefaults(config.Image) : undefined;
    const cmd = rewrite(previousCmd, strings(config.Entrypoint));
    const create = opts.start === false;
    const next = runArgsFromInspect(entry, { cmd, create, ...(image ? { image } : {}) });
    const previous = runArgsFromInspect(entry, { cmd: previousCmd, create, ...(image ? { image } : {}) });
    await this.remove(name, { force: true });
    try {
      const id = await this.runSpec(next, opts.signal ? { signal: opts.signal } : {});
      return { id, image: next.image, previousCmd, cmd };
    } catch (err) {
      const restored = await this.runSpec(previous).then(
        () => 'the previous container was run again',
        (e: unknown) => `the previous container could not be run again: ${(e as Error).message}`,
      );
      if (err instanceof ToolError) throw new ToolError(`${err.message} (${restored})`, err.result);
      throw new Error(`${(err as Error).message} (${restored})`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Recreating a container (canary slots): `docker inspect` → `docker run -d` arguments that keep everything but Cmd.

/** What the image itself sets (`docker image inspect`): the container's values equal to these need no flag. */
export interface ImageDefaults {
  Entrypoint: string[] | null;
  Cmd: string[] | null;
  Env: string[];
  Labels: Record<string, string>;
  WorkingDir: string;
  User: string;
  Healthcheck: Record<string, unknown> | null;
}

/** A `docker run` of a recreated container: the arguments, and its environment (passed in an --env-file). */
export interface RunSpec {
  name: string;
  image: string;
  /** `run -d --name NAME [flags…] IMAGE [cmd…]` (or `create --name …`); `--env-file F` goes after the name. */
  args: string[];
  /** KEY=VALUE entries; kept out of `args` so values (tokens) never appear on a command line or in an error. */
  env: string[];
  /** The command the container will run (after the image's or the overriding entrypoint). */
  cmd: string[];
}

const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
const labelsOf = (v: unknown): Record<string, string> =>
  Object.fromEntries(Object.entries(asRecord(v) ?? {}).filter((e): e is [string, string] => typeof e[1] === 'string'));
const sameList = (a: readonly string[] | null, b: readonly string[] | null): boolean =>
  (a ?? []).length === (b ?? []).length && (a ?? []).every((x, i) => x === (b ?? [])[i]);

/**
 * An Entrypoint or Cmd as an argument list, or null when unset. Docker writes arrays; podman 1.x's docker-compatible
 * inspect writes the entrypoint as one space-joined string ("" when unset), which is split back on whitespace (the
 * best that can be done: podman joined it without quoting).
 */
export function commandList(v: unknown): string[] | null {
  if (Array.isArray(v)) return strings(v);
  if (typeof v === 'string') return v.trim() === '' ? null : v.trim().split(/\s+/);
  return null;
}

/**
 * Config.User as the `--user` value. Docker writes a string; podman 1.x sometimes a number (a uid) or an object
 * ({uid, gid} in either case); "" or anything unrecognised is no user.
 */
export function userOf(v: unknown): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return String(v);
  const r = asRecord(v);
  if (!r) return '';
  const pick = (...keys: string[]): string | undefined => {
    for (const k of keys) {
      const x = r[k];
      if ((typeof x === 'number' && Number.isInteger(x)) || (typeof x === 'string' && x !== '')) return String(x);
    }
    return undefined;
  };
  const uid = pick('uid', 'Uid', 'UID', 'user', 'User');
  const gid = pick('gid', 'Gid', 'GID', 'group', 'Group');
  return uid === undefined ? '' : gid === undefined ? uid : `${uid}:${gid}`;
}

/** `docker image inspect` entry → ImageDefaults. */
export function parseImageDefaults(entry: unknown): ImageDefaults {
  const config = asRecord(asRecord(entry)?.Config) ?? {};
  return {
    Entrypoint: commandList(config.Entrypoint),
    Cmd: commandList(config.Cmd),
    Env: strings(config.Env),
    Labels: labelsOf(config.Labels),
    WorkingDir: typeof config.WorkingDir === 'string' ? config.WorkingDir : '',
    User: userOf(config.User),
    Healthcheck: asRecord(config.Healthcheck) ?? null,
  };
}

/** One CSV field of `--gpus`, quoted when it holds a comma (as the docker CLI's CSV parser requires). */
const csvField = (s: string): string => (s.includes(',') ? `"${s}"` : s);

/** One DeviceRequest reduced to what `--gpus` can express. */
interface GpuRequest {
  ids: string[];
  count: number;
  caps: string[];
  driver: string;
  options: [string, string][];
}

function gpuRequestOf(raw: unknown): GpuRequest | null {
  const r = asRecord(raw);
  if (!r) return null;
  const sets = (Array.isArray(r.Capabilities) ? r.Capabilities : []).map(strings);
  if (!sets.some((set) => set.includes('gpu'))) return null;
  const ids = strings(r.DeviceIDs);
  const count = typeof r.Count === 'number' ? r.Count : 0;
  if (ids.length === 0 && count === 0) return null;
  return {
    ids,
    count,
    caps: [...new Set(sets.flat())].filter((c) => c !== 'gpu'),
    // The docker CLI leaves Driver empty; the NVIDIA toolkit's own tooling writes "nvidia". Both mean the default.
    driver: typeof r.Driver === 'string' && r.Driver !== 'nvidia' ? r.Driver : '',
    options: Object.entries(labelsOf(r.Options)).sort(([a], [b]) => a.localeCompare(b)),
  };
}

/**
 * HostConfig.DeviceRequests → the `--gpus` values that recreate them, one per flag. Requests that name devices and
 * agree on driver, capabilities and options are merged into one `"device=A,B"`: tools that request one GPU per
 * DeviceRequest (one per UUID) would otherwise lose all but the first GPU, and one merged request is exactly what
 * `docker run --gpus '"device=A,B"'` itself creates. Requests that cannot merge (a count, other capabilities) get
 * their own `--gpus`; the docker CLI appends one DeviceRequest per flag.
 */
export function gpusFlags(requests: unknown): string[] {
  const groups: GpuRequest[] = [];
  for (const raw of Array.isArray(requests) ? requests : []) {
    const r = gpuRequestOf(raw);
    if (!r) continue;
    const key = (g: GpuRequest): string => JSON.stringify([g.driver, [...g.caps].sort(), g.options]);
    const same = r.ids.length > 0 ? groups.find((g) => g.ids.length > 0 && key(g) === key(r)) : undefined;
    if (same) same.ids.push(...r.ids.filter((id) => !same.ids.includes(id)));
    else groups.push({ ...r, ids: [...r.ids] });
  }
  return groups.map((g) => {
    const fields: string[] = [];
    if (g.ids.length > 0) fields.push(csvField(`device=${g.ids.join(',')}`));
    else fields.push(g.count < 0 ? 'all' : String(g.count));
    if (g.caps.length > 0) fields.push(csvField(`capabilities=${g.caps.join(',')}`));
    if (g.driver !== '') fields.push(`driver=${g.driver}`);
    if (g.options.length > 0) fields.push(csvField(`options=${g.options.map(([k, v]) => `${k}=${v}`).join(',')}`));
    return fields.join(',');
  });
}

/** Go duration string for a nanosecond count (healthcheck intervals are stored in ns). */
const goDuration = (ns: number): string => (ns % 1e9 === 0 ? `${ns / 1e9}s` : `${Math.round(ns / 1e6)}ms`);

/** `--publish` values of HostConfig.PortBindings ("8000/tcp" → [{HostIp, HostPort}]). */
function publishFlags(bindings: unknown): string[] {
  const out: string[] = [];
  for (const [key, list] of Object.entries(asRecord(bindings) ?? {})) {
    const [port, proto] = key.split('/');
    const target = proto && proto !== 'tcp' ? `${port}/${proto}` : (port ?? key);
    for (const raw of Array.isArray(list) ? list : []) {
      const b = asRecord(raw) ?? {};
      const ip = typeof b.HostIp === 'string' ? b.HostIp : '';
      const hostPort = typeof b.HostPort === 'string' ? b.HostPort : '';
      const host = ip.includes(':') ? `[${ip}]` : ip;
      if (host === '' && hostPort === '') out.push(target);
      else if (host === '') out.push(`${hostPort}:${target}`);
      else out.push(`${host}:${hostPort}:${target}`);
    }
  }
  return out;
}

/** `--mount` values of HostConfig.Mounts (mounts made with --mount; -v ones are in Binds). */
function mountFlags(mounts: unknown): string[] {
  return (Array.isArray(mounts) ? mounts : []).flatMap((raw) => {
    const m = asRecord(raw);
    if (!m || typeof m.Type !== 'string' || typeof m.Target !== 'string') return [];
    const parts = [`type=${m.Type}`];
    if (typeof m.Source === 'string' && m.Source !== '') parts.push(`source=${m.Source}`);
    parts.push(`target=${m.Target}`);
    if (m.ReadOnly === true) parts.push('readonly');
    return [parts.join(',')];
  });
}

/**
 * The `docker run -d` that recreates a container from its `docker inspect` entry with another command: same name,
 * image, environment, port bindings, binds and mounts, GPU device requests (`--gpus device=N`), shm size, IPC mode,
 * restart policy, network mode, labels, entrypoint, runtime, devices, capabilities, ulimits, user, workdir, init, log
 * driver, memory/CPU limits and healthcheck. With the image's own defaults (`image`), values the image sets anyway
 * (entrypoint, env, labels, workdir, user, healthcheck) get no flag, so the container keeps following its image;
 * without them every value is passed explicitly, which recreates the same container too.
 */
export function runArgsFromInspect(
  entry: unknown,
  opts: { cmd: readonly string[]; image?: ImageDefaults; create?: boolean },
): RunSpec {
  const e = asRecord(entry);
  const config = asRecord(e?.Config);
  const host = asRecord(e?.HostConfig) ?? {};
  const name = typeof e?.Name === 'string' ? e.Name.replace(/^\//, '') : '';
  const image = typeof config?.Image === 'string' ? config.Image : '';
  if (!e || !config || name === '' || image === '') {
    throw new Error('docker inspect entry has no Name or Config.Image: not a container');
  }
  const img = opts.image;
  const flags: string[] = [];
  const add = (flag: string, values: readonly string[]): void => {
    for (const v of values) flags.push(flag, v);
  };

  // Entrypoint: --entrypoint takes one executable; the rest of a multi-word entrypoint goes before the command.
  const entrypoint = commandList(config.Entrypoint);
  let cmd = [...opts.cmd];
  if (!img || !sameList(entrypoint, img.Entrypoint)) {
    if (entrypoint && entrypoint.length > 0) {
      flags.push('--entrypoint', entrypoint[0] ?? '');
      cmd = [...entrypoint.slice(1), ...cmd];
    } else if (img?.Entrypoint?.length) {
      flags.push('--entrypoint', '');
    }
  }
  const user = userOf(config.User);
  if (user !== '' && user !== img?.User) add('--user', [user]);
  if (typeof config.WorkingDir === 'string' && config.WorkingDir !== '' && config.WorkingDir !== img?.WorkingDir)
    add('--workdir', [config.WorkingDir]);
  const imageEnv = new Set(img?.Env ?? []);
  const env = strings(config.Env).filter((kv) => !imageEnv.has(kv));
  const imageLabels = img?.Labels ?? {};
  const labels = Object.entries(labelsOf(config.Labels)).filter(([k, v]) => imageLabels[k] !== v);
  add(
    '--label',
    labels.map(([k, v]) => `${k}=${v}`),
  );

  const hc = asRecord(config.Healthcheck);
  if (hc && JSON.stringify(hc) !== JSON.stringify(img?.Healthcheck ?? null)) {
    const test = strings(hc.Test);
    if (test[0] === 'NONE') flags.push('--no-healthcheck');
    else if (test.length > 1) {
      add('--health-cmd', [test[0] === 'CMD-SHELL' ? (test[1] ?? '') : test.slice(1).join(' ')]);
      for (const [key, flag] of [
        ['Interval', '--health-interval'],
        ['Timeout', '--health-timeout'],
        ['StartPeriod', '--health-start-period'],
      ] as const) {
        const v = hc[key];
        if (typeof v === 'number' && v > 0) add(flag, [goDuration(v)]);
      }
      if (typeof hc.Retries === 'number' && hc.Retries > 0) add('--health-retries', [String(hc.Retries)]);
    }
  }

  const network = typeof host.NetworkMode === 'string' ? host.NetworkMode : '';
  if (network !== '' && network !== 'default' && network !== 'bridge') add('--network', [network]);
  // Host networking publishes nothing (docker discards -p there).
  if (network !== 'host') add('--publish', publishFlags(host.PortBindings));
  if (host.PublishAllPorts === true) flags.push('--publish-all');
  add('--volume', strings(host.Binds));
  add('--mount', mountFlags(host.Mounts));
  const tmpfs = Object.entries(asRecord(host.Tmpfs) ?? {}).map(([p, o]) => (o ? `${p}:${String(o)}` : p));
  add('--tmpfs', tmpfs);
  add('--gpus', gpusFlags(host.DeviceRequests));
  // runc is docker's default runtime; "oci" is podman's name for its configured default (crun or runc), which
  // `--runtime oci` would look up as a runtime of that name.
  if (typeof host.Runtime === 'string' && !['', 'runc', 'oci'].includes(host.Runtime)) add('--runtime', [host.Runtime]);
  add(
    '--device',
    (Array.isArray(host.Devices) ? host.Devices : []).flatMap((raw) => {
      const d = asRecord(raw);
      if (!d || typeof d.PathOnHost !== 'string') return [];
      const inside = typeof d.PathInContainer === 'string' ? d.PathInContainer : d.PathOnHost;
      const perms = typeof d.CgroupPermissions === 'string' && d.CgroupPermissions !== 'rwm' ? d.CgroupPermissions : '';
      return [[d.PathOnHost, inside, perms].filter((x) => x !== '').join(':')];
    }),
  );
  const ipc = typeof host.IpcMode === 'string' ? host.IpcMode : '';
  if (ipc !== '') add('--ipc', [ipc]);
  // /dev/shm is the container's own only with a private or shareable IPC namespace; 64 MiB is docker's default and
  // 65536000 bytes podman's (its "65536k" read as decimal kilobytes, as podman 1.x-2.x inspect shows it).
  const shm = typeof host.ShmSize === 'number' ? host.ShmSize : 0;
  if (['', 'private', 'shareable'].includes(ipc) && shm > 0 && shm !== 64 * 1024 * 1024 && shm !== 65536 * 1000)
    add('--shm-size', [String(shm)]);
  const restart = asRecord(host.RestartPolicy);
  const policy = typeof restart?.Name === 'string' ? restart.Name : '';
  if (policy !== '' && policy !== 'no') {
    const n = typeof restart?.MaximumRetryCount === 'number' ? restart.MaximumRetryCount : 0;
    add('--restart', [policy === 'on-failure' && n > 0 ? `on-failure:${n}` : policy]);
  }
  if (host.AutoRemove === true) flags.push('--rm');
  if (host.Init === true) flags.push('--init');
  if (host.Privileged === true) flags.push('--privileged');
  add('--cap-add', strings(host.CapAdd));
  add('--cap-drop', strings(host.CapDrop));
  add('--security-opt', strings(host.SecurityOpt));
  add('--group-add', strings(host.GroupAdd));
  add('--dns', strings(host.Dns));
  add('--add-host', strings(host.ExtraHosts));
  add(
    '--ulimit',
    (Array.isArray(host.Ulimits) ? host.Ulimits : []).flatMap((raw) => {
      const u = asRecord(raw);
      return u && typeof u.Name === 'string' ? [`${u.Name}=${String(u.Soft)}:${String(u.Hard)}`] : [];
    }),
  );
  const log = asRecord(host.LogConfig);
  if (typeof log?.Type === 'string' && log.Type !== '' && log.Type !== 'json-file') add('--log-driver', [log.Type]);
  add(
    '--log-opt',
    Object.entries(labelsOf(log?.Config)).map(([k, v]) => `${k}=${v}`),
  );
  if (typeof host.Memory === 'number' && host.Memory > 0) add('--memory', [String(host.Memory)]);
  if (typeof host.NanoCpus === 'number' && host.NanoCpus > 0) add('--cpus', [String(host.NanoCpus / 1e9)]);

  const verb = opts.create ? ['create'] : ['run', '-d'];
  return { name, image, args: [...verb, '--name', name, ...flags, image, ...cmd], env, cmd };
}

/** Result of {@link recreateWithModel}. */
export interface RecreatedContainer {
  /** false: the container already ran this model (nothing was touched). */
  recreated: boolean;
  id: string;
  /** The command before (secret flag values redacted); equals `cmd` when nothing was recreated. */
  previousCmd: string[];
  cmd: string[];
  /** The name the engine lists in /v1/models: the router's model name for it. */
  servedModel: string;
}

/**
 * Make a vLLM / llama.cpp container serve `spec`: when it already runs exactly that command nothing happens
 * (idempotent on retry), otherwise it is recreated with the model arguments replaced ({@link withModel}).
 */
export async function recreateWithModel(
  runtime: EngineRuntime,
  container: string,
  type: SlotEngineType,
  spec: ModelSpec,
  opts: { signal?: AbortSignal } = {},
): Promise<RecreatedContainer> {
  const current = await runtime.command(container);
  if (!current) throw new NoSuchContainerError(container, runtime.kind);
  const { cmd, entrypoint } = current;
  const servedModel = withModel(type, cmd, spec, entrypoint).servedModel;
  if (current.running && servesModel(type, cmd, spec, entrypoint)) {
    return { recreated: false, id: current.id, previousCmd: redactArgs(cmd), cmd: redactArgs(cmd), servedModel };
  }
  const r = await runtime.recreate(container, (c, ep) => withModel(type, c, spec, ep).cmd, opts);
  return {
    recreated: true,
    id: r.id,
    previousCmd: redactArgs(r.previousCmd),
    cmd: redactArgs(r.cmd),
    servedModel,
  };
}
