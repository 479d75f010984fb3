/**
 * The sandbox node's shared runtime: the state file's lock and atomic write, the simulated VM's power state machine,
 * and small helpers every writer needs. The shims (docker, nvidia-smi, qm, dmesg, systemctl, journalctl) bundle it
 * into their single-file builds (`src/sandbox/shim-build.ts`), and the supervisor, the Proxmox API and the fault CLI
 * import it directly, so there is exactly one implementation of the rules that several processes apply to the same
 * file. It imports nothing but Node builtins and the state's types: whatever it imports, every shim start loads.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type {
  ContainerRunSpec,
  ContainerSim,
  EngineSim,
  GpuSim,
  LoadedModel,
  PowerAction,
  SandboxFaultKind,
  SandboxState,
  ServedModel,
  TaskRecord,
} from '../../state';

/** A lock older than this whose owner cannot be proven alive is considered abandoned (a writer was SIGKILLed). */
const LOCK_STALE_MS = 10_000;
/** How long a writer waits for the lock before giving up: far above any real hold time (a few ms). */
const LOCK_WAIT_MS = 20_000;
const LOG_LINES_MAX = 400;
const KERNEL_LINES_MAX = 400;
const TASKS_MAX = 50;

/** What the simulated Ollama reports: the version of the real one the tool cache builds (`npm run engines`). */
export const OLLAMA_VERSION = '0.17.4';
export const VLLM_VERSION = '0.6.4.post1';

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
/** Synchronous sleep without burning CPU: writers are short critical sections, an async lock would buy nothing. */
export function sleepSync(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

/** The errno code of a failed fs call (not via instanceof: under jest, Node's errors come from another realm). */
function errnoOf(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
    ? err.code
    : undefined;
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return errnoOf(err) === 'EPERM';
  }
}

function readOwner(lockDir: string): string | null {
  try {
    return fs.readFileSync(path.join(lockDir, 'owner'), 'utf8');
  } catch {
    return null;
  }
}

/**
 * Stale when the owner process is gone, or the lock is older than LOCK_STALE_MS (owner stuck or pid reused).
 * Returns the stale owner ('' for a lock whose owner was never written), or null when the lock is live.
 */
function staleOwner(lockDir: string): string | null {
  const owner = readOwner(lockDir);
  let mtime: number;
  try {
    mtime = fs.statSync(lockDir).mtimeMs;
  } catch {
    return null; // vanished: not stale, just retry
  }
  const m = owner === null ? null : /^(\d+) (\d+)$/.exec(owner);
  if (m) {
    const pid = Number(m[1]);
    const at = Number(m[2]);
    if (!pidAlive(pid)) return owner;
    if (Date.now() - at > LOCK_STALE_MS) return owner;
    return null;
  }
  // Created but the owner not (fully) written yet: only stale if it stayed that way for a long time.
  return Date.now() - mtime > LOCK_STALE_MS ? '' : null;
}

/**
 * mkdir is atomic on every local filesystem, so a directory is the lock. Stale locks are broken by renaming them
 * away (also atomic); if the renamed lock turns out not to be the stale one we looked at, it is put back.
 */
export function acquireLock(file: string): string {
  const lockDir = `${file}.lock`;
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      fs.mkdirSync(lockDir);
      fs.writeFileSync(path.join(lockDir, 'owner'), `${process.pid} ${Date.now()}`);
      return lockDir;
    } catch (err) {
      const code = errnoOf(err);
      if (code === 'ENOENT') {
        fs.mkdirSync(path.dirname(file), { recursive: true });
        continue;
      }
      if (code !== 'EEXIST') throw err;
      const stale = staleOwner(lockDir);
      if (stale !== null) {
        const aside = `${lockDir}.stale-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
        try {
          fs.renameSync(lockDir, aside);
          const moved = readOwner(aside);
          if (stale !== '' && moved !== stale) {
            // We took a fresh lock someone acquired after our check: give it back.
            try {
              fs.renameSync(aside, lockDir);
            } catch {
              // The path was taken again meanwhile; the owner of `aside` will fail its unlock, harmless.
            }
          } else {
            fs.rmSync(aside, { recursive: true, force: true });
          }
        } catch {
          // Someone else broke it first.
        }
        continue;
      }
      if (Date.now() > deadline) throw new Error(`sandbox: timed out waiting for lock ${lockDir}`);
      sleepSync(Math.min(1 + attempt, 15));
    }
  }
}

export function releaseLock(lockDir: string): void {
  fs.rmSync(lockDir, { recursive: true, force: true });
}

/** Read the state without the lock: writers replace the file atomically, so a reader sees the old or new state. */
export function readState(file: string): SandboxState {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as SandboxState;
}

export function tryReadState(file: string): SandboxState | undefined {
  try {
    return readState(file);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw err;
  }
}

function serialize(state: SandboxState): string {
  return `${JSON.stringify(state, null, 1)}\n`;
}

/** tmp + rename: readers never see a half-written file, and a writer killed mid-write leaves the old state. */
function replaceFile(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

export function writeStateAtomic(file: string, state: SandboxState): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  replaceFile(file, serialize(state));
}

/**
 * Read-modify-write under the lock. The VM state machine is advanced first, so every writer (shim, supervisor,
 * Proxmox API, fault CLI) sees time-driven transitions even when no supervisor is running. The file is only
 * rewritten when something changed.
 */
export function updateState<T>(file: string, fn: (state: SandboxState, now: number) => T): T {
  const lock = acquireLock(file);
  try {
    const text = fs.readFileSync(file, 'utf8');
    const state = JSON.parse(text) as SandboxState;
    const now = Date.now();
    advance(state, now);
    const result = fn(state, now);
    syncFaults(state, now);
    const next = serialize(state);
    if (next !== text) replaceFile(file, next);
    return result;
  } finally {
    releaseLock(lock);
  }
}

/** Create the state file if it does not exist yet (under the lock, so two starters do not both seed). */
export function createStateIfAbsent(file: string, makeState: () => SandboxState): boolean {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const lock = acquireLock(file);
  try {
    if (fs.existsSync(file)) return false;
    writeStateAtomic(file, makeState());
    return true;
  } finally {
    releaseLock(lock);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Time and identifier formats

/** RFC 3339 with nanoseconds, as Docker prints times. Sub-millisecond digits are derived, so they are stable. */
export function isoNano(ms: number): string {
  if (!ms) return '0001-01-01T00:00:00Z';
  const iso = new Date(ms).toISOString();
  const sub = String((Math.floor(ms) * 7919) % 1_000_000).padStart(6, '0');
  return `${iso.slice(0, -1)}${sub}Z`;
}

export function hexOf(text: string, len: number): string {
  return crypto.createHash('sha256').update(text).digest('hex').slice(0, len);
}

function hex8(n: number): string {
  return (n >>> 0).toString(16).toUpperCase().padStart(8, '0');
}

export function nextPid(state: SandboxState): number {
  const pid = state.host.nextPid;
  state.host.nextPid = pid + 1 + (pid % 7);
  return pid;
}

/** The record `name`; a caller names only records it has just looked up. */
function containerOf(state: SandboxState, name: string): ContainerSim {
  const c = state.containers[name];
  if (!c) throw new Error(`sandbox: no container ${name} on node ${state.node}`);
  return c;
}

// ---------------------------------------------------------------------------------------------------------------
// Logs

export function appendLog(
  container: ContainerSim,
  t: number,
  stream: 'stdout' | 'stderr',
  lines: string | readonly string[],
): void {
  for (const m of typeof lines === 'string' ? [lines] : lines) container.logs.push({ t, s: stream, m });
  if (container.logs.length > LOG_LINES_MAX) container.logs.splice(0, container.logs.length - LOG_LINES_MAX);
}

export function appendKernel(
  state: SandboxState,
  t: number,
  level: 'info' | 'warn' | 'err',
  lines: string | readonly string[],
): void {
  for (const m of typeof lines === 'string' ? [lines] : lines) {
    const up = Math.max(0, (t - state.vm.bootedAt) / 1000);
    state.kernelLog.push({ t, up, level, m });
  }
  if (state.kernelLog.length > KERNEL_LINES_MAX) state.kernelLog.splice(0, state.kernelLog.length - KERNEL_LINES_MAX);
}

function ollamaTime(t: number): string {
  return new Date(t).toISOString().replace(/\.\d{3}Z$/, '.000Z');
}

function vllmTime(t: number): string {
  const d = new Date(t);
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}`;
}

function gpuForEngine(state: SandboxState, engine: EngineSim): GpuSim | undefined {
  const idx = engine.gpus[0] ?? 0;
  return state.gpus.find((g) => g.index === idx) ?? state.gpus[0];
}

/** What each engine prints when its container starts, so `docker logs` looks like the real thing. */
function startupLines(state: SandboxState, engine: EngineSim, container: ContainerSim, t: number): string[] {
  const gpu = gpuForEngine(state, engine);
  const gpuName = gpu ? gpu.name : 'none';
  const totalGiB = gpu ? (gpu.memoryTotalMiB / 1024).toFixed(1) : '0.0';
  const port = container.ports.container;
  switch (engine.type) {
    case 'ollama':
      return [
        `time=${ollamaTime(t)} level=INFO source=images.go:753 msg="total blobs: ${engine.models.length * 4}"`,
        `time=${ollamaTime(t)} level=INFO source=routes.go:1246 msg="Listening on [::]:${port} (version ${OLLAMA_VERSION})"`,
        `time=${ollamaTime(t)} level=INFO source=gpu.go:226 msg="looking for compatible GPUs"`,
        gpu
          ? `time=${ollamaTime(t)} level=INFO source=types.go:131 msg="inference compute" id=${gpu.uuid} library=cuda variant=v12 compute=8.6 driver=${state.host.cudaVersion} name="${gpuName}" total="${totalGiB} GiB" available="${(Number(totalGiB) - 0.2).toFixed(1)} GiB"`
          : `time=${ollamaTime(t)} level=INFO source=gpu.go:392 msg="no compatible GPUs were discovered"`,
      ];
    case 'vllm': {
      const serves = container.serves;
      const model = serves ? serves.arg : (engine.models[0] ?? '');
      const revision = serves?.revision ? `'${serves.revision}'` : 'None';
      return [
        `INFO ${vllmTime(t)} api_server.py:585] vLLM API server version ${VLLM_VERSION}`,
        `INFO ${vllmTime(t)} api_server.py:586] args: Namespace(host=None, port=${port}, model='${model}', revision=${revision}, gpu_memory_utilization=0.9)`,
        `INFO ${vllmTime(t)} model_runner.py:1077] Loading model weights took 0.9276 GB`,
        `INFO ${vllmTime(t)} gpu_executor.py:122] # GPU blocks: 5823, # CPU blocks: 5461`,
        `INFO:     Uvicorn running on http://0.0.0.0:${port} (Press CTRL+C to quit)`,
      ];
    }
    default:
      return [
        `build: 4240 (2a1a0a1b) with cc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0 for x86_64-linux-gnu`,
        `ggml_cuda_init: found 1 CUDA devices:`,
        `  Device 0: ${gpuName}, compute capability 8.6, VMM: yes`,
        `main: HTTP server is listening, hostname: 0.0.0.0, port: ${port}, http threads: 15`,
        `srv    load_model: loading model '${container.serves ? container.serves.arg : `/models/${engine.models[0] || 'model.gguf'}`}'`,
        `main: server is listening on http://0.0.0.0:${port} - starting the main loop`,
      ];
  }
}

/** The log lines a CUDA out-of-memory leaves behind, per engine. They match gpuops's CUDA OOM log signature. */
export function cudaOomLines(state: SandboxState, engine: EngineSim, t: number): string[] {
  const gpu = gpuForEngine(state, engine);
  const total = gpu ? (gpu.memoryTotalMiB / 1024).toFixed(2) : '0.00';
  switch (engine.type) {
    case 'ollama':
      return [
        'ggml_backend_cuda_buffer_type_alloc_buffer: allocating 2304.00 MiB on device 0: cudaMalloc failed: out of memory',
        `time=${ollamaTime(t)} level=ERROR source=sched.go:455 msg="error loading llama server" error="llama runner process has terminated: CUDA error: out of memory"`,
      ];
    case 'vllm':
      return [
        `ERROR ${vllmTime(t)} engine.py:135] OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of ${total} GiB of which 187.00 MiB is free.')`,
        `torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of ${total} GiB of which 187.00 MiB is free.`,
      ];
    default:
      return [
        'ggml_backend_cuda_buffer_type_alloc_buffer: allocating 2304.00 MiB on device 0: cudaMalloc failed: out of memory',
        'CUDA error: out of memory',
      ];
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Containers

function engineOfContainer(state: SandboxState, name: string): EngineSim | undefined {
  return Object.values(state.engines).find((e) => e.container === name);
}

/** Start (or restart) a container: new pid and epoch, container-scoped faults gone with the old process. */
export function startContainer(state: SandboxState, name: string, at: number): void {
  const c = containerOf(state, name);
  c.status = 'running';
  c.startedAt = at;
  c.pid = nextPid(state);
  c.epoch += 1;
  c.exitCode = 0;
  c.oomKilled = false;
  c.manuallyStopped = false;
  c.faults = { hang: false, cudaOom: false };
  const engine = engineOfContainer(state, name);
  if (engine) {
    engine.loaded = [];
    appendLog(c, at, 'stderr', startupLines(state, engine, c, at));
  }
  // A model the engine cannot load: it tries for the load time, then prints why and exits 1.
  delete c.loadFailure;
  if (engine && c.serves && !c.serves.known) {
    const loadMs = state.sim.engineLoadMs * state.sim.timeScale;
    c.loadFailure = {
      at: at + Math.max(1, Math.round(loadMs * 0.8)),
      lines: loadFailureLines(engine, c.serves, c.id, at),
    };
  }
}

export function stopContainer(state: SandboxState, name: string, at: number, exitCode: number, manual: boolean): void {
  const c = containerOf(state, name);
  if (c.status === 'running' || c.status === 'restarting' || c.status === 'paused') {
    c.status = 'exited';
    c.finishedAt = at;
    c.exitCode = exitCode;
    // systemd keeps the last main PID after the process is gone (ExecMainPID=).
    c.lastPid = c.pid;
    c.pid = 0;
  }
  if (manual) c.manuallyStopped = true;
  const engine = engineOfContainer(state, name);
  if (engine) engine.loaded = [];
}

// ---------------------------------------------------------------------------------------------------------------
// GPUs

export function loadedModels(engine: EngineSim, now: number): LoadedModel[] {
  return engine.loaded.filter((l) => l.expiresAt < 0 || l.expiresAt > now);
}

/** A process holding a CUDA context on a GPU, as `nvidia-smi --query-compute-apps` lists it. */
export interface ComputeApp {
  pid: number;
  processName: string;
  usedMiB: number;
  engine: string;
  container: string;
}

/** Engines whose container runs on this GPU and holds a CUDA context (vLLM/llama.cpp always, Ollama when loaded). */
export function computeApps(state: SandboxState, gpuIndex: number, now: number): ComputeApp[] {
  const apps: ComputeApp[] = [];
  const first = state.gpus[0];
  for (const engine of Object.values(state.engines)) {
    const gpus = engine.gpus.length > 0 ? engine.gpus : first ? [first.index] : [];
    if (!gpus.includes(gpuIndex)) continue;
    const c = state.containers[engine.container];
    if (!c || c.status !== 'running') continue;
    const gpu = state.gpus.find((g) => g.index === gpuIndex);
    if (!gpu) continue;
    let usedMiB = 0;
    let processName = '/usr/bin/ollama';
    if (engine.type === 'ollama') {
      const loaded = loadedModels(engine, now);
      if (loaded.length === 0 && !c.faults.cudaOom) continue;
      usedMiB = loaded.reduce((sum, l) => sum + Math.round(l.sizeVram / gpus.length / 1048576), 0);
    } else if (engine.type === 'vllm') {
      processName = '/usr/bin/python3';
      usedMiB = Math.round(gpu.memoryTotalMiB * 0.9 - gpu.baseUsedMiB);
    } else {
      processName = '/app/llama-server';
      const profile = state.library[profileName(engine, engine.models[0] ?? '')];
      usedMiB = Math.round((profile ? profile.sizeBytes / 1048576 : 1024) + 512);
    }
    if (c.faults.cudaOom) usedMiB = Math.max(usedMiB, gpu.memoryTotalMiB - gpu.baseUsedMiB - 187);
    apps.push({ pid: c.pid, processName, usedMiB, engine: engine.name, container: c.name });
  }
  return apps;
}

export function gpuMemoryUsed(state: SandboxState, gpu: GpuSim, now: number): number {
  const apps = computeApps(state, gpu.index, now);
  const used = gpu.baseUsedMiB + apps.reduce((s, a) => s + a.usedMiB, 0);
  return Math.min(gpu.memoryTotalMiB, used);
}

/** PCI id as the kernel's Xid lines print it: domain:bus:device, without function. */
/** The first driver release whose NVML reports the GPU recovery action (nvidia-smi `gpu_recovery_action`). */
export const RECOVERY_ACTION_SINCE_DRIVER = 565;

/** The major number of the simulated driver ("570.158.01" → 570). */
export function driverMajor(state: SandboxState): number {
  return Number.parseInt(state.host.driverVersion, 10);
}

export function xidPci(gpu: GpuSim): string {
  const [domain = '', bus = '', devfn = ''] = gpu.pciBusId.split(':');
  return `${domain.slice(-4)}:${bus}:${devfn.split('.')[0] ?? ''}`;
}

// ---------------------------------------------------------------------------------------------------------------
// The VM

function bootKernelLines(state: SandboxState): string[] {
  const lines = [
    `Linux version ${state.host.kernel} (buildd@lcy02-amd64-040) (x86_64-linux-gnu-gcc-13 (Ubuntu 13.2.0-23ubuntu4) 13.2.0) #45-Ubuntu SMP PREEMPT_DYNAMIC`,
    'Command line: BOOT_IMAGE=/vmlinuz root=/dev/mapper/ubuntu--vg-ubuntu--lv ro',
    'DMI: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 4.2023.08-4 02/15/2024',
    'Hypervisor detected: KVM',
  ];
  for (const gpu of state.gpus) {
    lines.push(`pci ${gpu.pciBusId.slice(4)}: [10de:24b0] type 00 class 0x030000 PCIe Endpoint`);
  }
  lines.push(
    'nvidia: loading out-of-tree module taints kernel.',
    `nvidia-nvlink: Nvlink Core is being initialized, major device number 235`,
    `NVRM: loading NVIDIA UNIX x86_64 Kernel Module  ${state.host.driverVersion}  Tue Apr  8 12:41:17 UTC 2025`,
    `nvidia-modeset: Loading NVIDIA Kernel Mode Setting Driver for UNIX platforms  ${state.host.driverVersion}  Tue Apr  8 12:40:46 UTC 2025`,
    '[drm] [nvidia-drm] [GPU ID 0x00000100] Loading driver',
    'docker0: port 1(veth0a1b2c3) entered forwarding state',
  );
  return lines;
}

/**
 * QEMU (re)starts the guest: everything that lived in guest memory is gone. GPU faults that a reboot clears (lost
 * GPU, the driver's recovery action, volatile ECC counts, a pending row remap which is applied now), the guest hang, the kernel ring buffer and the
 * engine processes all start fresh. Containers come back unless an operator stopped them (the node's boot unit runs
 * `docker start` for the engines).
 */
export function bootVm(state: SandboxState, at: number): void {
  const vm = state.vm;
  vm.status = 'running';
  vm.phase = 'booting';
  vm.bootId += 1;
  vm.bootedAt = at;
  vm.phaseUntil = at + vm.bootMs;
  vm.hung = false;
  state.kernelLog = [];
  // Spread the boot messages over the boot, as a real kernel logs them over its first seconds.
  const lines = bootKernelLines(state);
  lines.forEach((line, i) =>
    appendKernel(state, at + Math.round((vm.bootMs * 0.8 * i) / lines.length) + i, 'info', line),
  );
  for (const gpu of state.gpus) {
    gpu.lost = false;
    gpu.recoveryAction = 'none';
    gpu.eccUncorrectedVolatile = 0;
    gpu.eccCorrectedVolatile = 0;
    if (gpu.remappedRowsPending) {
      gpu.remappedRowsPending = false;
      gpu.remappedRowsUncorrectable += 1;
    }
  }
  const upAt = vm.phaseUntil;
  for (const c of Object.values(state.containers)) {
    if (c.manuallyStopped) continue;
    startContainer(state, c.name, upAt);
  }
}

/** Guest and QEMU are gone (stop, or the end of a shutdown). */
function powerOff(state: SandboxState, at: number): void {
  const vm = state.vm;
  vm.status = 'stopped';
  vm.phase = 'off';
  vm.phaseUntil = null;
  vm.hung = false;
  for (const c of Object.values(state.containers)) {
    if (c.status === 'running') {
      // The guest shut down under the container: Docker records the SIGTERM exit, but it is not a manual stop.
      c.status = 'exited';
      c.finishedAt = at;
      c.exitCode = 0;
      c.lastPid = c.pid;
      c.pid = 0;
    }
  }
  for (const e of Object.values(state.engines)) e.loaded = [];
}

/** Apply every transition whose time has come. Idempotent; called at the start of each update. */
function advance(state: SandboxState, now: number): void {
  const vm = state.vm;
  for (let guard = 0; guard < 8; guard++) {
    if (vm.op?.ignored && now >= vm.op.deadline) {
      // ACPI request ignored by a hung guest: the task gives up, the VM keeps running (hung).
      vm.op = null;
      continue;
    }
    if (vm.phase === 'shutting-down' && vm.phaseUntil !== null && now >= vm.phaseUntil) {
      const at = vm.phaseUntil;
      const op = vm.op;
      vm.op = null;
      powerOff(state, at);
      if (op?.action === 'reboot') bootVm(state, at + 50);
      continue;
    }
    if (vm.phase === 'booting' && vm.phaseUntil !== null && now >= vm.phaseUntil) {
      vm.phase = 'up';
      vm.phaseUntil = null;
      continue;
    }
    break;
  }
  for (const e of Object.values(state.engines)) {
    const live = loadedModels(e, now);
    if (live.length !== e.loaded.length) e.loaded = live;
  }
  applyLoadFailures(state, now);
}

function makeUpid(state: SandboxState, pveNode: string, type: string, user: string, now: number): string {
  const pid = nextPid(state) + 1_000_000;
  const pstart = Math.floor((now - state.createdAt) / 10) + 4_200_000;
  return `UPID:${pveNode}:${hex8(pid)}:${hex8(pstart)}:${hex8(Math.floor(now / 1000))}:${type}:${state.vm.vmid}:${user}:`;
}

export interface PowerOptions {
  user?: string;
  pveNode?: string;
  /** ACPI timeout of a shutdown or reboot (default the VM's acpiTimeoutMs). */
  timeoutMs?: number;
}

/**
 * Ask the VM for a power action, as `qm <action>` and the Proxmox API do. Returns the task record; its outcome is
 * known at once (taskStatus tells when it has "finished"). Semantics follow Proxmox: shutdown and reboot go through
 * ACPI and a hung guest ignores them until the timeout; stop and reset act on QEMU and always work.
 */
export function requestPower(
  state: SandboxState,
  action: PowerAction,
  now: number,
  opts: PowerOptions = {},
): TaskRecord {
  const vm = state.vm;
  const user = opts.user || 'root@pam';
  const pveNode = opts.pveNode || 'pve';
  const type = `qm${action}`;
  const upid = makeUpid(state, pveNode, type, user, now);
  const [, , pidHex = '', pstartHex = ''] = upid.split(':');
  const task: TaskRecord = {
    upid,
    node: pveNode,
    type,
    id: String(vm.vmid),
    user,
    pid: parseInt(pidHex, 16),
    pstart: parseInt(pstartHex, 16),
    starttime: Math.floor(now / 1000),
    endAt: now + 150,
    exitstatus: 'OK',
    log: [],
  };
  const fail = (message: string): void => {
    task.exitstatus = message;
  };
  state.tasks.push(task);
  if (state.tasks.length > TASKS_MAX) state.tasks.splice(0, state.tasks.length - TASKS_MAX);
  const running = vm.phase !== 'off';
  const abortPending = (): void => {
    if (vm.op) {
      const op = vm.op;
      const pending = state.tasks.find((t) => t.upid === op.upid);
      if (pending && pending.endAt > now) {
        pending.endAt = now;
        pending.exitstatus = 'VM quit/powerdown failed';
      }
      vm.op = null;
    }
  };
  switch (action) {
    case 'start':
      if (running) {
        fail(`VM ${vm.vmid} already running`);
        break;
      }
      vm.lastAction = { action, at: now };
      bootVm(state, now);
      task.log.push(`start VM ${vm.vmid}: ${upid}`);
      break;
    case 'stop':
      abortPending();
      vm.lastAction = { action, at: now };
      if (running) powerOff(state, now);
      task.log.push(`stop VM ${vm.vmid}: ${upid}`);
      break;
    case 'reset':
      if (!running) {
        fail(`VM ${vm.vmid} not running`);
        break;
      }
      abortPending();
      vm.lastAction = { action, at: now };
      bootVm(state, now);
      break;
    case 'shutdown':
    case 'reboot': {
      if (!running) {
        fail(`VM ${vm.vmid} not running`);
        break;
      }
      if (vm.op) {
        task.endAt = now + 100;
        fail(`can't lock file '/var/lock/qemu-server/lock-${vm.vmid}.conf' - got timeout`);
        break;
      }
      const timeoutMs = opts.timeoutMs !== undefined ? opts.timeoutMs : vm.acpiTimeoutMs;
      vm.lastAction = { action, at: now };
      task.log.push(`requesting ${action} of VM ${vm.vmid}: ${upid}`);
      if (vm.hung) {
        vm.op = { action, upid, startedAt: now, deadline: now + timeoutMs, ignored: true };
        task.endAt = now + timeoutMs;
        fail('VM quit/powerdown failed - got timeout');
        break;
      }
      vm.phase = 'shutting-down';
      vm.phaseUntil = now + vm.shutdownMs;
      vm.op = { action, upid, startedAt: now, deadline: now + timeoutMs, ignored: false };
      task.endAt = now + vm.shutdownMs + (action === 'reboot' ? 100 : 0);
      break;
    }
    default:
      fail(`unknown power action '${String(action)}'`);
  }
  task.log.push(task.exitstatus === 'OK' ? 'TASK OK' : `TASK ERROR: ${task.exitstatus}`);
  return task;
}

/** Proxmox's view of a task: running until its end time, then stopped with its exit status. */
export function taskStatus(
  task: TaskRecord,
  now: number,
): { status: 'running' } | { status: 'stopped'; exitstatus: string; endtime: number } {
  if (now < task.endAt) return { status: 'running' };
  return { status: 'stopped', exitstatus: task.exitstatus, endtime: Math.floor(task.endAt / 1000) };
}

// ---------------------------------------------------------------------------------------------------------------
// Faults: the list is derived from the world, so a docker restart or a reboot that clears a fault's cause clears it.

function currentFaults(state: SandboxState): { kind: SandboxFaultKind; target: string }[] {
  const out: { kind: SandboxFaultKind; target: string }[] = [];
  if (state.vm.hung) out.push({ kind: 'node-down', target: state.node });
  for (const c of Object.values(state.containers)) {
    if (c.faults.hang) out.push({ kind: 'engine-hang', target: c.name });
    if (c.faults.cudaOom) out.push({ kind: 'cuda-oom', target: c.name });
    if (c.crashed && c.status === 'exited') out.push({ kind: 'container-exit', target: c.name });
  }
  for (const g of state.gpus) {
    if (g.lost) out.push({ kind: 'xid-79', target: `gpu${g.index}` });
    if (g.eccUncorrectedVolatile > 0) out.push({ kind: 'ecc', target: `gpu${g.index}` });
    if (g.recoveryAction === 'reset') out.push({ kind: 'gpu-recovery-reset', target: `gpu${g.index}` });
    if (g.recoveryAction === 'reboot') out.push({ kind: 'gpu-recovery-reboot', target: `gpu${g.index}` });
  }
  return out;
}

export function syncFaults(state: SandboxState, now: number): void {
  const prev = new Map(state.faults.map((f) => [`${f.kind}/${f.target}`, f.at]));
  state.faults = currentFaults(state).map((f) => ({ ...f, at: prev.get(`${f.kind}/${f.target}`) ?? now }));
  for (const c of Object.values(state.containers)) if (c.crashed && c.status !== 'exited') c.crashed = false;
}

// ---------------------------------------------------------------------------------------------------------------
// docker run / docker rm: canary slots recreate an engine's container with another model.

/** What the sandbox's engine images set by themselves (`docker image inspect`), per engine type. */
export const IMAGE_DEFAULTS: Readonly<
  Record<EngineSim['type'], { Entrypoint: string[]; Cmd: string[] | null; port: number; volume: string }>
> = {
  ollama: { Entrypoint: ['/bin/ollama'], Cmd: ['serve'], port: 11434, volume: '/root/.ollama' },
  vllm: {
    Entrypoint: ['python3', '-m', 'vllm.entrypoints.openai.api_server'],
    Cmd: null,
    port: 8000,
    volume: '/root/.cache/huggingface',
  },
  llamacpp: { Entrypoint: ['/app/llama-server'], Cmd: null, port: 8080, volume: '/models' },
};
export const IMAGE_ENV: readonly string[] = [
  'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  'NVIDIA_VISIBLE_DEVICES=all',
];
export const IMAGE_LABELS: Readonly<Record<string, string>> = {
  'org.opencontainers.image.ref.name': 'ubuntu',
  'org.opencontainers.image.version': '22.04',
};

/** The library profile behind a name an engine serves (a --served-model-name or --alias maps to its model). */
export function profileName(engine: EngineSim, served: string): string {
  return engine.servedFrom?.[served] || served;
}

/** Last value of `--flag V` / `--flag=V` in argv (first value for nargs flags), or undefined. */
function flagValue(argv: readonly string[], names: readonly string[]): string | undefined {
  let v: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    const next = argv[i + 1];
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    if (eq > 0 && names.includes(a.slice(0, eq))) v = a.slice(eq + 1);
    else if (names.includes(a) && next !== undefined && !next.startsWith('-')) v = next;
  }
  return v;
}

/** The model a vLLM / llama.cpp command line names, as the engine reads it; undefined when it names none. */
function modelOfCommand(
  type: EngineSim['type'],
  cmd: readonly string[],
  entrypoint: readonly string[],
): Omit<ServedModel, 'known'> | undefined {
  if (type === 'vllm') {
    let arg = flagValue(cmd, ['--model']);
    if (arg === undefined) {
      const full = [...entrypoint, ...cmd];
      const i = full.findIndex((a, k) => a === 'serve' && k > 0 && /(^|\/)vllm$/.test(full[k - 1] ?? ''));
      const next = full[i + 1];
      if (i >= 0 && next !== undefined && !next.startsWith('-')) arg = next;
    }
    if (arg === undefined) return undefined;
    const served = flagValue(cmd, ['--served-model-name']);
    return { arg, profile: arg, served: served || arg, revision: flagValue(cmd, ['--revision']) || null };
  }
  if (type === 'llamacpp') {
    const alias = flagValue(cmd, ['-a', '--alias']);
    const p = flagValue(cmd, ['-m', '--model']);
    if (p !== undefined) {
      const file = p.split('/').pop() ?? p;
      return { arg: p, profile: file, served: alias || file, revision: null };
    }
    const repo = flagValue(cmd, ['-hf', '-hfr', '--hf-repo']);
    if (repo === undefined) return undefined;
    const file = flagValue(cmd, ['-hff', '--hf-file']);
    const profile = file || repo;
    return { arg: repo, profile, served: alias || profile, revision: null };
  }
  return undefined;
}

/** What the engine prints before it exits because it cannot load its model. */
function loadFailureLines(engine: EngineSim, m: ServedModel, id: string, t: number): string[] {
  if (engine.type === 'vllm') {
    const ts = vllmTime(t);
    const url = `https://huggingface.co/${m.arg}/resolve/${m.revision || 'main'}/config.json`;
    return [
      `INFO ${ts} api_server.py:170] Multiprocessing frontend to use ipc:///tmp/${hexOf(`${id}/${t}`, 8)}-${hexOf(`${id}/ipc`, 4)} for IPC Path.`,
      'Traceback (most recent call last):',
      '  File "/usr/local/lib/python3.12/dist-packages/huggingface_hub/utils/_http.py", line 406, in hf_raise_for_status',
      '    response.raise_for_status()',
      `requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: ${url}`,
      '',
      'The above exception was the direct cause of the following exception:',
      '',
      `huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-${hexOf(`${id}/req`, 8)}-${hexOf(`${id}/req2`, 24)})`,
      '',
      `Repository Not Found for url: ${url}.`,
      'Please make sure you specified the correct `repo_id` and `repo_type`.',
      'If you are trying to access a private or gated repo, make sure you are authenticated.',
      `OSError: ${m.arg} is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'`,
      'If this is a private repository, make sure to pass a token having permission to this repo either by logging in with `huggingface-cli login` or by passing `token=<your_token>`',
    ];
  }
  if (m.arg.endsWith('.gguf')) {
    return [
      `gguf_init_from_file: failed to open GGUF file '${m.arg}'`,
      `llama_model_load: error loading model: llama_model_loader: failed to load model from ${m.arg}`,
      'llama_model_load_from_file_impl: failed to load model',
      `common_init_from_params: failed to load model '${m.arg}', try reducing --n-gpu-layers if you're running out of VRAM`,
      `srv    load_model: failed to load model, '${m.arg}'`,
      'srv    operator(): operator(): cleaning up before exit...',
      'main: exiting due to model loading error',
    ];
  }
  return [
    `common_download_file_single: no previous model file found /root/.cache/llama.cpp/${m.arg.replace(/[/:]/g, '_')}.gguf`,
    `common_get_hf_file: error from HF API, response code: 401, data: {"error":"Invalid username or password."}`,
    `common_init_from_params: failed to load model '${m.arg}'`,
    'srv    load_model: failed to load model',
    'main: exiting due to model loading error',
  ];
}

/** Containers whose model failed to load by `now` print why and exit 1 (as the engine process does). */
export function applyLoadFailures(state: SandboxState, now: number): void {
  for (const c of Object.values(state.containers)) {
    if (!c.loadFailure || c.status !== 'running' || now < c.loadFailure.at) continue;
    const f = c.loadFailure;
    delete c.loadFailure;
    appendLog(c, f.at, 'stderr', f.lines);
    stopContainer(state, c.name, f.at, 1, false);
  }
}

/** Host and container port of the first `--publish` value ("18101:8000", "0.0.0.0:18101:8000/tcp", "8000"). */
function publishedPort(publish: readonly string[]): { container: number; host: number | undefined } | undefined {
  for (const p of publish) {
    const parts = p
      .replace(/\/\w+$/, '')
      .replace(/^\[[^\]]*\]:/, 'ip:')
      .split(':');
    const container = Number(parts[parts.length - 1]);
    const host = parts.length >= 2 ? Number(parts[parts.length - 2]) : NaN;
    if (Number.isInteger(container)) return { container, host: Number.isInteger(host) ? host : undefined };
  }
  return undefined;
}

/**
 * The model a vLLM / llama.cpp engine's new command line names becomes what it serves (a container `docker run`
 * creates, or a systemd unit started with another ExecStart=); a model the library lacks fails to load at start.
 * Ollama serves its installed models whatever its command line says.
 */
export function applyServedModel(
  state: SandboxState,
  engine: EngineSim,
  c: ContainerSim,
  cmd: readonly string[],
  entrypoint: readonly string[],
): void {
  if (engine.type === 'ollama') return;
  const named = modelOfCommand(engine.type, cmd, entrypoint);
  if (!named) return;
  const m: ServedModel = { ...named, known: Boolean(state.library[named.profile]) };
  c.serves = m;
  engine.models = m.known ? [m.served] : [];
  if (m.served !== m.profile) engine.servedFrom = { [m.served]: m.profile };
  else delete engine.servedFrom;
}

/** What `docker run -d` parsed: the container's name, image, command, environment and run flags. */
export interface RunContainerSpec extends ContainerRunSpec {
  name: string;
  image: string;
  cmd: string[];
  env: string[];
}

/**
 * `docker run -d` (or `docker create`, with start false): create, and start, a container for one of the node's
 * engines, with what the shim parsed (env merged over the image's; entrypoint null: the image's). Returns { id } or
 * { error, code } as the daemon would.
 */
export function runContainer(
  state: SandboxState,
  spec: RunContainerSpec,
  now: number,
  start = true,
): { id: string } | { error: string; code: number } {
  const existing = state.containers[spec.name];
  if (existing) {
    return {
      code: 125,
      error: `docker: Error response from daemon: Conflict. The container name "/${spec.name}" is already in use by container "${existing.id}". You have to remove (or rename) that container to be able to reuse that name.\n\nRun 'docker run --help' for more information`,
    };
  }
  const engine = engineOfContainer(state, spec.name);
  if (!engine) {
    const names = Object.values(state.engines).map((e) => e.container);
    return {
      code: 125,
      error: `docker: Error response from daemon: gpuops sandbox: node ${state.node} runs engine containers only (${names.join(', ') || 'none'}); "${spec.name}" is not one`,
    };
  }
  const defaults = IMAGE_DEFAULTS[engine.type];
  const published = publishedPort(spec.publish);
  const env = [...IMAGE_ENV];
  for (const kv of spec.env) {
    const key = kv.split('=')[0];
    const i = env.findIndex((x) => x.split('=')[0] === key);
    if (i >= 0) env[i] = kv;
    else env.push(kv);
  }
  const c: ContainerSim = {
    name: spec.name,
    id: hexOf(`${state.node}/container/${spec.name}/${now}/${Math.random()}`, 64),
    image: spec.image,
    imageId: `sha256:${hexOf(spec.image, 64)}`,
    engine: engine.name,
    createdAt: now,
    status: 'created',
    exitCode: 0,
    oomKilled: false,
    restartCount: 0,
    startedAt: 0,
    finishedAt: 0,
    pid: 0,
    // The supervisor reopens an engine's listener when the epoch changes; a new container must not repeat the old one's.
    epoch: engine.lastEpoch || 0,
    health: 'none',
    // A created, never started container stays down across reboots, as docker leaves it.
    manuallyStopped: !start,
    crashed: false,
    faults: { hang: false, cudaOom: false },
    logs: [],
    ports: {
      container: published ? published.container : defaults.port,
      host: published?.host !== undefined ? published.host : engine.port,
    },
    cmd: spec.cmd,
    env,
    run: {
      entrypoint: spec.entrypoint,
      publish: spec.publish,
      binds: spec.binds,
      gpus: spec.gpus,
      shmSize: spec.shmSize,
      ipcMode: spec.ipcMode,
      restartPolicy: spec.restartPolicy,
      networkMode: spec.networkMode,
      labels: spec.labels,
      runtime: spec.runtime,
    },
  };
  applyServedModel(state, engine, c, spec.cmd, spec.entrypoint || defaults.Entrypoint);
  state.containers[spec.name] = c;
  if (start) startContainer(state, spec.name, now);
  return { id: c.id };
}

/** `docker rm [-f]`: a running container needs force (it is killed first). Returns an error message or null. */
export function removeContainer(state: SandboxState, name: string, now: number, force: boolean): string | null {
  const c = containerOf(state, name);
  if (c.status === 'running' || c.status === 'restarting' || c.status === 'paused') {
    if (!force) {
      return `Error response from daemon: cannot remove container "/${name}": container is running: stop the container before removing or force remove`;
    }
    stopContainer(state, name, now, 137, true);
  }
  const engine = engineOfContainer(state, name);
  if (engine) {
    engine.lastEpoch = c.epoch;
    engine.loaded = [];
  }
  delete state.containers[name];
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// Finding state files

/** The state file of the node whose VM has this vmid, under a sandbox state directory (`<dir>/<node>/state.json`). */
export function findStateByVmid(dir: string, vmid: number): string | undefined {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return undefined;
  }
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const file = path.join(dir, e.name, 'state.json');
    const s = tryReadState(file);
    if (s?.vm?.vmid === vmid) return file;
  }
  return undefined;
}
