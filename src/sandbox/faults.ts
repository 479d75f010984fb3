/**
 * Fault injection for the sandbox node: each fault changes the simulated world the way the real failure changes a
 * real node, so gpuops sees it through the same shims and HTTP APIs. Used by `gpuops sandbox fault <node> <kind>`
 * and by tests.
 *
 * | kind           | what changes                                                        | what clears it            |
 * |----------------|---------------------------------------------------------------------|---------------------------|
 * | engine-hang    | health/version/tags answer, generations never do                    | docker restart / stop+start |
 * | container-exit | the engine container exits (code 2 Ollama, 1 others); port refuses  | docker start / restart    |
 * | cuda-oom       | generations fail with a CUDA OOM 500; OOM lines in the container log| docker restart            |
 * | xid-79         | GPU fell off the bus: nvidia-smi fails (exit 15), engine generations fail, Xid 79 in dmesg | VM reboot/reset only |
 * | ecc            | uncorrected volatile ECC > 0, row remap pending, Xid 48 + 63 in dmesg | nvidia-smi --gpu-reset, VM reboot |
 * | gpu-recovery-reset  | the driver's GPU recovery action reads Reset; no Xid in dmesg  | nvidia-smi --gpu-reset, VM reboot |
 * | gpu-recovery-reboot | the driver's GPU recovery action reads Reboot; no Xid in dmesg | VM reboot/reset only      |
 * | node-down      | the guest hangs: worker frozen, engines stop answering; Proxmox still says running; ACPI ignored | VM reset or stop+start |
 */
import * as core from './shims/lib/core';
import type {
  ActiveFault,
  ContainerSim,
  EngineSim,
  GpuSim,
  SandboxFaultKind,
  SandboxState,
  SandboxStore,
} from './state';

export type { SandboxFaultKind } from './state';

/** Every fault kind, in the order the CLI lists them. */
export const FAULT_KINDS: readonly SandboxFaultKind[] = [
  'engine-hang',
  'container-exit',
  'cuda-oom',
  'xid-79',
  'ecc',
  'gpu-recovery-reset',
  'gpu-recovery-reboot',
  'node-down',
];

/** One-line description of each fault kind, for `gpuops sandbox fault --help`. */
export const FAULT_DESCRIPTIONS: Readonly<Record<SandboxFaultKind, string>> = {
  'engine-hang': 'engine answers health checks but generations never return (cleared by restarting its container)',
  'container-exit': 'engine container exits; its port refuses connections (cleared by starting the container)',
  'cuda-oom':
    'generations fail with CUDA out of memory, OOM lines in the container log (cleared by a container restart)',
  'xid-79': 'GPU falls off the bus: nvidia-smi fails, Xid 79 in dmesg, generations fail (cleared only by a VM reboot)',
  ecc: 'uncorrectable ECC error: volatile ECC count > 0, Xid 48 in dmesg (cleared by a GPU reset or VM reboot)',
  'gpu-recovery-reset':
    "the driver's GPU recovery action reads Reset, with no Xid in dmesg (cleared by a GPU reset or VM reboot)",
  'gpu-recovery-reboot':
    "the driver's GPU recovery action reads Reboot, with no Xid in dmesg (cleared only by a VM reboot)",
  'node-down': 'the guest hangs: worker and engines stop answering, Proxmox still says running (cleared by VM reset)',
};

export function isFaultKind(s: string): s is SandboxFaultKind {
  return (FAULT_KINDS as readonly string[]).includes(s);
}

export interface InjectFaultOptions {
  /** Engine name (engine-hang, container-exit, cuda-oom); default the first engine. */
  engine?: string;
  /** GPU index (xid-79, ecc, gpu-recovery-*); default the first GPU of the chosen engine, else the first GPU. */
  gpu?: number;
}

/** Thrown when a fault cannot be injected (VM not running, no such engine or GPU, GPU without ECC). */
export class FaultError extends Error {
  override readonly name = 'FaultError';
}

function pickEngine(state: SandboxState, name: string | undefined): { engine: EngineSim; container: ContainerSim } {
  const engines = Object.values(state.engines);
  const engine = name === undefined ? engines[0] : state.engines[name];
  if (!engine) {
    throw new FaultError(
      name === undefined
        ? `node ${state.node} has no engines`
        : `node ${state.node} has no engine "${name}" (engines: ${engines.map((e) => e.name).join(', ') || 'none'})`,
    );
  }
  const container = state.containers[engine.container];
  if (!container) throw new FaultError(`engine ${engine.name} has no container "${engine.container}"`);
  return { engine, container };
}

function pickGpu(state: SandboxState, opts: InjectFaultOptions): GpuSim {
  let index = opts.gpu;
  if (index === undefined && opts.engine !== undefined) index = pickEngine(state, opts.engine).engine.gpus[0];
  const gpu = index === undefined ? state.gpus[0] : state.gpus.find((g) => g.index === index);
  if (!gpu) {
    throw new FaultError(
      index === undefined ? `node ${state.node} has no GPUs` : `node ${state.node} has no GPU ${index}`,
    );
  }
  return gpu;
}

/** The process an Xid line names: the engine using the GPU, if any. */
function gpuProcess(state: SandboxState, gpu: GpuSim, now: number): { pid: string; name: string } {
  const app = core.computeApps(state, gpu.index, now)[0];
  if (!app) return { pid: "'<unknown>'", name: '<unknown>' };
  const engine = state.engines[app.engine];
  const name = engine?.type === 'vllm' ? 'python3' : engine?.type === 'llamacpp' ? 'llama-server' : 'ollama_llama_se';
  return { pid: String(app.pid), name };
}

/**
 * Inject a fault into a running sandbox node. Returns the fault as recorded. Throws {@link FaultError} when the VM
 * is not up or the target does not exist.
 */
export function injectFault(store: SandboxStore, kind: SandboxFaultKind, opts: InjectFaultOptions = {}): ActiveFault {
  if (!isFaultKind(kind))
    throw new FaultError(`unknown fault kind "${String(kind)}" (one of ${FAULT_KINDS.join(', ')})`);
  return store.update((state, now) => {
    if (state.vm.phase !== 'up') {
      throw new FaultError(`node ${state.node} is not running (VM ${state.vm.phase}); faults need a running guest`);
    }
    let target: string;
    switch (kind) {
      case 'engine-hang': {
        const { container } = pickEngine(state, opts.engine);
        if (container.status !== 'running') throw new FaultError(`container ${container.name} is not running`);
        container.faults.hang = true;
        target = container.name;
        break;
      }
      case 'container-exit': {
        const { engine, container } = pickEngine(state, opts.engine);
        if (container.status !== 'running') throw new FaultError(`container ${container.name} is not running`);
        // A crash, not a stop: Go panics exit 2 (Ollama), Python and C++ servers exit 1.
        const code = engine.type === 'ollama' ? 2 : 1;
        core.appendLog(
          container,
          now,
          'stderr',
          engine.type === 'ollama'
            ? [
                'panic: runtime error: invalid memory address or nil pointer dereference',
                '[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x5b3c2e]',
              ]
            : engine.type === 'vllm'
              ? [
                  'RuntimeError: Engine loop has died',
                  `ERROR ${new Date(now).toISOString()} engine.py:160] Engine background task failed`,
                ]
              : ['GGML_ASSERT(ctx->mem_buffer != NULL) failed', 'Aborted (core dumped)'],
        );
        core.stopContainer(state, container.name, now, code, false);
        container.crashed = true;
        target = container.name;
        break;
      }
      case 'cuda-oom': {
        const { engine, container } = pickEngine(state, opts.engine);
        if (container.status !== 'running') throw new FaultError(`container ${container.name} is not running`);
        container.faults.cudaOom = true;
        core.appendLog(container, now, 'stderr', core.cudaOomLines(state, engine, now));
        target = container.name;
        break;
      }
      case 'xid-79': {
        const gpu = pickGpu(state, opts);
        const p = gpuProcess(state, gpu, now);
        gpu.lost = true;
        core.appendKernel(state, now, 'err', [
          `NVRM: GPU at PCI:${core.xidPci(gpu)}: ${gpu.uuid}`,
          `NVRM: GPU Board Serial Number: ${gpu.serial}`,
          `NVRM: Xid (PCI:${core.xidPci(gpu)}): 79, pid=${p.pid}, name=${p.name}, GPU has fallen off the bus.`,
          `NVRM: GPU ${gpu.pciBusId.slice(4)}: GPU has fallen off the bus.`,
        ]);
        for (const e of Object.values(state.engines)) {
          const c = state.containers[e.container];
          if (c && c.status === 'running' && e.gpus.includes(gpu.index)) {
            core.appendLog(c, now, 'stderr', 'CUDA error: unspecified launch failure');
          }
        }
        target = `gpu${gpu.index}`;
        break;
      }
      case 'ecc': {
        const gpu = pickGpu(state, opts);
        if (!gpu.eccSupported) throw new FaultError(`GPU ${gpu.index} (${gpu.name}) has no ECC memory`);
        const p = gpuProcess(state, gpu, now);
        gpu.eccUncorrectedVolatile += 2;
        gpu.eccUncorrectedAggregate += 2;
        gpu.remappedRowsPending = true;
        core.appendKernel(state, now, 'err', [
          `NVRM: Xid (PCI:${core.xidPci(gpu)}): 48, pid=${p.pid}, name=${p.name}, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 3, subpartition 1.`,
          `NVRM: Xid (PCI:${core.xidPci(gpu)}): 63, pid=${p.pid}, name=${p.name}, Row Remapper: New row (0x00000000000a2f40) marked for remapping, reset gpu to activate.`,
        ]);
        target = `gpu${gpu.index}`;
        break;
      }
      case 'gpu-recovery-reset':
      case 'gpu-recovery-reboot': {
        const gpu = pickGpu(state, opts);
        if (core.driverMajor(state) < core.RECOVERY_ACTION_SINCE_DRIVER) {
          throw new FaultError(
            `driver ${state.host.driverVersion} reports no GPU recovery action (drivers ${core.RECOVERY_ACTION_SINCE_DRIVER} and later do)`,
          );
        }
        // The verdict alone, as when the Xid 154 that announced it has left the kernel ring buffer.
        gpu.recoveryAction = kind === 'gpu-recovery-reset' ? 'reset' : 'reboot';
        target = `gpu${gpu.index}`;
        break;
      }
      case 'node-down': {
        state.vm.hung = true;
        core.appendKernel(state, now, 'err', [
          'watchdog: BUG: soft lockup - CPU#3 stuck for 26s! [kworker/3:1:1207]',
          'rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:',
        ]);
        target = state.node;
        break;
      }
    }
    core.syncFaults(state, now);
    const fault = state.faults.find((f) => f.kind === kind && f.target === target);
    return fault ?? { kind, target, at: now };
  });
}

/**
 * Undo faults as if they had never happened (not a recovery: no restart is counted, the kernel log keeps its
 * lines). Without `kinds`, clears every fault. Returns the faults that were active and are now gone.
 */
export function clearFaults(store: SandboxStore, kinds?: readonly SandboxFaultKind[]): ActiveFault[] {
  const want = new Set<SandboxFaultKind>(kinds ?? FAULT_KINDS);
  return store.update((state, now) => {
    const before = [...state.faults];
    for (const c of Object.values(state.containers)) {
      if (want.has('engine-hang')) c.faults.hang = false;
      if (want.has('cuda-oom')) c.faults.cudaOom = false;
      if (want.has('container-exit') && c.crashed && c.status === 'exited' && state.vm.phase !== 'off') {
        core.startContainer(state, c.name, now);
      }
    }
    for (const g of state.gpus) {
      if (want.has('xid-79')) g.lost = false;
      if (want.has('ecc')) {
        g.eccUncorrectedVolatile = 0;
        g.remappedRowsPending = false;
      }
      if (want.has('gpu-recovery-reset') && g.recoveryAction === 'reset') g.recoveryAction = 'none';
      if (want.has('gpu-recovery-reboot') && g.recoveryAction === 'reboot') g.recoveryAction = 'none';
    }
    if (want.has('node-down')) state.vm.hung = false;
    core.syncFaults(state, now);
    const still = new Set(state.faults.map((f) => `${f.kind}/${f.target}`));
    return before.filter((f) => !still.has(`${f.kind}/${f.target}`));
  });
}

/** Faults active on the node now. */
export function listFaults(store: SandboxStore): ActiveFault[] {
  return store.read().faults;
}
