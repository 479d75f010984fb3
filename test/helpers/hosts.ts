/**
 * Builders for what the host readers report, shared by the tests that expect them (docker and systemd parsers,
 * nvidia-smi's XML reader) and the tests that feed them to the classifier.
 */
import type { ContainerState } from '../../src/domain/health';
import type { GpuSnapshotFacts } from '../../src/hosts/nvidia-smi';

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
 * What `parseSmiXml` reads for an idle Ampere workstation card (the RTX A4000 and A5000 captures): persistence mode
 * on, the power limit at its default and enforced as set, idle clocks of 210/210/405 MHz and a 2100 MHz graphics and
 * SM boost clock; only the memory boost clock differs between the models.
 */
export function idleAmpereGpu(
  gpu: Pick<GpuSnapshotFacts, 'pciBusId' | 'productName' | 'uuid' | 'powerLimitW'> & { maxMemMHz: number },
): GpuSnapshotFacts {
  const { maxMemMHz, ...id } = gpu;
  return {
    ...id,
    persistenceMode: 'Enabled',
    defaultPowerLimitW: gpu.powerLimitW,
    enforcedPowerLimitW: gpu.powerLimitW,
    clocks: { graphicsMHz: 210, smMHz: 210, memMHz: 405 },
    maxClocks: { graphicsMHz: 2100, smMHz: 2100, memMHz: maxMemMHz },
  };
}
