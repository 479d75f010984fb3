/**
 * One probe round of a node as a single activity on its queue (gpuops-node-<id>): containers, GPUs, Xid events,
 * engines and disks probed concurrently inside the node worker, returned together. A watcher then spends one
 * activity (three history events) per round instead of five, and its schedule-to-start timeout still tells "node
 * gone" (nobody picked the round up) from "engine sick" (the round ran and says so).
 */
import {
  failedGpuQuery,
  type ContainerState,
  type DiskStatus,
  type EngineProbe,
  type ProbeFailure,
  type ProbeName,
  type XidEvent,
} from '../src/domain/health';
import type { GpuQueryResult } from '../src/hosts/nvidia-smi';
import type { ProbeEnginesInput } from './engine';
import { MIN_GENERATE_TIMEOUT_MS } from '../src/domain/schemas';
import { MAX_LEAD_IN_MS } from '../src/domain/watch';
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
  /**
   * Timeout of each engine health call, ms, and the round's own deadline: every probe (the engines' calls and test
   * generations included) is cut to it, so the round answers well before its activity's start-to-close timeout.
   */
  timeoutMs: number;
  /**
   * Deadline of the test generation, ms: a hung engine costs the round this long, not a health timeout. Keep it well
   * under the probe interval; a 2-token answer from a loaded model takes milliseconds.
   */
  generateTimeoutMs: number;
  /** Only Xid events after this time (ISO) count. */
  xidSince: string;
  /**
   * Wait this long (ms ≥ 0, at most {@link MAX_LEAD_IN_MS}: a longer one is cut to it) before probing: the sub-second rest of the watcher's interval, which
   * a Temporal timer cannot wait out (the server fires none sooner than `history.timerProcessorMaxTimeShift`, 1 s by
   * default). Absent: probe at once. A node worker from before it ignores it and probes that much early.
   */
  leadInMs?: number;
}

/** What one round saw, the parts of a NodeObservation the node itself can tell. */
export interface ProbeRoundResult {
  containers: ContainerState[];
  gpu: GpuQueryResult;
  xids: XidEvent[];
  engines: EngineProbe[];
  disks: DiskStatus[];
  /**
   * Probes that threw or missed the round's deadline (their part above is empty, but a failed GPU query's gpu.error
   * reads as nvidia-smi timing out); absent when none did.
   */
  failures?: ProbeFailure[];
}

/** What the engines' probe leaves the round, ms, to answer inside the round's deadline. */
const ENGINE_MARGIN_MS = 250;

/** Smallest deadline accepted, ms: under it even a healthy engine on loopback cannot answer. */
const MIN_TIMEOUT_MS = MIN_GENERATE_TIMEOUT_MS;

/** The probeRound activity over the node worker's single probes. */
export function createProbeRoundActivities(deps: ProbeRoundDeps) {
  return {
    /**
     * Probe the whole node once: the five probes run concurrently within one deadline (timeoutMs), so the round takes
     * as long as its slowest probe and never longer. A probe that throws or misses the deadline is reported in
     * `failures`, by name; only an invalid input fails the round.
     */
    async probeRound(input: ProbeRoundInput): Promise<ProbeRoundResult> {
      for (const field of ['timeoutMs', 'generateTimeoutMs'] as const) {
        const v = input[field];
        if (!Number.isFinite(v) || v < MIN_TIMEOUT_MS) {
          throw nonRetryable('InvalidInput', `${field} must be a number ≥ ${MIN_TIMEOUT_MS} ms (got ${v})`);
        }
      }
      const lead = input.leadInMs;
      if (lead !== undefined && !(Number.isFinite(lead) && lead >= 0)) {
        throw nonRetryable('InvalidInput', `leadInMs must be a number of ms ≥ 0 (got ${lead})`);
      }
      // Capped, not refused: a control worker whose cap is higher than this node worker's must not turn healthy
      // rounds into failed ones.
      if (lead) await new Promise((resolve) => setTimeout(resolve, Math.round(Math.min(lead, MAX_LEAD_IN_MS))));
      const failures: ProbeFailure[] = [];
      // Each probe settles on its own: one that throws or misses the deadline is a failure named in the report, and
      // the other four results are kept.
      const settle = async <T>(probe: ProbeName, run: () => Promise<T>, empty: (error: string) => T): Promise<T> => {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`did not answer within the round's ${input.timeoutMs} ms`)),
            input.timeoutMs,
          );
        });
        try {
          return await Promise.race([run(), late]);
        } catch (err) {
          const error = err instanceof Error ? err.message : String(err);
          failures.push({ probe, error });
          return empty(error);
        } finally {
          clearTimeout(timer);
        }
      };
      const [containers, gpu, xids, engines, disks] = await Promise.all([
        settle(
          'inspectContainers',
          () => deps.inspectContainers(),
          () => [],
        ),
        // A GPU query cut by the round's deadline (shorter than nvidia-smi's own timeout) or that threw reads as
        // nvidia-smi timing out: a wedged driver is a lost GPU (gpu-lost, restart-vm), not a blind spot.
        settle('queryGpus', () => deps.queryGpus(), failedGpuQuery),
        settle(
          'readXidEvents',
          () => deps.readXidEvents({ since: input.xidSince }),
          () => [],
        ),
        settle(
          'probeEngines',
          () =>
            deps.probeEngines({
              generate: input.generate,
              timeoutMs: input.timeoutMs,
              generateTimeoutMs: input.generateTimeoutMs,
              budgetMs: Math.max(MIN_TIMEOUT_MS, input.timeoutMs - ENGINE_MARGIN_MS),
            }),
          () => [],
        ),
        settle(
          'checkDisks',
          () => deps.checkDisks(),
          () => [],
        ),
      ]);
      return { containers, gpu, xids, engines, disks, ...(failures.length ? { failures } : {}) };
    },
  };
}

/** The probe-round activity object. */
export type ProbeRoundActivities = ReturnType<typeof createProbeRoundActivities>;
