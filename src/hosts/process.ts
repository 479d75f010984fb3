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
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
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
  status?: 'running' | 'exited';
  exitCode?: number;
  signal?: string | null;
  startedAt?: string;
  finishedAt?: string;
  starts?: number;
  restarts?: number;
  command?: string;
  args?: string[];
}

const KEEPER = path.join(__dirname, 'keeper.cjs');

/** Linux process state letter from /proc/PID/stat ('R', 'S', 'T' stopped, 'Z' zombie…), or undefined if gone. */
async function procState(pid: number): Promise<string | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may itself hold spaces or parentheses: the state follows the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

function alive(pid: number | null | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
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
    await mkdir(this.dir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
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
      restartCount: s?.restarts ?? 0,
      health: 'none',
      image: this.specs[name].command,
      logSignals: [],
      ...(s?.startedAt ? { startedAt: s.startedAt } : {}),
      ...(s?.finishedAt ? { finishedAt: s.finishedAt } : {}),
    };
    if (!s?.status) return base;
    let out: ContainerState;
    if (s.status === 'running') {
      const st = s.pid ? await procState(s.pid) : undefined;
      if (st === undefined || st === 'Z' || st === 'X') {
        // The keeper died with its engine (e.g. SIGKILLed together) before it could record the exit.
        out = { ...base, status: 'exited', exitCode: 137 };
      } else {
        // A SIGSTOPped engine is frozen, as `docker pause` freezes a container: running, but paused.
        out = { ...base, status: st === 'T' || st === 't' ? 'paused' : 'running', running: true };
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
    const before = await this.state(name);
    if (before?.status === 'running' && alive(before.pid)) return;
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
    if (s?.status !== 'running' || !alive(s.pid)) return;
    const pid = s.pid as number;
    const signal = (sig: NodeJS.Signals): void => {
      try {
        process.kill(pid, sig);
      } catch {
        // already gone
      }
    };
    // A stopped (SIGSTOPped, "hung") process only acts on SIGTERM once it runs again.
    signal('SIGTERM');
    signal('SIGCONT');
    const deadline = Date.now() + (opts.timeoutSec ?? 10) * 1000;
    while (alive(pid) && (await procState(pid)) !== 'Z') {
      if (Date.now() > deadline) {
        signal('SIGKILL');
        break;
      }
      await sleep(50);
    }
    // Wait (briefly) for the keeper to record the exit, so the next inspect says "exited" with the code.
    const recorded = Date.now() + 5000;
    while (Date.now() < recorded) {
      const after = await this.state(name);
      if (after?.status === 'exited' || !alive(after?.keeperPid)) return;
      await sleep(50);
    }
  }

  async restart(name: string, opts: { timeoutSec?: number; signal?: AbortSignal } = {}): Promise<void> {
    await this.stop(name, opts);
    const s = await this.state(name);
    if (s) await this.writeJson(this.file(name, 'state.json'), { ...s, restarts: (s.restarts ?? 0) + 1 });
    await this.start(name, opts.signal ? { signal: opts.signal } : {});
  }

  async logs(name: string, opts: { tail?: number; since?: string; signal?: AbortSignal } = {}): Promise<string[]> {
    this.known(name);
    const s = await this.state(name);
    const read = async (f: string): Promise<string[]> =>
      existsSync(f) ? (await readFile(f, 'utf8')).split(/\r?\n/).filter((l, i, a) => l !== '' || i < a.length - 1) : [];
    // The current run's log holds everything since it started; the previous run's only when asked for older lines.
    const older = opts.since && s?.startedAt && opts.since < s.startedAt ? await read(this.file(name, 'log.1')) : [];
    const lines = [...older, ...(await read(this.file(name, 'log')))];
    return lines.slice(-(opts.tail ?? 200));
  }

  async command(name: string) {
    if (!this.specs[name]) return undefined;
    const s = await this.state(name);
    return {
      cmd: await this.effectiveArgs(name),
      entrypoint: [this.known(name).command],
      running: s?.status === 'running' && alive(s.pid),
      id: s?.pid ? String(s.pid) : '',
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
    const s = await this.state(name);
    return { id: s?.pid ? String(s.pid) : '', image: spec.command, previousCmd, cmd };
  }
}
