/**
 * The docker CLI adapter: container state from `docker inspect`, lifecycle commands and recent logs. It shells out
 * to the `docker` binary (not the Engine socket) so the sandbox's `docker` shim drives exactly the same code.
 */
import type { ContainerState } from '../domain/health';
import { describeFailure, runTool, ToolError, type ToolResult } from './exec';

/** Options of DockerCli. */
export interface DockerCliOptions {
  /** docker binary; looked up on PATH at call time. */
  bin?: string;
  /** Extra environment, e.g. DOCKER_HOST. */
  env?: Record<string, string | undefined>;
  /** Per-command timeout (default 60 s; restart adds its own stop timeout on top). */
  timeoutMs?: number;
}

/** Thrown when a lifecycle command names a container docker does not know. */
export class NoSuchContainerError extends Error {
  constructor(readonly container: string) {
    super(`docker has no container named "${container}"`);
    this.name = 'NoSuchContainerError';
  }
}

const STATUSES = ['created', 'running', 'paused', 'restarting', 'removing', 'exited', 'dead'] as const;
type DockerStatus = (typeof STATUSES)[number];
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
  // Unknown future statuses degrade to what Running says rather than failing the whole probe.
  const status: DockerStatus = (STATUSES as readonly string[]).includes(rawStatus)
    ? (rawStatus as DockerStatus)
    : running
      ? 'running'
      : 'exited';
  const healthStatus = asRecord(state.Health)?.Status;
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

/** Names docker reported missing: "Error: No such object: X" (docker inspect) or "No such container: X". */
export function missingNames(stderr: string): Set<string> {
  const out = new Set<string>();
  for (const m of stderr.matchAll(/No such (?:object|container): ?(\S+)/g)) {
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
export class DockerCli {
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
}
