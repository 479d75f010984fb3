/**
 * Real engines on a sandbox node: llama-server and Ollama run for real, in a real Docker container (the real docker
 * CLI and engine, containers on `--network host`) or as keeper-run processes, while the node's GPUs, kernel log and
 * hypervisor stay simulated. The supervisor brings them up with the simulated guest and takes them down with it
 * (a simulated VM reboot stops them and starts them again after the boot); faults on them are real: a hang is
 * `docker pause` / SIGSTOP (the port still accepts connections, nothing comes back), an exit is `docker kill` /
 * SIGKILL.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { EngineConfig, NodeConfig } from '../config/schema';
import { DockerCli } from '../hosts/docker';
import { runTool, describeFailure } from '../hosts/exec';
import path from 'node:path';
import { processRuntimeFor, type ProcessRuntime } from '../hosts/process';
import { createOllamaModel } from './registry';
import type { EngineRuntime } from '../hosts/runtime';

/** Engines of a sandbox node that run for real. */
export function realEngines(node: NodeConfig): (EngineConfig & { real: NonNullable<EngineConfig['real']> })[] {
  return node.engines.filter((e): e is EngineConfig & { real: NonNullable<EngineConfig['real']> } => !!e.real);
}

/** The node with only its simulated engines: what the simulated state (docker shim, nvidia-smi apps) models. */
export function simulatedPart(node: NodeConfig): NodeConfig {
  return { ...node, engines: node.engines.filter((e) => !e.real) };
}

/** Real faults a real engine can be given. */
export type RealFaultKind = 'engine-hang' | 'container-exit' | 'oom-kill';

/** Real faults, with what each does, for the CLI's help. */
export const REAL_FAULT_DESCRIPTIONS: Readonly<Record<RealFaultKind, string>> = {
  'engine-hang': 'real engine frozen: docker pause / SIGSTOP to its process group (connections accepted, no answers)',
  'container-exit': 'real engine killed: docker kill / SIGKILL to its process group',
  'oom-kill':
    'real docker engine restarted under a memory limit of half its working set: the kernel OOM-kills it ' +
    '(OOMKilled, exit 137) at every start until `sandbox clear` recreates it from its config',
};

export interface RealEnginesOptions {
  /** The real docker CLI (never the sandbox's shim). */
  dockerBin: string;
  /** Resolves a path from the config (relative: from the config file's directory, as the node worker does). */
  resolve?: (p: string) => string;
  log?: (line: string) => void;
}

/** Lifecycle of one sandbox node's real engines. */
export class RealEngines {
  readonly docker: DockerCli;
  readonly processes: ProcessRuntime;
  private readonly engines: ReturnType<typeof realEngines>;
  private readonly log: (line: string) => void;
  private readonly resolve: (p: string) => string;

  constructor(
    readonly node: NodeConfig,
    private readonly opts: RealEnginesOptions,
  ) {
    this.engines = realEngines(node);
    this.docker = new DockerCli({ bin: opts.dockerBin });
    this.resolve = opts.resolve ?? ((p) => path.resolve(p));
    this.processes = processRuntimeFor(node, this.resolve);
    this.log = opts.log ?? (() => undefined);
  }

  get any(): boolean {
    return this.engines.length > 0;
  }

  runtimeOf(e: EngineConfig): EngineRuntime {
    return e.runtime === 'docker' ? this.docker : this.processes;
  }

  private engine(name: string | undefined): ReturnType<typeof realEngines>[number] | undefined {
    return name === undefined ? this.engines[0] : this.engines.find((e) => e.name === name);
  }

  /** Whether this node runs the named engine (default: its first engine) for real. */
  has(name: string | undefined): boolean {
    return name === undefined ? this.node.engines[0]?.real !== undefined : this.engine(name) !== undefined;
  }

  /** Create missing containers and start every real engine; then give Ollama its seed models. */
  async up(): Promise<void> {
    for (const e of this.engines) {
      if (e.runtime === 'docker') await this.ensureContainer(e);
      await this.runtimeOf(e).start(e.container);
      this.log(`sandbox ${this.node.id}: real engine ${e.name} (${e.type}, ${e.runtime}) started`);
    }
    await Promise.all(this.engines.map((e) => this.seed(e)));
  }

  /** Stop every real engine, as the guest's shutdown would (the state of each stays: the next boot starts it). */
  async down(): Promise<void> {
    await Promise.all(
      this.engines.map(async (e) => {
        await this.clear(e).catch(() => undefined);
        await this.runtimeOf(e)
          .stop(e.container, { timeoutSec: 5 })
          .catch((err: unknown) => this.log(`sandbox ${this.node.id}: stopping ${e.name}: ${(err as Error).message}`));
      }),
    );
  }

  /** Remove the sandbox's containers (the process state files stay for inspection). */
  async remove(): Promise<void> {
    await this.down();
    for (const e of this.engines) {
      if (e.runtime === 'docker') await this.docker.remove(e.container, { force: true }).catch(() => undefined);
    }
  }

  private async ensureContainer(e: ReturnType<typeof realEngines>[number]): Promise<void> {
    if ((await this.docker.inspectOne(e.container)).exists) return;
    if (!e.real.image) throw new Error(`engine ${e.name}: real.image is needed to create its container`);
    const args = ['create', '--name', e.container, '--network', 'host', '--label', `gpuops.sandbox=${this.node.id}`];
    if (e.real.memory) args.push('--memory', e.real.memory, '--memory-swap', e.real.memory);
    for (const [k, v] of Object.entries(e.real.env ?? {})) args.push('--env', `${k}=${v}`);
    args.push(e.real.image, ...e.real.args);
    const r = await runTool(this.opts.dockerBin, args, { timeoutMs: 60_000 });
    if (r.exitCode !== 0) throw new Error(describeFailure(r));
    this.log(`sandbox ${this.node.id}: created container ${e.container} from ${e.real.image}`);
  }

  /** Give a real Ollama the models it should start with, over its own API (blob upload, then create). */
  private async seed(e: ReturnType<typeof realEngines>[number]): Promise<void> {
    if (e.type !== 'ollama' || e.real.seedModels.length === 0) return;
    const base = e.url.replace(/\/$/, '');
    const deadline = Date.now() + 60_000;
    let tags: string[] | undefined;
    while (!tags) {
      try {
        const res = await fetch(`${base}/api/tags`);
        const body = (await res.json()) as { models?: { name: string }[] };
        tags = (body.models ?? []).map((m) => m.name);
      } catch {
        if (Date.now() > deadline) throw new Error(`engine ${e.name}: Ollama did not answer on ${base} in 60 s`);
        await sleep(200);
      }
    }
    for (const m of e.real.seedModels) {
      const full = m.name.includes(':') ? m.name : `${m.name}:latest`;
      if (tags.includes(full)) continue;
      const digest = await createOllamaModel(base, m.name, this.resolve(m.gguf)).catch((err: unknown) => {
        throw new Error(`engine ${e.name}: ${(err as Error).message}`);
      });
      this.log(`sandbox ${this.node.id}: ${e.name} now has ${m.name} (${digest.slice(0, 19)}…)`);
    }
  }

  /** The PID of a process-runtime engine, or the container's main PID. */
  private async pid(e: EngineConfig): Promise<number> {
    const cmd = await this.runtimeOf(e).command(e.container);
    const pid = Number(cmd?.id);
    // Never 0 or negative: process.kill(0 or -1, …) would signal this process's own group, or everything.
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`engine ${e.name} is not running`);
    return pid;
  }

  /**
   * Give a real engine a real fault: `engine-hang` freezes it (docker pause / SIGSTOP: connections are accepted,
   * nothing answers), `container-exit` kills it (docker kill / SIGKILL). Returns what was done.
   */
  async inject(kind: RealFaultKind, engineName?: string): Promise<string> {
    const e = this.engine(engineName);
    if (!e) throw new Error(`node ${this.node.id} runs no real engine "${engineName ?? ''}"`);
    const state = await this.runtimeOf(e).inspectOne(e.container);
    if (!state.running) throw new Error(`engine ${e.name} is not running (${state.status})`);
    if (kind === 'oom-kill') return this.oomKill(e);
    if (e.runtime === 'docker') {
      const r = await runTool(this.opts.dockerBin, [kind === 'engine-hang' ? 'pause' : 'kill', e.container]);
      if (r.exitCode !== 0) throw new Error(describeFailure(r));
      return `docker ${kind === 'engine-hang' ? 'pause' : 'kill'} ${e.container}`;
    }
    const pid = await this.pid(e);
    // The whole process group (the keeper makes the engine its leader): Ollama's runners freeze or die with it.
    process.kill(-pid, kind === 'engine-hang' ? 'SIGSTOP' : 'SIGKILL');
    return `kill -${kind === 'engine-hang' ? 'STOP' : 'KILL'} ${pid} (${e.name})`;
  }

  /**
   * A real OOM-kill: the container is stopped, given a memory limit of half what it uses now (cgroup v1 refuses a
   * limit below the usage of a running container), and started: the engine's preallocated memory (llama-server's KV
   * cache) no longer fits and the kernel's OOM killer ends it. docker inspect then says OOMKilled, exit 137.
   */
  private async oomKill(e: EngineConfig): Promise<string> {
    if (e.runtime !== 'docker')
      throw new Error(`oom-kill needs a docker engine (a memory limit); ${e.name} is ${e.runtime}`);
    const docker = async (args: string[]): Promise<string> => {
      const r = await runTool(this.opts.dockerBin, args, { timeoutMs: 60_000 });
      if (r.exitCode !== 0) throw new Error(describeFailure(r));
      return r.stdout.trim();
    };
    const usage = parseMemUsage(await docker(['stats', '--no-stream', '--format', '{{.MemUsage}}', e.container]));
    const limit = Math.floor(usage / 2);
    // Docker refuses limits under 6 MiB: an engine that small cannot be starved this way.
    if (limit < 6 * 1024 * 1024) {
      throw new Error(
        `${e.name} uses ${(usage / 2 ** 20).toFixed(1)} MiB: too little to starve under docker's 6 MiB floor`,
      );
    }
    await docker(['stop', '-t', '5', e.container]);
    await docker(['update', '--memory', String(limit), '--memory-swap', String(limit), e.container]);
    await docker(['start', e.container]);
    // The kill lands once the engine allocates (llama-server: its KV cache, after loading the model).
    const deadline = Date.now() + 20_000;
    while (!(await this.docker.inspectOne(e.container)).oomKilled) {
      if (Date.now() > deadline) throw new Error(`${e.name} still runs under a ${limit}-byte limit: not OOM-killed`);
      await sleep(200);
    }
    return `docker update --memory ${limit} ${e.container} (half of its ${(usage / 2 ** 20).toFixed(1)} MiB) and restart: OOM-killed`;
  }

  /** Undo a hang by hand (docker unpause / SIGCONT), as an operator would. */
  async clear(e: EngineConfig): Promise<boolean> {
    const state = await this.runtimeOf(e).inspectOne(e.container);
    if (state.status !== 'paused') return false;
    if (e.runtime === 'docker') await runTool(this.opts.dockerBin, ['unpause', e.container]);
    else process.kill(-(await this.pid(e)), 'SIGCONT');
    return true;
  }

  /** Freeze every running real engine (the simulated guest hung): nothing on the node answers any more. */
  async freezeAll(): Promise<void> {
    for (const e of this.engines) {
      const st = await this.runtimeOf(e).inspectOne(e.container);
      if (st.status === 'running') await this.inject('engine-hang', e.name).catch(() => undefined);
    }
  }

  /** Clear hangs on every real engine. */
  async clearAll(): Promise<string[]> {
    const cleared: string[] = [];
    for (const e of this.engines) if (await this.clear(e)) cleared.push(e.name);
    return cleared;
  }

  /**
   * Fix by hand what a fault changed in a container's definition (an oom-kill's memory limit): recreate each real
   * docker engine whose limit is not its config's, from the config, and start it. Returns the engines recreated.
   */
  async restoreDefinitions(): Promise<string[]> {
    const fixed: string[] = [];
    for (const e of this.engines) {
      if (e.runtime !== 'docker') continue;
      const entry = await this.docker.inspectEntry(e.container);
      const memory = Number((entry?.HostConfig as { Memory?: number } | undefined)?.Memory ?? 0);
      if (!entry || memory === parseDockerSize(e.real.memory)) continue;
      await this.docker.remove(e.container, { force: true });
      await this.ensureContainer(e);
      await this.docker.start(e.container);
      fixed.push(e.name);
    }
    return fixed;
  }
}

/** Bytes in use from `docker stats --format {{.MemUsage}}` ("40.05MiB / 23.54GiB"). */
export function parseMemUsage(text: string): number {
  const m = /^\s*([\d.]+)\s*([KMGT]?i?B)/i.exec(text);
  if (!m) throw new Error(`docker stats: cannot read the memory usage "${text}"`);
  const units: Record<string, number> = {
    b: 1,
    kib: 2 ** 10,
    mib: 2 ** 20,
    gib: 2 ** 30,
    tib: 2 ** 40,
    kb: 1e3,
    mb: 1e6,
    gb: 1e9,
    tb: 1e12,
  };
  return Number(m[1]) * (units[(m[2] ?? 'b').toLowerCase()] ?? 1);
}

/** Bytes of a docker memory size ("512m"; none: 0, docker's "no limit"). */
export function parseDockerSize(size: string | undefined): number {
  if (!size) return 0;
  const m = /^(\d+)([bkmg]?)$/i.exec(size);
  const mult: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 };
  return m ? Number(m[1]) * (mult[(m[2] ?? '').toLowerCase()] ?? 1) : 0;
}
