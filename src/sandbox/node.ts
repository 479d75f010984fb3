/**
 * The supervisor of one simulated GPU node. It keeps the node's processes in line with its state file: engine
 * listeners open while their container runs, the node worker (the real gpuops worker, with the shims first on PATH)
 * runs while the guest is up, and a VM reboot/reset/stop requested through the Proxmox API or `qm` kills the worker
 * and engines, waits out the boot, and starts them again. The state file outlives the supervisor: restarting it
 * resumes the same world.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { freePort } from '../net';
import path from 'node:path';
import { resolveFrom } from '../config/load';
import type { NodeConfig } from '../config/schema';
import * as core from './shims/lib/core';
import { EngineServer, writeManifest } from './engine-server';
import { RealEngines, simulatedPart } from './real-engines';
import { ensureShims, SHIM_DIR } from './shim-build';
import { startProxmoxServer, type ProxmoxServerHandle, type ProxmoxServerOptions } from './proxmox-server';
import {
  reconcileStateWithConfig,
  SandboxStore,
  seedState,
  STATE_VERSION,
  type ActiveFault,
  type PowerAction,
  type SandboxState,
  type TaskRecord,
} from './state';

/** How to run the node worker inside the simulated guest. */
export interface WorkerCommand {
  command: string;
  args: string[];
  env?: Record<string, string>;
}

export interface SandboxNodeOptions {
  node: NodeConfig;
  /** Root of the sandbox state (`sandbox.stateDir`); this node lives in `<stateDir>/<node.id>/`. */
  stateDir: string;
  /** How long a simulated (re)boot keeps the node down. */
  bootSeconds: number;
  /** The node worker; without it the node simulates everything but runs no worker. */
  workerCommand?: WorkerCommand;
  log?: (line: string) => void;
  /** Scale of simulated latencies (TTFT, token pacing, pulls, model loads); default 1. */
  timeScale?: number;
  /** How long an engine loads its model after its container starts (default 1 s, scaled). */
  engineLoadSeconds?: number;
  /** How long shutdown/reboot wait for ACPI before failing, unless the request gives a timeout (default 10 s). */
  acpiTimeoutSeconds?: number;
  /** State polling interval (default 200 ms). */
  reconcileMs?: number;
  /** Delay before restarting a worker that exited on its own, like systemd's RestartSec (default 1 s). */
  workerRestartDelayMs?: number;
  /**
   * The real docker CLI for the node's real engines (`engines[].real`, runtime docker); default the node's
   * `tools.docker`, which a sandbox config with real docker engines sets to the real binary.
   */
  realDockerBin?: string;
  /** gpuops.yaml's path: the real engines' relative paths resolve from its directory, as the node worker's do. */
  configPath?: string;
}

export interface SandboxNodeStatus {
  node: string;
  vm: {
    vmid: number | null;
    status: SandboxState['vm']['status'];
    phase: SandboxState['vm']['phase'];
    bootId: number;
    hung: boolean;
  };
  worker: { running: boolean; pid: number | null; frozen: boolean; held: boolean; starts: number };
  engines: {
    name: string;
    type: string;
    url: string;
    listening: boolean;
    container: string;
    containerStatus: string;
  }[];
  faults: ActiveFault[];
}

interface WorkerProc {
  child: ChildProcess;
  bootId: number;
  frozen: boolean;
  termSent: boolean;
  exited: Promise<void>;
  /** Set when we killed it, so its exit is not treated as a crash. */
  expected: boolean;
}

export { SHIM_DIR, ensureShims, freePort };

/**
 * Environment for a process that runs `qm` against sandbox VMs (the hypervisor worker of a `type: qm` hypervisor):
 * the shims first on PATH, and the state directory where `qm` finds VMs by vmid.
 */
export function sandboxHypervisorEnv(stateDir: string): Record<string, string> {
  return {
    PATH: `${ensureShims()}${path.delimiter}${process.env.PATH ?? ''}`,
    GPUOPS_SANDBOX_STATE_DIR: path.resolve(stateDir),
  };
}

export class SandboxNode {
  readonly id: string;
  readonly store: SandboxStore;
  readonly paths: {
    /** `<stateDir>/<node>` */
    nodeDir: string;
    stateFile: string;
    /** Root state directory (for GPUOPS_SANDBOX_STATE_DIR). */
    stateDir: string;
    /** The built shims ({@link SHIM_DIR}), first on the node's PATH. */
    shimDir: string;
    /** Simulated Ollama model store (manifests and placeholder blobs). */
    modelStore: string;
  };
  private readonly opts: SandboxNodeOptions;
  private readonly log: (line: string) => void;
  private readonly engines = new Map<string, { server: EngineServer; epoch: number }>();
  private worker: WorkerProc | undefined;
  private workerHeld = false;
  private workerStarts = 0;
  private nextWorkerStartAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private reconcileChain: Promise<void> = Promise.resolve();
  /** The node's real engines (llama-server, Ollama) and the boot they were started for (null: down). */
  readonly real: RealEngines;
  private realBoot: number | null = null;
  private realBusy = false;
  private readonly simNode: NodeConfig;
  private readonly onExit = (): void => {
    this.worker?.child.kill('SIGKILL');
  };

  constructor(opts: SandboxNodeOptions) {
    this.opts = opts;
    this.id = opts.node.id;
    this.log = opts.log ?? (() => undefined);
    const stateDir = path.resolve(opts.stateDir);
    const nodeDir = path.join(stateDir, this.id);
    this.store = new SandboxStore(path.join(nodeDir, 'state.json'));
    this.simNode = simulatedPart(opts.node);
    this.real = new RealEngines(opts.node, {
      dockerBin: opts.realDockerBin ?? opts.node.tools.docker,
      ...(opts.configPath ? { resolve: (p: string) => resolveFrom(opts.configPath as string, p) } : {}),
      log: this.log,
    });
    this.paths = {
      nodeDir,
      stateFile: this.store.file,
      stateDir,
      // The node's processes run the shims: build them now if a source changed.
      shimDir: ensureShims(),
      modelStore: path.join(nodeDir, 'models'),
    };
  }

  /** Environment a process on this node needs: the shims first on PATH, and where the node's state is. */
  shimEnv(): Record<string, string> {
    return {
      PATH: `${this.paths.shimDir}${path.delimiter}${process.env.PATH ?? ''}`,
      GPUOPS_SANDBOX_STATE: this.paths.stateFile,
      GPUOPS_SANDBOX_STATE_DIR: this.paths.stateDir,
      GPUOPS_SANDBOX_NODE: this.id,
      // systemd engines' drop-ins, read by the shims and written by the node worker: inside the sandbox, never /etc.
      GPUOPS_SANDBOX_SYSTEMD_DIR: path.join(this.paths.nodeDir, 'systemd'),
    };
  }

  /**
   * Seed the state if absent (an existing state is kept: the node is durable), bring up engines and the worker, and
   * start following the state file.
   */
  async start(): Promise<void> {
    if (this.running) return;
    const seedOpts = {
      bootSeconds: this.opts.bootSeconds,
      ...(this.opts.timeScale !== undefined ? { timeScale: this.opts.timeScale } : {}),
      ...(this.opts.engineLoadSeconds !== undefined ? { engineLoadSeconds: this.opts.engineLoadSeconds } : {}),
      ...(this.opts.acpiTimeoutSeconds !== undefined ? { acpiTimeoutSeconds: this.opts.acpiTimeoutSeconds } : {}),
    };
    const existing = this.store.tryRead();
    if (existing && existing.version !== STATE_VERSION) {
      this.log(`sandbox ${this.id}: state version ${String(existing.version)} is not ${STATE_VERSION}; reseeding`);
      core.writeStateAtomic(this.store.file, seedState(this.simNode, seedOpts));
    } else if (this.store.createIfAbsent(() => seedState(this.simNode, seedOpts))) {
      this.log(`sandbox ${this.id}: seeded ${this.store.file}`);
    }
    const state = this.store.update((s, now) => {
      reconcileStateWithConfig(s, this.simNode, seedOpts, now);
      return s;
    });
    for (const e of Object.values(state.engines)) {
      if (e.type !== 'ollama') continue;
      for (const m of e.models) {
        const prof = state.library[m];
        const [repo, tag] = m.split(':');
        if (
          prof &&
          !existsSync(
            path.join(this.paths.modelStore, 'manifests', 'registry.ollama.ai', 'library', repo ?? m, tag ?? 'latest'),
          )
        ) {
          writeManifest(this.paths.modelStore, prof);
        }
      }
    }
    this.running = true;
    process.on('exit', this.onExit);
    await this.reconcile();
    this.timer = setInterval(() => {
      void this.reconcile();
    }, this.opts.reconcileMs ?? 200);
    this.timer.unref();
  }

  /** Stop supervising: the worker gets SIGTERM (SIGKILL after 5 s) and engines close. The state file stays. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.reconcileChain;
    await this.terminateWorker('SIGTERM', 5_000);
    await Promise.all([...this.engines.values()].map((e) => e.server.close()));
    await this.realOp;
    if (this.real.any) await this.real.down();
    this.realBoot = null;
    this.engines.clear();
    process.off('exit', this.onExit);
  }

  /**
   * Kill the node worker (tests kill it mid-activity) and keep it down until {@link startWorker}. Resolves once it
   * has exited.
   */
  async killWorker(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    this.workerHeld = true;
    await this.terminateWorker(signal, signal === 'SIGKILL' ? 0 : 10_000);
  }

  /** Let the worker run again (after {@link killWorker}); it starts at once if the guest is up. */
  async startWorker(): Promise<void> {
    this.workerHeld = false;
    this.nextWorkerStartAt = 0;
    await this.reconcile();
  }

  /** Ask the VM for a power action, as the Proxmox API would. Returns the task (its UPID and outcome). */
  power(action: PowerAction): TaskRecord {
    return this.store.update((s, now) => core.requestPower(s, action, now, { user: 'root@pam', pveNode: 'pve' }));
  }

  /** Reboot the VM (ACPI; ignored by a hung guest). Returns the task. */
  reboot(): TaskRecord {
    return this.power('reboot');
  }

  /** Hard-reset the VM (always works). Returns the task. */
  reset(): TaskRecord {
    return this.power('reset');
  }

  /** Where things stand now. */
  status(): SandboxNodeStatus {
    const s = this.store.read();
    return {
      node: this.id,
      vm: { vmid: s.vm.vmid, status: s.vm.status, phase: s.vm.phase, bootId: s.vm.bootId, hung: s.vm.hung },
      worker: {
        running: this.worker !== undefined,
        pid: this.worker?.child.pid ?? null,
        frozen: this.worker?.frozen ?? false,
        held: this.workerHeld,
        starts: this.workerStarts,
      },
      engines: Object.values(s.engines).map((e) => ({
        name: e.name,
        type: e.type,
        url: `http://${e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}`,
        listening: this.engines.get(e.name)?.server.listening ?? false,
        container: e.container,
        containerStatus: s.containers[e.container]?.status ?? 'missing',
      })),
      faults: s.faults,
    };
  }

  /** URL of an engine (resolved port if the config said 0). */
  engineUrl(name: string): string {
    const e = this.status().engines.find((x) => x.name === name);
    if (!e) throw new Error(`sandbox ${this.id}: no engine "${name}"`);
    return e.url;
  }

  /** Poll status until `pred` holds; rejects after `timeoutMs`. */
  async waitFor(
    pred: (s: SandboxNodeStatus) => boolean,
    timeoutMs = 30_000,
    what = 'condition',
  ): Promise<SandboxNodeStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      await this.reconcile();
      const s = this.status();
      if (pred(s)) return s;
      if (Date.now() > deadline)
        throw new Error(`sandbox ${this.id}: timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Serialise reconcile passes: the interval and explicit calls must not interleave. */
  reconcile(): Promise<void> {
    this.reconcileChain = this.reconcileChain
      .then(() => this.reconcileOnce())
      .catch((err: unknown) => {
        this.log(`sandbox ${this.id}: reconcile failed: ${err instanceof Error ? err.message : String(err)}`);
      });
    return this.reconcileChain;
  }

  private async reconcileOnce(): Promise<void> {
    if (!this.running) return;
    // Through update so time-driven transitions (end of boot, end of shutdown) happen even if nobody else writes.
    const state = this.store.update((s) => s);
    const now = Date.now();
    const vm = state.vm;
    const up = vm.phase === 'up';

    for (const e of Object.values(state.engines)) {
      const c = state.containers[e.container];
      let want = up && c?.status === 'running';
      // vLLM opens its port only after the model is loaded (never, for a model it cannot load); llama.cpp listens
      // and answers 503 meanwhile.
      if (
        want &&
        c &&
        e.type === 'vllm' &&
        (c.loadFailure !== undefined || now < c.startedAt + state.sim.engineLoadMs * state.sim.timeScale)
      )
        want = false;
      const cur = this.engines.get(e.name);
      if (cur && (!want || cur.epoch !== c?.epoch)) {
        await cur.server.close();
        this.engines.delete(e.name);
        this.log(`sandbox ${this.id}: engine ${e.name} down`);
      }
      if (want && c && !this.engines.has(e.name)) {
        const server = new EngineServer({ store: this.store, engine: e.name, log: this.log });
        try {
          const port = await server.listen(e.host, e.port);
          this.engines.set(e.name, { server, epoch: c.epoch });
          if (port !== e.port) {
            this.store.update((s) => {
              const se = s.engines[e.name];
              if (se) se.port = port;
              const sc = s.containers[e.container];
              if (sc) sc.ports.host = port;
            });
          }
          this.log(`sandbox ${this.id}: engine ${e.name} (${e.type}) listening on ${e.host}:${port}`);
        } catch (err) {
          this.log(
            `sandbox ${this.id}: engine ${e.name} cannot listen on ${e.host}:${e.port}: ${(err as Error).message}`,
          );
        }
      }
      this.engines.get(e.name)?.server.setFrozen(vm.hung);
    }

    this.reconcileReal(up ? vm.bootId : null, up && vm.hung);

    const w = this.worker;
    if (w) {
      if (w.bootId !== vm.bootId || !up) {
        // ACPI shutdown: the guest's init sends SIGTERM. Anything else (reset, stop, power cut at the end of a
        // shutdown that did not finish in time) is the process vanishing at once.
        if (vm.phase === 'shutting-down' && w.bootId === vm.bootId) {
          if (!w.termSent) {
            w.termSent = true;
            if (w.frozen) w.child.kill('SIGCONT');
            w.child.kill('SIGTERM');
            this.log(`sandbox ${this.id}: guest shutting down; worker got SIGTERM`);
          }
        } else {
          w.expected = true;
          w.child.kill('SIGKILL');
          this.log(`sandbox ${this.id}: guest ${vm.phase === 'off' ? 'powered off' : 'reset'}; worker killed`);
        }
      } else if (vm.hung && !w.frozen) {
        w.child.kill('SIGSTOP');
        w.frozen = true;
        this.log(`sandbox ${this.id}: guest hung; worker frozen`);
      } else if (!vm.hung && w.frozen) {
        w.child.kill('SIGCONT');
        w.frozen = false;
      }
    } else if (up && !vm.hung && !this.workerHeld && this.opts.workerCommand && now >= this.nextWorkerStartAt) {
      this.spawnWorker(vm.bootId);
    }
  }

  private realOp: Promise<void> = Promise.resolve();
  private realRetryAt = 0;
  private realFrozen = false;

  /**
   * Real engines follow the guest: started once per boot, stopped while it is down. Runs beside the reconcile pass
   * (starting a real engine and seeding its models takes seconds), one operation at a time.
   */
  private reconcileReal(boot: number | null, hung: boolean): void {
    if (!this.real.any || this.realBusy || Date.now() < this.realRetryAt) return;
    if (boot === this.realBoot) {
      // A hung guest freezes its engines with it; when it is reset they are stopped and started with the new boot.
      if (boot === null || hung === this.realFrozen) return;
      this.realBusy = true;
      this.realFrozen = hung;
      this.realOp = (hung ? this.real.freezeAll() : this.real.clearAll().then(() => undefined))
        .catch((err: unknown) => this.log(`sandbox ${this.id}: real engines: ${(err as Error).message}`))
        .finally(() => {
          this.realBusy = false;
        });
      return;
    }
    this.realBusy = true;
    this.realFrozen = false;
    const op =
      boot === null
        ? this.real.down()
        : this.realBoot === null
          ? this.real.up()
          : this.real.down().then(() => this.real.up());
    this.realOp = op
      .then(() => {
        this.realBoot = boot;
      })
      .catch((err: unknown) => {
        this.realRetryAt = Date.now() + 5_000;
        this.log(`sandbox ${this.id}: real engines: ${(err as Error).message} (retrying in 5 s)`);
      })
      .finally(() => {
        this.realBusy = false;
      });
  }

  private spawnWorker(bootId: number): void {
    const cmd = this.opts.workerCommand;
    if (!cmd) return;
    const child = spawn(cmd.command, cmd.args, {
      env: { ...process.env, ...this.shimEnv(), ...(cmd.env ?? {}) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.workerStarts += 1;
    const prefix = `[${this.id} worker]`;
    const pipe = (stream: NodeJS.ReadableStream | null): void => {
      if (!stream) return;
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          this.log(`${prefix} ${buf.slice(0, i)}`);
          buf = buf.slice(i + 1);
        }
      });
    };
    pipe(child.stdout);
    pipe(child.stderr);
    const proc: WorkerProc = {
      child,
      bootId,
      frozen: false,
      termSent: false,
      expected: false,
      exited: new Promise<void>((resolve) => {
        child.once('exit', (code, signal) => {
          if (this.worker === proc) this.worker = undefined;
          if (!proc.expected && !proc.termSent && this.running) {
            // Crashed on its own: restart after a pause, as systemd would.
            this.nextWorkerStartAt = Date.now() + (this.opts.workerRestartDelayMs ?? 1_000);
          }
          this.log(`sandbox ${this.id}: worker exited (${signal ?? `code ${String(code)}`})`);
          resolve();
        });
        child.once('error', (err) => {
          this.log(`sandbox ${this.id}: worker failed to start: ${err.message}`);
          if (this.worker === proc) this.worker = undefined;
          this.nextWorkerStartAt = Date.now() + (this.opts.workerRestartDelayMs ?? 1_000);
          resolve();
        });
      }),
    };
    this.worker = proc;
    this.log(`sandbox ${this.id}: worker started (pid ${String(child.pid)}, boot ${bootId})`);
  }

  private async terminateWorker(signal: NodeJS.Signals, graceMs: number): Promise<void> {
    const w = this.worker;
    if (!w) return;
    w.expected = true;
    if (w.frozen) w.child.kill('SIGCONT');
    w.child.kill(signal);
    if (signal !== 'SIGKILL') {
      const timer = setTimeout(() => w.child.kill('SIGKILL'), graceMs);
      await w.exited;
      clearTimeout(timer);
    } else {
      await w.exited;
    }
  }
}

/**
 * Start the simulated Proxmox API for a set of sandbox nodes (each must have `vm.vmid` in its config). VMs are
 * looked up by vmid among the given nodes, so power actions drive those nodes' supervisors.
 */
export function startSandboxProxmox(
  nodes: readonly SandboxNode[],
  opts: Omit<ProxmoxServerOptions, 'targets'>,
): Promise<ProxmoxServerHandle> {
  return startProxmoxServer({
    ...opts,
    targets: () =>
      nodes.flatMap((n) => {
        const vmid = n.store.tryRead()?.vm.vmid;
        return vmid === null || vmid === undefined ? [] : [{ vmid, stateFile: n.paths.stateFile }];
      }),
  });
}
