/**
 * `runtime: process`: engines run as plain processes on the node, each the child of a small detached keeper
 * (keeper.cjs) that records its PID, start time and exit. No Docker, no systemd: what an operator has on a bare host
 * (and what the real-engine tests use where no Docker engine runs). State lives in `dir`:
 *
 *   NAME.spec.json   what the keeper runs (the config's command and args, or a canary slot's override)
 *   NAME.state.json  written by the keeper: pid, status, exit code, starts and restarts
 *   NAME.override.json  args set by a canary slot recreate (survives restarts; removed when the config is restored)
 *   NAME.log, NAME.log.1  this run's and the previous run's stdout+stderr
 */
import { spawn } from 'node:child_process';
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NodeConfig } from '../config/schema';
import type { ContainerState } from '../domain/health';
import { missingContainer, scanLogSignals } from './docker';
import { NoSuchContainerError, type EngineRuntime, type RecreateResult } from './runtime';

/** How one engine process is run (gpuops.yaml `engines[].process`). */
export interface ProcessSpec {
  command: string;
  args: string[];
  env?: Record<string, string>;
  cwd?: string;
}

export interface ProcessRuntimeOptions {
  /** Where specs, states and logs live (created when missing). */
  dir: string;
  /** The engines this runtime may run, by name. */
  specs: Record<string, ProcessSpec>;
  /** How long start waits for the keeper to report the engine's PID (default 10 s). */
  startTimeoutMs?: number;
}

interface KeeperState {
  keeperPid?: number;
  pid?: number | null;
  /** The engine's start time in clock ticks (/proc/PID/stat field 22), so a reused PID is not taken for it. */
  pidStart?: number | null;
  /** created: defined but not started since (a standby half left stopped by a canary slot recreate). */
  status?: 'running' | 'exited' | 'created';
  exitCode?: number;
  signal?: string | null;
  startedAt?: string;
  finishedAt?: string;
  starts?: number;
  command?: string;
  args?: string[];
}

const KEEPER = path.join(__dirname, 'keeper.cjs');

/** State letter ('R', 'S', 'T' stopped, 'Z' zombie…) and start time (clock ticks) of a process, if it exists. */
async function procInfo(pid: number): Promise<{ state: string; startTicks: number } | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may itself hold spaces or parentheses: the fields follow the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0] ?? '', startTicks: Number(fields[19]) };
  } catch {
    return undefined;
  }
}

/**
 * Whether the engine the keeper recorded still runs, and its state letter. A PID alone is not an identity: after a
 * keeper died without recording the exit, the kernel may give the PID to anything, so the recorded start time must
 * match too.
 */
async function engineProcess(s: KeeperState | undefined): Promise<{ state: string } | undefined> {
  if (s?.status !== 'running' || !s.pid || s.pid <= 0) return undefined;
  const info = await procInfo(s.pid);
  if (!info || info.state === 'Z' || info.state === 'X') return undefined;
  if (typeof s.pidStart === 'number' && info.startTicks !== s.pidStart) return undefined;
  return info;
}

/** Whether a process (the keeper) exists at all. */
function alive(pid: number | null | undefined): boolean {
  if (!pid || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Signal the engine's whole process group (the keeper makes it a group leader); false when it is gone. */
function signalGroup(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, sig);
    return true;
  } catch {
    return false;
  }
}

/** The last `maxBytes` of a file as lines (a log can grow large; a probe needs its end). */
async function tailLines(file: string, maxBytes = 256 * 1024): Promise<string[]> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch {
    return [];
  }
  try {
    const { size } = await fh.stat();
    const start = Math.max(0, size - maxBytes);
    const buf = Buffer.alloc(size - start);
    await fh.read(buf, 0, buf.length, start);
    const lines = buf.toString('utf8').split(/\r?\n/);
    if (start > 0) lines.shift(); // a partial first line
    if (lines.at(-1) === '') lines.pop();
    return lines;
  } finally {
    await fh.close();
  }
}

/** Engines as keeper-supervised processes. */
export class ProcessRuntime implements EngineRuntime {
  readonly kind = 'process' as const;
  private readonly dir: string;
  private readonly specs: Record<string, ProcessSpec>;
  private readonly startTimeoutMs: number;

  constructor(opts: ProcessRuntimeOptions) {
    this.dir = path.resolve(opts.dir);
    this.specs = opts.specs;
    this.startTimeoutMs = opts.startTimeoutMs ?? 10_000;
  }

  private file(name: string, ext: string): string {
    return path.join(this.dir, `${name}.${ext}`);
  }

  private known(name: string): ProcessSpec {
    const spec = this.specs[name];
    if (!spec) throw new NoSuchContainerError(name, 'process');
    return spec;
  }

  private async readJson<T>(file: string): Promise<T | undefined> {
    try {
      return JSON.parse(await readFile(file, 'utf8')) as T;
    } catch {
      return undefined;
    }
  }

  private async writeJson(file: string, value: unknown): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
    await rename(tmp, file);
  }

  private state(name: string): Promise<KeeperState | undefined> {
    return this.readJson<KeeperState>(this.file(name, 'state.json'));
  }

  /** The args this engine runs with: a canary slot's override, else the config's. */
  private async effectiveArgs(name: string): Promise<string[]> {
    const override = await this.readJson<{ args: string[] }>(this.file(name, 'override.json'));
    return override?.args ?? this.known(name).args;
  }

  async inspect(names: readonly string[], opts: { logSignals?: { tail?: number } | false } = {}) {
    return Promise.all(names.map((n) => this.inspectState(n, opts.logSignals ? (opts.logSignals.tail ?? 200) : 0)));
  }

  async inspectOne(name: string): Promise<ContainerState> {
    return this.inspectState(name, 0);
  }

  private async inspectState(name: string, signalTail: number): Promise<ContainerState> {
    if (!this.specs[name]) return missingContainer(name);
    const s = await this.state(name);
    const base: ContainerState = {
      name,
      exists: true,
      status: 'created',
      running: false,
      exitCode: 0,
      oomKilled: false,
      // docker's RestartCount and systemd's NRestarts count automatic restarts only; the keeper makes none.
      restartCount: 0,
      health: 'none',
      image: this.specs[name].command,
      logSignals: [],
      ...(s?.startedAt ? { startedAt: s.startedAt } : {}),
      ...(s?.finishedAt ? { finishedAt: s.finishedAt } : {}),
    };
    if (!s?.status || s.status === 'created') return base;
    let out: ContainerState;
    if (s.status === 'running') {
      const p = await engineProcess(s);
      if (!p) {
        // The keeper died with its engine (e.g. SIGKILLed together) before it could record the exit.
        out = { ...base, status: 'exited', exitCode: 137 };
      } else {
        // A SIGSTOPped engine is frozen, as `docker pause` freezes a container: running, but paused.
        out = { ...base, status: p.state === 'T' || p.state === 't' ? 'paused' : 'running', running: true };
      }
    } else {
      // No cgroup to ask: an OOM kill shows as exit 137 (SIGKILL), not as oomKilled.
      out = { ...base, status: 'exited', exitCode: s.exitCode ?? 0 };
    }
    if (signalTail > 0) out.logSignals = scanLogSignals(await this.logs(name, { tail: signalTail }).catch(() => []));
    return out;
  }

  async start(name: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const spec = this.known(name);
    if (await engineProcess(await this.state(name))) return;
    await this.writeJson(this.file(name, 'spec.json'), { ...spec, args: await this.effectiveArgs(name) });
    const keeper = spawn(process.execPath, [KEEPER, this.dir, name], { detached: true, stdio: 'ignore' });
    keeper.unref();
    const deadline = Date.now() + this.startTimeoutMs;
    for (;;) {
      const s = await this.state(name);
      if (s && keeper.pid !== undefined && s.keeperPid === keeper.pid && s.status !== undefined) {
        if (s.status === 'exited' && s.exitCode === 127) {
          throw new Error(`engine ${name} could not start: ${(await this.logs(name, { tail: 3 })).join(' | ')}`);
        }
        return;
      }
      if (Date.now() > deadline) throw new Error(`engine ${name}: the process keeper did not report a PID in time`);
      if (opts.signal?.aborted) throw new Error(`engine ${name}: start cancelled`);
      await sleep(50);
    }
  }

  async stop(name: string, opts: { timeoutSec?: number; signal?: AbortSignal } = {}): Promise<void> {
    this.known(name);
    const s = await this.state(name);
    if (!(await engineProcess(s))) return;
    const pid = s?.pid as number;
    // A stopped (SIGSTOPped, "hung") process only acts on SIGTERM once it runs again.
    signalGroup(pid, 'SIGTERM');
    signalGroup(pid, 'SIGCONT');
    const deadline = Date.now() + (opts.timeoutSec ?? 10) * 1000;
    while (await engineProcess(s)) {
      if (Date.now() > deadline) {
        signalGroup(pid, 'SIGKILL');
        break;
      }
      await sleep(50);
    }
    // The group may outlive its leader (children that ignore SIGTERM): they go with it.
    signalGroup(pid, 'SIGKILL');
    // Wait (briefly) for the keeper to record the exit, so the next inspect says "exited" with the code.
    const recorded = Date.now() + 5000;
    while (Date.now() < recorded) {
      const after = await this.state(name);
      if (after?.status !== 'running' || !alive(after.keeperPid)) return;
      await sleep(50);
    }
  }

  async restart(name: string, opts: { timeoutSec?: number; signal?: AbortSignal } = {}): Promise<void> {
    await this.stop(name, opts);
    await this.start(name, opts.signal ? { signal: opts.signal } : {});
  }

  async logs(name: string, opts: { tail?: number; since?: string; signal?: AbortSignal } = {}): Promise<string[]> {
    this.known(name);
    const s = await this.state(name);
    const read = (f: string): Promise<string[]> => tailLines(f);
    // The current run's log holds everything since it started; the previous run's only when asked for older lines.
    const older = opts.since && s?.startedAt && opts.since < s.startedAt ? await read(this.file(name, 'log.1')) : [];
    const lines = [...older, ...(await read(this.file(name, 'log')))];
    return lines.slice(-(opts.tail ?? 200));
  }

  async command(name: string) {
    if (!this.specs[name]) return undefined;
    const s = await this.state(name);
    const running = (await engineProcess(s)) !== undefined;
    return {
      cmd: await this.effectiveArgs(name),
      entrypoint: [this.known(name).command],
      running,
      id: running && s?.pid ? String(s.pid) : '',
    };
  }

  async recreate(
    name: string,
    rewrite: (cmd: readonly string[], entrypoint: readonly string[]) => string[],
    opts: { signal?: AbortSignal; start?: boolean } = {},
  ): Promise<RecreateResult> {
    const spec = this.known(name);
    const previousCmd = await this.effectiveArgs(name);
    const cmd = rewrite(previousCmd, [spec.command]);
    await this.stop(name, { timeoutSec: 30, ...(opts.signal ? { signal: opts.signal } : {}) });
    if (JSON.stringify(cmd) === JSON.stringify(spec.args)) await rm(this.file(name, 'override.json'), { force: true });
    else await this.writeJson(this.file(name, 'override.json'), { args: cmd });
    if (opts.start !== false) await this.start(name, opts.signal ? { signal: opts.signal } : {});
    else {
      // Left stopped as a definition, like `docker create`: never started since, so a standby half reads as clean.
      const s = await this.state(name);
      await this.writeJson(this.file(name, 'state.json'), {
        keeperPid: s?.keeperPid,
        starts: s?.starts,
        status: 'created',
      });
    }
    const s = await this.state(name);
    return { id: s?.pid ? String(s.pid) : '', image: spec.command, previousCmd, cmd };
  }
}

/**
 * The keeper-run engines of a node (`runtime: process`), their state under `tools.processDir`; `resolve` turns the
 * config's relative paths (processDir, cwd) into absolute ones, from the config file's directory.
 */
export function processRuntimeFor(
  node: NodeConfig,
  resolve: (p: string) => string = (p) => path.resolve(p),
): ProcessRuntime {
  const specs = Object.fromEntries(
    node.engines.flatMap((e) =>
      e.runtime === 'process' && e.process
        ? [[e.container, { ...e.process, ...(e.process.cwd ? { cwd: resolve(e.process.cwd) } : {}) }]]
        : [],
    ),
  );
  return new ProcessRuntime({ dir: resolve(node.tools.processDir), specs });
}
