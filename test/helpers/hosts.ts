/**
 * Builders for what the host readers report, shared by the tests that expect them (docker and systemd parsers,
 * nvidia-smi's XML reader) and the tests that feed them to the classifier.
 */
import type { ContainerState, GpuStatus } from '../../src/domain/health';
import type { GpuSnapshotFacts } from '../../src/hosts/nvidia-smi';
import type { ProbeRoundDeps } from '../../activities/probe-round';

/** A running, healthy-by-default container named "ollama" that never restarted; `over` sets what a test is about. */
export const containerState = (over: Partial<ContainerState> = {}): ContainerState => ({
  name: 'ollama',
  exists: true,
  status: 'running',
  running: true,
  exitCode: 0,
  oomKilled: false,
  restartCount: 0,
  health: 'none',
  logSignals: [],
  ...over,
});

/**
 * An A4000 at 00000000:01:00.0 as `--query-gpu` reports it, lightly loaded and healthy, with no recovery action field
 * (as observations recorded before gpuops read it); `over` sets what a test is about.
 */
export const gpuStatus = (over: Partial<GpuStatus> = {}): GpuStatus => ({
  index: 0,
  uuid: 'GPU-1',
  name: 'NVIDIA RTX A4000',
  pciBusId: '00000000:01:00.0',
  driverVersion: '550.120',
  memoryTotalMiB: 16376,
  memoryUsedMiB: 5000,
  memoryFreeMiB: 11376,
  utilizationGpuPct: 10,
  temperatureC: 50,
  powerDrawW: 40,
  powerLimitW: 140,
  eccUncorrectedVolatile: 0,
  retiredPagesPending: null,
  remappedRowsPending: false,
  remappedRowsFailure: false,
  clocksEventReasons: [],
  lost: false,
  ...over,
});

/**
 * What `parseSmiXml` reads for an idle Ampere workstation card (the RTX A4000 and A5000 captures): persistence mode
 * on, the power limit at its default and enforced as set, idle clocks of 210/210/405 MHz and a 2100 MHz graphics and
 * SM boost clock; only the memory boost clock differs between the models.
 */
export function idleAmpereGpu(
  gpu: Pick<GpuSnapshotFacts, 'pciBusId' | 'productName' | 'uuid' | 'powerLimitW'> & {
    maxMemMHz: number;
    /** The driver's verdict; null (the default) where the document has no `<gpu_recovery_action>`. */
    recoveryAction?: GpuSnapshotFacts['recoveryAction'];
  },
): GpuSnapshotFacts {
  const { maxMemMHz, recoveryAction = null, ...id } = gpu;
  return {
    ...id,
    recoveryAction,
    persistenceMode: 'Enabled',
    defaultPowerLimitW: gpu.powerLimitW,
    enforcedPowerLimitW: gpu.powerLimitW,
    clocks: { graphicsMHz: 210, smMHz: 210, memMHz: 405 },
    maxClocks: { graphicsMHz: 2100, smMHz: 2100, memMHz: maxMemMHz },
  };
}

/** Healthy single probes for a probe round's tests (one GPU-less, engine-less node); a test replaces what it is about. */
export const healthyProbes = (): ProbeRoundDeps => ({
  inspectContainers: () => Promise.resolve([]),
  queryGpus: () => Promise.resolve({ gpus: [], error: null }),
  readXidEvents: () => Promise.resolve([]),
  probeEngines: () => Promise.resolve([]),
  checkDisks: () => Promise.resolve([{ path: '/models', totalBytes: 100e9, freeBytes: 50e9 }]),
});
