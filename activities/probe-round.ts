/**
 * One probe round of a node as a single activity on its queue (gpuops-node-<id>): containers, GPUs, Xid events,
 * engines and disks probed concurrently inside the node worker, returned together. A watcher then spends one
 * activity (three history events) per round instead of five, and its schedule-to-start timeout still tells "node
 * gone" (nobody picked the round up) from "engine sick" (the round ran and says so).
 */
import type { ContainerState, DiskStatus, EngineProbe, XidEvent } from '../src/domain/health';
import type { GpuQueryResult } from '../src/hosts/nvidia-smi';
import type { ProbeEnginesInput } from './engine';
import { nonRetryable } from './activity-context';

/** The single probes a round is made of (the node worker's own activity functions). */
export interface ProbeRoundDeps {
  inspectContainers: () => Promise<ContainerState[]>;
  queryGpus: () => Promise<GpuQueryResult>;
  readXidEvents: (input: { since?: string }) => Promise<XidEvent[]>;
  probeEngines: (input: ProbeEnginesInput) => Promise<EngineProbe[]>;
  checkDisks: () => Promise<DiskStatus[]>;
}

/** Input of probeRound. */
export interface ProbeRoundInput {
  /** Run a tiny real generation on each engine (catches a hung engine that still answers /health). */
  generate: boolean;
  /** Timeout of each engine health call, ms. */
  timeoutMs: number;
  /**
   * Deadline of the test generation, ms: a hung engine costs the round this long, not a health timeout. Keep it well
   * under the probe interval; a 2-token answer from a loaded model takes milliseconds.
   */
  generateTimeoutMs: number;
  /** Only Xid events after this time (ISO) count. */
  xidSince: string;
}

/** What one round saw, the parts of a NodeObservation the node itself can tell. */
export interface ProbeRoundResult {
  containers: ContainerState[];
  gpu: GpuQueryResult;
  xids: XidEvent[];
  engines: EngineProbe[];
  disks: DiskStatus[];
}

/** Smallest deadline accepted, ms: under it even a healthy engine on loopback cannot answer. */
const MIN_TIMEOUT_MS = 50;

/** The probeRound activity over the node worker's single probes. */
export function createProbeRoundActivities(deps: ProbeRoundDeps) {
  return {
    /**
     * Probe the whole node once: the five probes run concurrently, so the round takes as long as its slowest probe.
     * A probe that throws fails the round (Temporal retries it: every probe is read-only).
     */
    async probeRound(input: ProbeRoundInput): Promise<ProbeRoundResult> {
      for (const field of ['timeoutMs', 'generateTimeoutMs'] as const) {
        const v = input[field];
        if (!Number.isFinite(v) || v < MIN_TIMEOUT_MS) {
          throw nonRetryable('InvalidInput', `${field} must be a number ≥ ${MIN_TIMEOUT_MS} ms (got ${v})`);
        }
      }
      const [containers, gpu, xids, engines, disks] = await Promise.all([
        deps.inspectContainers(),
        deps.queryGpus(),
        deps.readXidEvents({ since: input.xidSince }),
        deps.probeEngines({
          generate: input.generate,
          timeoutMs: input.timeoutMs,
          generateTimeoutMs: input.generateTimeoutMs,
        }),
        deps.checkDisks(),
      ]);
      return { containers, gpu, xids, engines, disks };
    },
  };
}

/** The probe-round activity object. */
export type ProbeRoundActivities = ReturnType<typeof createProbeRoundActivities>;
