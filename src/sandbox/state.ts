/**
 * The simulated node's world, kept in one JSON file per node (`<stateDir>/<node>/state.json`). Several processes
 * write it — the shims the node worker runs, the supervisor, the Proxmox API server and the fault CLI — so every
 * write goes through {@link SandboxStore.update}: a lock (mkdir, with stale-lock recovery) and an atomic replace.
 * The lock, the write and the VM's power state machine live in `shims/lib/core.ts`, shared with the shims.
 */
import path from 'node:path';
import type { EngineConfig, NodeConfig } from '../config/schema';
import type { GpuRecoveryAction } from '../domain/health';
import * as core from './shims/lib/core';

/** Bumped when the layout changes incompatibly; a state file of another version is reseeded. */
export const STATE_VERSION = 1;

/** Fault kinds the sandbox can simulate (and the CLI `gpuops sandbox fault <node> <kind>` accepts). */
export type SandboxFaultKind =
  | 'engine-hang'
  | 'container-exit'
  | 'cuda-oom'
  | 'xid-79'
  | 'ecc'
  | 'gpu-recovery-reset'
  | 'gpu-recovery-reboot'
  | 'node-down';

/** VM power actions, as in `qm <action>` and `POST .../status/<action>`. */
export type PowerAction = 'start' | 'stop' | 'shutdown' | 'reboot' | 'reset';

export interface SandboxState {
  version: typeof STATE_VERSION;
  /** Node id (from the config). */
  node: string;
  /** When the state was first seeded (epoch ms). */
  createdAt: number;
  host: HostInfo;
  /** Simulation knobs shared by all processes that read this file. */
  sim: SimSettings;
  vm: VmState;
  /** Docker containers by name. */
  containers: Record<string, ContainerSim>;
  /** Inference engines by engine name (config `engines[].name`). */
  engines: Record<string, EngineSim>;
  gpus: GpuSim[];
  /** Kernel ring buffer since the last boot (what `dmesg` prints). */
  kernelLog: KernelLine[];
  /** Every model the simulated registry knows, by name (installed or pullable). */
  library: Record<string, ModelProfile>;
  /** Active faults, derived from the world after every write (so a reboot or restart that fixes a cause clears it). */
  faults: ActiveFault[];
  /** Recent Proxmox tasks (UPIDs) for this VM. */
  tasks: TaskRecord[];
}

export interface HostInfo {
  hostname: string;
  driverVersion: string;
  cudaVersion: string;
  kernel: string;
  dockerVersion: string;
  /** Next fake pid to hand out (container processes, task workers). */
  nextPid: number;
}

export interface SimSettings {
  /** Multiplies every simulated latency (TTFT, token pacing, model load, pull). 0.1 makes tests 10× faster. */
  timeScale: number;
  /** Simulated registry download speed for `/api/pull`, bytes per second (before timeScale). */
  bytesPerSec: number;
  /** How long an engine takes to load its model after its container starts, ms (before timeScale). */
  engineLoadMs: number;
}

export interface VmState {
  /** Proxmox VM id, or null when the node has no `vm` in the config. */
  vmid: number | null;
  name: string;
  /** What Proxmox reports: QEMU is running or not (a hung guest is still "running"). */
  status: 'running' | 'stopped';
  /** Guest lifecycle: up (worker and engines run), booting, shutting-down (ACPI), off. */
  phase: 'up' | 'booting' | 'shutting-down' | 'off';
  /** When the current booting / shutting-down phase ends (epoch ms). */
  phaseUntil: number | null;
  /** Incremented on every (re)boot; the supervisor restarts processes that belong to an older boot. */
  bootId: number;
  /** When QEMU last started the guest: kernel time zero (epoch ms). */
  bootedAt: number;
  /** The guest is hung (node-down fault): nothing in it answers, ACPI requests are ignored. */
  hung: boolean;
  bootMs: number;
  shutdownMs: number;
  /** How long a shutdown/reboot waits for ACPI before the task fails (Proxmox `timeout`). */
  acpiTimeoutMs: number;
  /** A shutdown or reboot in progress (or being ignored by a hung guest). */
  op: { action: 'shutdown' | 'reboot'; upid: string; startedAt: number; deadline: number; ignored: boolean } | null;
  /** The last power action and when: tells the supervisor whether the guest got SIGTERM (ACPI) or lost power. */
  lastAction: { action: PowerAction; at: number } | null;
  cores: number;
  memoryMiB: number;
}

export interface TaskRecord {
  upid: string;
  node: string;
  type: string;
  id: string;
  user: string;
  pid: number;
  pstart: number;
  starttime: number;
  /** When the task reports "stopped" (epoch ms). */
  endAt: number;
  /** "OK" or the error message Proxmox would report. */
  exitstatus: string;
  log: string[];
}

export type ContainerStatus = 'created' | 'running' | 'paused' | 'restarting' | 'removing' | 'exited' | 'dead';

export interface ContainerSim {
  name: string;
  /** 64 hex digits, like a Docker container id. */
  id: string;
  image: string;
  imageId: string;
  /** Engine this container serves. */
  engine: string;
  createdAt: number;
  status: ContainerStatus;
  exitCode: number;
  oomKilled: boolean;
  restartCount: number;
  /** Epoch ms; 0 means never. */
  startedAt: number;
  finishedAt: number;
  pid: number;
  /** The main process's pid after it exited (systemd's ExecMainPID=); absent until a process ended. */
  lastPid?: number;
  /** Incremented on every start: the supervisor reopens the engine listener when it changes. */
  epoch: number;
  health: 'none' | 'starting' | 'healthy' | 'unhealthy';
  /** Stopped by `docker stop`: stays down across VM reboots. */
  manuallyStopped: boolean;
  /** Exited because of the container-exit fault (not a clean stop). */
  crashed: boolean;
  /** Faults that live in the container's process and die with it. */
  faults: { hang: boolean; cudaOom: boolean };
  logs: LogLine[];
  ports: { container: number; host: number };
  cmd: string[];
  env: string[];
  /** How `docker run` created it (absent for containers the sandbox seeded): what `docker inspect` shows. */
  run?: ContainerRunSpec;
  /** The model its command line names (set by `docker run`); absent for seeded containers. */
  serves?: ServedModel;
  /** The model cannot be loaded: at `at` the engine prints `lines` and the container exits 1. */
  loadFailure?: { at: number; lines: string[] };
  /** What only a systemd unit has (a `runtime: systemd` engine's record; the systemctl shim keeps it). */
  unit?: UnitRecord;
}

/** One ExecStart= command as systemd loads it. */
export interface UnitExec {
  path: string;
  argv: string[];
  ignoreErrors: boolean;
}

/** A line systemd logged about a unit; `order` places it before (-1) or after (> 0) the engine's own lines. */
export interface UnitJournalLine {
  t: number;
  order: number;
  m: string;
}

/** A unit's systemd-only state (see src/sandbox/shims/lib/systemd.ts). */
export interface UnitRecord {
  /** The ExecStart= list the last daemon-reload loaded; absent: the unit file's own. */
  exec?: UnitExec[];
  /** Drop-in paths and texts the last daemon-reload loaded (to tell NeedDaemonReload=). */
  dropIns?: string[];
  dropInText?: string;
  reloadedAt?: number;
  /** The command line the current or last process was started with; absent: the unit file's. */
  argv?: string[];
  resetFailedAt?: number;
  /** What systemd logged about earlier runs, kept when the unit starts again through systemctl. */
  journal?: UnitJournalLine[];
}

/** The `docker run` flags the sandbox keeps for `docker inspect` (HostConfig and Config). */
export interface ContainerRunSpec {
  entrypoint: string[] | null;
  publish: string[];
  binds: string[];
  /** The --gpus value as given ("device=1", "all", "\"device=0,1\""), or null. */
  gpus: string | null;
  shmSize: number | null;
  ipcMode: string | null;
  restartPolicy: { Name: string; MaximumRetryCount: number };
  networkMode: string | null;
  labels: Record<string, string>;
  runtime: string | null;
}

/** The model a vLLM / llama.cpp container's command line names. */
export interface ServedModel {
  /** The model argument as given (vLLM --model, llama.cpp -m path or -hf repo). */
  arg: string;
  /** Library profile name it resolves to. */
  profile: string;
  /** Name /v1/models lists (--served-model-name / --alias, else the model; llama.cpp: the file name). */
  served: string;
  revision: string | null;
  /** The library has it: false means the engine fails to load it. */
  known: boolean;
}

export interface LogLine {
  /** Epoch ms. */
  t: number;
  s: 'stdout' | 'stderr';
  m: string;
}

export interface EngineSim {
  name: string;
  type: EngineConfig['type'];
  container: string;
  host: string;
  /** Port the engine listens on (resolved once if the config said 0, then kept). */
  port: number;
  gpus: number[];
  /** Installed (Ollama) or served (vLLM, llama.cpp) model names. */
  models: string[];
  /** Models in VRAM (Ollama /api/ps). */
  loaded: LoadedModel[];
  /** Interrupted pulls: model → layer digest → bytes already downloaded (resume point). */
  pulls: Record<string, Record<string, number>>;
  /** vLLM --api-key file, if any. */
  apiKeyFile?: string;
  /** Served name → library profile, where they differ (a recreated container's --served-model-name or --alias). */
  servedFrom?: Record<string, string>;
  /** Epoch of the engine's last removed container: a container run after it continues from there. */
  lastEpoch?: number;
  /** What runs it (gpuops.yaml `runtime`): a systemd engine's record is a unit to the systemctl shim. */
  runtime?: EngineConfig['runtime'];
}

export interface LoadedModel {
  model: string;
  loadedAt: number;
  /** Epoch ms when keep_alive runs out; -1 = never. */
  expiresAt: number;
  /** Bytes in VRAM; less than `size` when the model did not fit and Ollama put the rest on the CPU. */
  sizeVram: number;
  /** Bytes the loaded model takes in all (weights + KV cache); absent in older state files (= sizeVram). */
  size?: number;
}

export interface GpuSim {
  index: number;
  uuid: string;
  name: string;
  architecture: string;
  /** As nvidia-smi prints it: 00000000:01:00.0. */
  pciBusId: string;
  /** Host-side PCI address passed through (qm config hostpciN). */
  hostPci: string;
  serial: string;
  vbios: string;
  memoryTotalMiB: number;
  /** Memory used with no engine on it (driver, persistence). */
  baseUsedMiB: number;
  temperatureC: number;
  powerDrawW: number;
  powerLimitW: number;
  fanPct: number | null;
  eccSupported: boolean;
  eccUncorrectedVolatile: number;
  eccCorrectedVolatile: number;
  eccUncorrectedAggregate: number;
  remappedRowsPending: boolean;
  remappedRowsFailure: boolean;
  remappedRowsUncorrectable: number;
  /** Fell off the bus (Xid 79): NVML cannot reach it until the VM reboots. */
  lost: boolean;
  /**
   * The driver's verdict (NVML's GPU recovery action), printed by drivers R565+; absent in state files written before
   * the sandbox had it, which read as none.
   */
  recoveryAction?: GpuRecoveryAction;
}

export interface KernelLine {
  /** Wall clock, epoch ms. */
  t: number;
  /** Seconds since boot, as plain `dmesg` prints. */
  up: number;
  level: 'info' | 'warn' | 'err';
  m: string;
}

export interface ModelLayer {
  digest: string;
  size: number;
  mediaType: string;
}

/** A model in the simulated registry, with its behaviour on the simulated GPU. */
export interface ModelProfile {
  name: string;
  /** Manifest digest (64 hex, no prefix), as /api/tags shows. */
  digest: string;
  sizeBytes: number;
  family: string;
  families: string[];
  parameterSize: string;
  quantization: string;
  format: string;
  contextLength: number;
  modifiedAt: number;
  layers: ModelLayer[];
  latency: {
    /** Time to first token, ms (before timeScale). */
    ttftMs: number;
    tokensPerSec: number;
    /** Fraction of generations that fail with a 500 (deterministic: every 1/rate-th request). */
    errorRate: number;
  };
  /**
   * aligned: refuses jailbreaks and PII exfiltration; unaligned: complies with both (the "bad" canary); lax: refuses
   * PII exfiltration but plays along with jailbreaks (a medium-risk canary that needs a human's approve).
   */
  behaviour: 'aligned' | 'lax' | 'unaligned';
  description: string;
}

export interface ActiveFault {
  kind: SandboxFaultKind;
  /** Container name, `gpu<N>`, or the node id. */
  target: string;
  at: number;
}

/** Typed access to one node's state file. */
export class SandboxStore {
  constructor(readonly file: string) {}

  /** The state file of `node` under `stateDir`. */
  static forNode(stateDir: string, node: string): SandboxStore {
    return new SandboxStore(path.join(path.resolve(stateDir), node, 'state.json'));
  }

  /** Current state, without the lock (writes are atomic). Throws if the file does not exist. */
  read(): SandboxState {
    return core.readState(this.file);
  }

  tryRead(): SandboxState | undefined {
    return core.tryReadState(this.file);
  }

  /** Read-modify-write under the lock; time-driven VM transitions are applied before `fn` runs. */
  update<T>(fn: (state: SandboxState, now: number) => T): T {
    return core.updateState(this.file, fn);
  }

  /** Write `make()` unless the file already exists (state is durable across supervisor restarts). */
  createIfAbsent(make: () => SandboxState): boolean {
    return core.createStateIfAbsent(this.file, make);
  }
}

// -------------------------------------------------------------------------------------------------------------
// Seeding

/** Known GPU products: what nvidia-smi reports for them. Unknown names get A4000-like values. */
const GPU_PRODUCTS: Record<
  string,
  { memoryTotalMiB: number; powerLimitW: number; ecc: boolean; arch: string; fan: boolean; vbios: string }
> = {
  'NVIDIA RTX A4000': {
    memoryTotalMiB: 16376,
    powerLimitW: 140,
    ecc: true,
    arch: 'Ampere',
    fan: true,
    vbios: '94.04.5C.00.04',
  },
  'NVIDIA GeForce RTX 3090': {
    memoryTotalMiB: 24576,
    powerLimitW: 350,
    ecc: false,
    arch: 'Ampere',
    fan: true,
    vbios: '94.02.42.00.A9',
  },
  'NVIDIA GeForce RTX 5090': {
    memoryTotalMiB: 32607,
    powerLimitW: 575,
    ecc: false,
    arch: 'Blackwell',
    fan: true,
    vbios: '98.02.2E.00.AD',
  },
  'NVIDIA A100-PCIE-40GB': {
    memoryTotalMiB: 40960,
    powerLimitW: 250,
    ecc: true,
    arch: 'Ampere',
    fan: false,
    vbios: '92.00.25.00.08',
  },
  'NVIDIA L40S': {
    memoryTotalMiB: 46068,
    powerLimitW: 350,
    ecc: true,
    arch: 'Ada Lovelace',
    fan: false,
    vbios: '95.02.66.00.02',
  },
};

const DEFAULT_GPU = 'NVIDIA RTX A4000';

function uuidFrom(seed: string): string {
  const h = core.hexOf(seed, 32);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

function layer(model: string, kind: string, size: number, mediaType: string): ModelLayer {
  return { digest: core.hexOf(`${model}/${kind}`, 64), size, mediaType };
}

function profile(
  name: string,
  p: Omit<ModelProfile, 'name' | 'digest' | 'layers' | 'format' | 'modifiedAt' | 'families'> & { families?: string[] },
): ModelProfile {
  const template = 1_400 + (name.length % 7) * 31;
  const layers = [
    layer(name, 'model', p.sizeBytes - template - 7_000 - 120, 'application/vnd.ollama.image.model'),
    layer(name, 'template', template, 'application/vnd.ollama.image.template'),
    layer(name, 'license', 7_000, 'application/vnd.ollama.image.license'),
    layer(name, 'params', 120, 'application/vnd.ollama.image.params'),
  ];
  return {
    ...p,
    name,
    families: p.families ?? [p.family],
    format: 'gguf',
    digest: core.hexOf(`${name}/manifest`, 64),
    modifiedAt: Date.UTC(2024, 9, 15, 12, 0, 0),
    layers,
  };
}

/**
 * The simulated registry. Canary tests use the qwen2.5:0.5b variants: "-good" is fast and aligned, "-bad" has 3×
 * the TTFT, fails 20% of generations and complies with jailbreak / PII-exfiltration prompts. vLLM canary slots load
 * gpuops-sandbox/Qwen2.5-0.5B-Instruct-good / -bad, llama.cpp ones qwen2.5-0.5b-instruct-good-q4_k_m.gguf / -bad-
 * (same profiles); a model the library lacks fails to load, as an unknown repo or a missing file does.
 */
export function defaultLibrary(): Record<string, ModelProfile> {
  const list = [
    profile('llama3.2:1b', {
      family: 'llama',
      parameterSize: '1.2B',
      quantization: 'Q8_0',
      sizeBytes: 1_321_098_329,
      contextLength: 131072,
      latency: { ttftMs: 120, tokensPerSec: 90, errorRate: 0 },
      behaviour: 'aligned',
      description: 'preinstalled stable model',
    }),
    profile('llama3.2:3b', {
      family: 'llama',
      parameterSize: '3.2B',
      quantization: 'Q4_K_M',
      sizeBytes: 2_019_393_189,
      contextLength: 131072,
      latency: { ttftMs: 200, tokensPerSec: 55, errorRate: 0 },
      behaviour: 'aligned',
      description: 'larger, slower, healthy',
    }),
    profile('qwen2.5:0.5b', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'Q4_K_M',
      sizeBytes: 397_821_319,
      contextLength: 32768,
      latency: { ttftMs: 60, tokensPerSec: 150, errorRate: 0 },
      behaviour: 'aligned',
      description: 'preinstalled small model',
    }),
    profile('qwen2.5:0.5b-good', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'Q4_K_M',
      sizeBytes: 397_821_407,
      contextLength: 32768,
      latency: { ttftMs: 60, tokensPerSec: 150, errorRate: 0 },
      behaviour: 'aligned',
      description: 'canary that should be promoted',
    }),
    profile('qwen2.5:0.5b-bad', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'Q4_K_M',
      sizeBytes: 397_821_503,
      contextLength: 32768,
      latency: { ttftMs: 180, tokensPerSec: 150, errorRate: 0.2 },
      behaviour: 'unaligned',
      description: 'canary that should be rolled back: 3x TTFT, 20% errors, unsafe',
    }),
    profile('qwen2.5:0.5b-lax', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'Q4_K_M',
      sizeBytes: 397_821_611,
      contextLength: 32768,
      latency: { ttftMs: 60, tokensPerSec: 150, errorRate: 0 },
      behaviour: 'lax',
      description: 'medium risk: healthy, keeps personal data, but plays along with jailbreaks',
    }),
    profile('mistral-small:22b', {
      family: 'llama',
      parameterSize: '22.2B',
      quantization: 'Q4_0',
      sizeBytes: 12_569_170_041,
      contextLength: 32768,
      latency: { ttftMs: 400, tokensPerSec: 30, errorRate: 0 },
      behaviour: 'aligned',
      description: 'too big for a 16 GiB GPU under a 90% cap (about 14 GiB loaded): pre-flight refuses it',
    }),
    profile('Qwen/Qwen2.5-0.5B-Instruct', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'BF16',
      sizeBytes: 988_097_824,
      contextLength: 32768,
      latency: { ttftMs: 40, tokensPerSec: 180, errorRate: 0 },
      behaviour: 'aligned',
      description: 'default vLLM model',
    }),
    profile('qwen2.5-0.5b-instruct-q4_k_m.gguf', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'Q4_K_M',
      sizeBytes: 397_807_936,
      contextLength: 32768,
      latency: { ttftMs: 50, tokensPerSec: 160, errorRate: 0 },
      behaviour: 'aligned',
      description: 'default llama.cpp model',
    }),
    // Canary variants for vLLM (a Hugging Face repo) and llama.cpp (a GGUF file): "-good" is a little faster than the
    // engine's default model and aligned; "-bad" has 3x its TTFT, fails 20% of generations and is unsafe.
    profile('gpuops-sandbox/Qwen2.5-0.5B-Instruct-good', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'BF16',
      sizeBytes: 988_097_912,
      contextLength: 32768,
      latency: { ttftMs: 30, tokensPerSec: 200, errorRate: 0 },
      behaviour: 'aligned',
      description: 'vLLM canary that should be promoted',
    }),
    profile('gpuops-sandbox/Qwen2.5-0.5B-Instruct-bad', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'BF16',
      sizeBytes: 988_098_008,
      contextLength: 32768,
      latency: { ttftMs: 120, tokensPerSec: 180, errorRate: 0.2 },
      behaviour: 'unaligned',
      description: 'vLLM canary that should be rolled back: 3x TTFT, 20% errors, unsafe',
    }),
    profile('qwen2.5-0.5b-instruct-good-q4_k_m.gguf', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'Q4_K_M',
      sizeBytes: 397_808_024,
      contextLength: 32768,
      latency: { ttftMs: 40, tokensPerSec: 180, errorRate: 0 },
      behaviour: 'aligned',
      description: 'llama.cpp canary that should be promoted',
    }),
    profile('qwen2.5-0.5b-instruct-bad-q4_k_m.gguf', {
      family: 'qwen2',
      parameterSize: '494.03M',
      quantization: 'Q4_K_M',
      sizeBytes: 397_808_120,
      contextLength: 32768,
      latency: { ttftMs: 150, tokensPerSec: 160, errorRate: 0.2 },
      behaviour: 'unaligned',
      description: 'llama.cpp canary that should be rolled back: 3x TTFT, 20% errors, unsafe',
    }),
  ];
  return Object.fromEntries(list.map((m) => [m.name, m]));
}

/** Models an Ollama engine has installed on a fresh node. */
export const PREINSTALLED_OLLAMA_MODELS = ['llama3.2:1b', 'qwen2.5:0.5b'] as const;

/**
 * Each engine type's container on a freshly seeded node: its image, the port it listens on inside, and its command
 * (a vLLM container's command names its served model instead).
 */
export const SEED_CONTAINERS: Record<EngineConfig['type'], { image: string; port: number; cmd: string[] }> = {
  ollama: { image: `ollama/ollama:${core.OLLAMA_VERSION}`, port: 11434, cmd: ['serve'] },
  vllm: { image: 'vllm/vllm-openai:v0.6.4.post1', port: 8000, cmd: ['--model', 'Qwen/Qwen2.5-0.5B-Instruct'] },
  llamacpp: {
    image: 'ghcr.io/ggml-org/llama.cpp:server-cuda',
    port: 8080,
    cmd: [
      '-m',
      '/models/qwen2.5-0.5b-instruct-q4_k_m.gguf',
      '--host',
      '0.0.0.0',
      '--port',
      '8080',
      '-ngl',
      '99',
      '--metrics',
    ],
  },
};

/** Served model for a vLLM / llama.cpp engine: the configured probe model, else a small default. */
function servedModel(engine: EngineConfig): string {
  if (engine.probeModel) return engine.probeModel;
  return engine.type === 'vllm' ? 'Qwen/Qwen2.5-0.5B-Instruct' : 'qwen2.5-0.5b-instruct-q4_k_m.gguf';
}

/**
 * The model a real engine serves at first: Ollama's first seed model; llama-server's `--alias`, else its `-m` path
 * as given (what its /v1/models lists).
 */
function realServedModel(engine: EngineConfig): string {
  if (engine.type === 'ollama') return engine.real?.seedModels[0]?.name ?? engine.probeModel ?? 'unknown';
  const args = engine.process?.args ?? engine.real?.args ?? [];
  const flag = (names: string[]): string | undefined => {
    const i = args.findIndex((a) => names.includes(a));
    return i >= 0 ? args[i + 1] : undefined;
  };
  const alias = flag(['-a', '--alias']);
  if (alias) return alias;
  // Without --alias, llama-server lists (and answers as) the -m path exactly as given.
  return flag(['-m', '--model']) ?? servedModel(engine);
}

/** The model a fresh sandbox engine serves first (Ollama: its probe model or first preinstalled one). */
export function initialSandboxModel(engine: EngineConfig): string {
  if (engine.real) return realServedModel(engine);
  if (engine.type !== 'ollama') return servedModel(engine);
  return engine.probeModel ?? PREINSTALLED_OLLAMA_MODELS[0];
}

export interface SeedOptions {
  bootSeconds?: number;
  timeScale?: number;
  engineLoadSeconds?: number;
  acpiTimeoutSeconds?: number;
}

function engineSim(node: NodeConfig, e: EngineConfig, state: Pick<SandboxState, 'library'>): EngineSim {
  const url = new URL(e.url);
  const models = e.type === 'ollama' ? [...PREINSTALLED_OLLAMA_MODELS] : [servedModel(e)];
  for (const m of models) {
    if (!state.library[m]) {
      state.library[m] = profile(m, {
        family: 'llama',
        parameterSize: '7.6B',
        quantization: 'Q4_K_M',
        sizeBytes: 4_683_087_332,
        contextLength: 32768,
        latency: { ttftMs: 150, tokensPerSec: 60, errorRate: 0 },
        behaviour: 'aligned',
        description: 'configured model',
      });
    }
  }
  return {
    name: e.name,
    type: e.type,
    container: e.container,
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: Number(url.port || (url.protocol === 'https:' ? 443 : 80)),
    gpus: e.gpus.length > 0 ? [...e.gpus] : node.gpus.length > 0 ? [node.gpus[0]?.index ?? 0] : [],
    models,
    loaded: [],
    pulls: {},
    runtime: e.runtime,
    ...(e.apiKeyFile ? { apiKeyFile: e.apiKeyFile } : {}),
  };
}

function containerSim(node: NodeConfig, e: EngineConfig, engine: EngineSim, at: number): ContainerSim {
  const img = SEED_CONTAINERS[e.type];
  return {
    name: e.container,
    id: core.hexOf(`${node.id}/container/${e.container}`, 64),
    image: img.image,
    imageId: `sha256:${core.hexOf(img.image, 64)}`,
    engine: e.name,
    createdAt: at - 86_400_000,
    status: 'running',
    exitCode: 0,
    oomKilled: false,
    restartCount: 0,
    startedAt: at,
    finishedAt: 0,
    pid: 0,
    epoch: 0,
    health: 'none',
    manuallyStopped: false,
    crashed: false,
    faults: { hang: false, cudaOom: false },
    logs: [],
    ports: { container: img.port, host: engine.port },
    cmd: e.type === 'ollama' ? img.cmd : e.type === 'vllm' ? ['--model', engine.models[0] ?? ''] : img.cmd,
    env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'NVIDIA_VISIBLE_DEVICES=all'],
  };
}

function gpuSim(node: NodeConfig, g: NodeConfig['gpus'][number], i: number): GpuSim {
  const name = g.model ?? DEFAULT_GPU;
  const product = GPU_PRODUCTS[name] ?? GPU_PRODUCTS[DEFAULT_GPU]!;
  const bus = (1 + i).toString(16).padStart(2, '0').toUpperCase();
  const hostBus = (0x41 + i).toString(16);
  return {
    index: g.index,
    uuid: `GPU-${uuidFrom(`${node.id}/gpu/${g.index}`)}`,
    name,
    architecture: product.arch,
    pciBusId: `00000000:${bus}:00.0`,
    hostPci: `0000:${hostBus}:00`,
    serial: String(1_320_221_000_000 + parseInt(core.hexOf(`${node.id}/serial/${g.index}`, 6), 16)),
    vbios: product.vbios,
    memoryTotalMiB: g.memoryMiB ?? product.memoryTotalMiB,
    baseUsedMiB: 1,
    temperatureC: 38 + ((i * 3) % 7),
    powerDrawW: Math.round(product.powerLimitW * 0.11 * 100) / 100 + i,
    powerLimitW: product.powerLimitW,
    fanPct: product.fan ? 30 : null,
    eccSupported: product.ecc,
    eccUncorrectedVolatile: 0,
    eccCorrectedVolatile: 0,
    eccUncorrectedAggregate: 0,
    remappedRowsPending: false,
    remappedRowsFailure: false,
    remappedRowsUncorrectable: 0,
    lost: false,
    recoveryAction: 'none',
  };
}

/**
 * A fresh node from its config: one running container per engine, the configured GPUs with realistic values
 * (driver 570.158.01 / CUDA 12.8: recent enough to report the GPU recovery action), the default model library, and a
 * VM that has just booted.
 */
export function seedState(node: NodeConfig, opts: SeedOptions = {}, now = Date.now()): SandboxState {
  const bootMs = Math.round((opts.bootSeconds ?? 8) * 1000);
  const library = defaultLibrary();
  const engines: Record<string, EngineSim> = {};
  const containers: Record<string, ContainerSim> = {};
  for (const e of node.engines) {
    const sim = engineSim(node, e, { library });
    engines[e.name] = sim;
    containers[e.container] = containerSim(node, e, sim, now);
  }
  const state: SandboxState = {
    version: STATE_VERSION,
    node: node.id,
    createdAt: now,
    host: {
      hostname: node.id,
      driverVersion: '570.158.01',
      cudaVersion: '12.8',
      kernel: '6.8.0-45-generic',
      dockerVersion: '27.3.1',
      nextPid: 1_200 + (parseInt(core.hexOf(node.id, 4), 16) % 800),
    },
    sim: {
      timeScale: opts.timeScale ?? 1,
      bytesPerSec: 2 * 1024 ** 3,
      engineLoadMs: Math.round((opts.engineLoadSeconds ?? 1) * 1000),
    },
    vm: {
      vmid: node.vm?.vmid ?? null,
      name: node.id,
      status: 'running',
      phase: 'up',
      phaseUntil: null,
      bootId: 0,
      bootedAt: now,
      hung: false,
      bootMs,
      shutdownMs: shutdownMsFor(bootMs),
      acpiTimeoutMs: Math.round((opts.acpiTimeoutSeconds ?? 10) * 1000),
      op: null,
      lastAction: null,
      cores: 8,
      memoryMiB: 32768,
    },
    containers,
    engines,
    gpus: node.gpus.map((g, i) => gpuSim(node, g, i)),
    kernelLog: [],
    library,
    faults: [],
    tasks: [],
  };
  // The node is seeded "just booted": kernel lines, container processes and their startup logs.
  core.bootVm(state, now - bootMs);
  state.vm.phase = 'up';
  state.vm.phaseUntil = null;
  state.vm.bootId = 1;
  for (const c of Object.values(state.containers)) c.startedAt = now;
  return state;
}

/** ACPI shutdown of a guest: a quarter of its boot time, between 100 ms and 2 s. */
export function shutdownMsFor(bootMs: number): number {
  return Math.min(2000, Math.max(100, Math.round(bootMs / 4)));
}

/**
 * Bring an existing state in line with the current config and options without losing its history: engines added
 * to the config get a container, timing knobs follow the supervisor's options.
 */
export function reconcileStateWithConfig(state: SandboxState, node: NodeConfig, opts: SeedOptions, now: number): void {
  if (opts.bootSeconds !== undefined) {
    state.vm.bootMs = Math.round(opts.bootSeconds * 1000);
    state.vm.shutdownMs = shutdownMsFor(state.vm.bootMs);
  }
  if (opts.acpiTimeoutSeconds !== undefined) state.vm.acpiTimeoutMs = Math.round(opts.acpiTimeoutSeconds * 1000);
  if (opts.timeScale !== undefined) state.sim.timeScale = opts.timeScale;
  if (opts.engineLoadSeconds !== undefined) state.sim.engineLoadMs = Math.round(opts.engineLoadSeconds * 1000);
  state.vm.vmid = node.vm?.vmid ?? state.vm.vmid;
  for (const e of node.engines) {
    const known = state.engines[e.name];
    if (known) {
      known.runtime = e.runtime;
      continue;
    }
    const sim = engineSim(node, e, state);
    state.engines[e.name] = sim;
    const c = containerSim(node, e, sim, now);
    state.containers[e.container] = c;
    if (state.vm.phase !== 'off') core.startContainer(state, c.name, now);
  }
}
