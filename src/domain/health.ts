/**
 * Typed observations of a GPU node, as the host adapters report them. Pure data: safe to import from workflows.
 */

/** Engine kinds gpuops knows how to drive. */
export type EngineType = 'ollama' | 'vllm' | 'llamacpp';

/** State of one engine container, from `docker inspect`. */
export interface ContainerState {
  name: string;
  /** false when docker reports "No such object". */
  exists: boolean;
  /** Docker's State.Status, or 'missing' when the container does not exist. */
  status: 'created' | 'running' | 'paused' | 'restarting' | 'removing' | 'exited' | 'dead' | 'missing';
  running: boolean;
  exitCode: number;
  oomKilled: boolean;
  restartCount: number;
  /** State.Health.Status, or 'none' when the image defines no healthcheck. */
  health: 'healthy' | 'unhealthy' | 'starting' | 'none';
  image?: string;
  startedAt?: string;
  finishedAt?: string;
  /** Known fault signatures found in the container's recent logs (e.g. "CUDA out of memory"). */
  logSignals: string[];
  /** The engine (config name) that runs in this container, when the node's config says. */
  engine?: string;
  /**
   * The container of the other half of this engine's canary slot pair (config `canarySlot`), when it has one: a
   * cleanly stopped half whose partner runs is standby, not a fault.
   */
  slotPartner?: string;
}

/**
 * The driver's verdict on a GPU: NVML's GPU recovery action (field NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, drivers R565
 * and later), which nvidia-smi prints as None, Reset, Reboot, Drain P2P or Drain and Reset (NVML_GPU_RECOVERY_ACTION_
 * NONE, GPU_RESET, NODE_REBOOT, DRAIN_P2P, DRAIN_AND_RESET).
 */
export type GpuRecoveryAction = 'none' | 'reset' | 'reboot' | 'drain-p2p' | 'drain-and-reset';

/** One GPU, from `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`. Unavailable fields are null. */
export interface GpuStatus {
  index: number;
  uuid: string;
  name: string;
  pciBusId: string;
  driverVersion: string | null;
  memoryTotalMiB: number | null;
  memoryUsedMiB: number | null;
  memoryFreeMiB: number | null;
  utilizationGpuPct: number | null;
  temperatureC: number | null;
  powerDrawW: number | null;
  powerLimitW: number | null;
  /** ecc.errors.uncorrected.volatile.total; null when ECC is unsupported ([N/A]). */
  eccUncorrectedVolatile: number | null;
  /** retired_pages.pending (pre-Ampere) — "Yes" means a reset/reboot is needed to retire pages. */
  retiredPagesPending: boolean | null;
  /** remapped_rows.pending (Ampere+) — true means a GPU reset is needed to apply row remapping. */
  remappedRowsPending: boolean | null;
  /** remapped_rows.failure — true means the GPU should be serviced. */
  remappedRowsFailure: boolean | null;
  /** Active clocks_event_reasons (e.g. sw_thermal_slowdown, hw_slowdown), decoded from the bitmask. */
  clocksEventReasons: string[];
  /** true when nvidia-smi reported the GPU lost / unknown error, or fields read ERR!. */
  lost: boolean;
  /**
   * gpu_recovery_action: what the driver says the GPU needs. null when the driver does not report it (before R565,
   * [N/A]) or printed a value gpuops does not know (then `recoveryActionRaw` holds it). Absent in observations
   * recorded before gpuops read it, which classify as null.
   */
  recoveryAction?: GpuRecoveryAction | null;
  /** The driver's words when they are not a recovery action gpuops knows. */
  recoveryActionRaw?: string;
}

/** An Xid event from the kernel log (`NVRM: Xid (PCI:0000:01:00): 79, pid=..., GPU has fallen off the bus.`). */
export interface XidEvent {
  xid: number;
  pciBusId: string;
  /** Kernel timestamp as printed (seconds since boot, or ISO time with `dmesg --time-format iso`). */
  time: string;
  pid: number | null;
  processName: string | null;
  message: string;
}

/** Result of probing one engine's HTTP API. */
export interface EngineProbe {
  name: string;
  type: EngineType;
  url: string;
  /** TCP/HTTP reachable at all. */
  reachable: boolean;
  /** Health endpoint answered OK. */
  healthy: boolean;
  /** Engine answered 503 while loading a model (vLLM / llama.cpp). */
  loading: boolean;
  version: string | null;
  /** Models the engine lists (Ollama tags, /v1/models ids). */
  models: string[];
  /** Models currently loaded in VRAM (Ollama /api/ps); empty when unknown. */
  loaded: string[];
  latencyMs: number;
  /**
   * A tiny real generation, when requested: catches an engine that answers /health but hangs. `skipped`: the probe's
   * deadline left the generation less than its share (slow health/models calls), so it was not run (error says why):
   * a blind spot, not a hung engine.
   */
  generation: { ok: boolean; ms: number; error: string | null; skipped?: true } | null;
  error: string | null;
  /** The health/version call got no answer before its deadline (not refused): the engine is there but frozen. */
  unanswered?: boolean;
}

/** Free space of a node's model store. */
export interface DiskStatus {
  path: string;
  totalBytes: number;
  freeBytes: number;
}

/** Everything one probe round saw on a node. */
export interface NodeObservation {
  node: string;
  observedAt: string;
  /** false when the node worker did not pick up the probe in time (schedule-to-start timeout). */
  reachable: boolean;
  containers: ContainerState[];
  gpus: GpuStatus[];
  /** null when nvidia-smi itself failed (driver gone, GPU lost). */
  gpuError: string | null;
  xids: XidEvent[];
  engines: EngineProbe[];
  disks: DiskStatus[];
  /**
   * Probes of the round that failed or missed its deadline (their part of the observation is empty): a blind spot,
   * reported as a probe-failed warning. Absent in observations recorded before probe rounds kept partial results.
   */
  probeFailures?: ProbeFailure[];
  /**
   * The whole round failed after it was picked up (its activity timed out or failed on every attempt): nothing was
   * seen, and that is itself a critical probe-failed problem.
   */
  roundError?: string;
}

/** The single probes of a round, by their activity names. */
export type ProbeName = 'inspectContainers' | 'queryGpus' | 'readXidEvents' | 'probeEngines' | 'checkDisks';

/**
 * What a GPU query that threw or missed its deadline reads as: nvidia-smi timing out, which a hung driver (a lost GPU)
 * makes it do. A probe deadline shorter than nvidia-smi's own timeout must not turn a wedged driver into a blind spot.
 */
export const GPU_QUERY_TIMED_OUT = 'nvidia-smi timed out (a hung driver often means a lost GPU)';

/** The GPU query result of a queryGpus probe that failed with `error` (see GPU_QUERY_TIMED_OUT). */
export function failedGpuQuery(error: string): { gpus: GpuStatus[]; error: string } {
  return { gpus: [], error: `${GPU_QUERY_TIMED_OUT}: ${error}` };
}

/** One probe of a round that threw or missed the round's deadline. */
export interface ProbeFailure {
  probe: ProbeName;
  error: string;
}
