/**
 * One round of health probes on a node's pinned queue, classified into a health report. Shared by inspectNode,
 * watchNode and recoverNode (workflow code: deterministic, activities only through proxies).
 */
import {
  ActivityFailure,
  ApplicationFailure,
  TimeoutFailure,
  patched,
  proxyActivities,
  type ActivityOptions,
} from '@temporalio/workflow';
import type { ProbeRoundResult } from '../activities/probe-round';
import type * as nodeActivities from '../activities/node';
import { classifyNode, type HealthReport } from '../src/domain/classify';
import { parseDuration } from '../src/domain/durations';
import type { NodeObservation } from '../src/domain/health';
import { nodeTaskQueue } from '../src/contracts';
import { workflowMetrics } from './metrics';

type NodeActivities = ReturnType<typeof nodeActivities.createNodeActivities>;

export interface ProbeOptions {
  /** Run a tiny real generation on each engine (catches a hung engine that still answers /health). */
  generate: boolean;
  /** GPUs the node should show; fewer means one fell off the bus. */
  expectedGpus?: number | undefined;
  /** Only Xid events after this time (ISO) count. */
  xidSince: string;
  /** How long the node worker has to pick up a probe before the node counts as unreachable. */
  pickupTimeout: string;
  /** How long one probe may run once picked up. */
  probeTimeout: string;
}

/** true when the activity failed because no node worker picked it up in time. */
export function notPickedUp(err: unknown): boolean {
  return (
    err instanceof ActivityFailure &&
    err.cause instanceof TimeoutFailure &&
    err.cause.timeoutType === 'SCHEDULE_TO_START'
  );
}

/**
 * true when the activity failed because the worker that picked it up does not register its type: a node worker from
 * before the activity existed (the SDK answers NotFoundError). The failure is in history, so a decision on it replays.
 */
export function activityNotRegistered(err: unknown): boolean {
  return (
    err instanceof ActivityFailure && err.cause instanceof ApplicationFailure && err.cause.type === 'NotFoundError'
  );
}

/**
 * The patch after which a probe round that fails is a report, not the watcher's end: an old node worker without
 * probeRound gets the five single probes, and a round that timed out or failed on every attempt is a critical
 * probe-failed problem. It also gives the test generation its old default deadline back (see watchNode).
 */
export const ROUND_SAFETY_PATCH = 'watch-probe-round-safety';

export async function probeNode(node: string, opts: ProbeOptions): Promise<HealthReport> {
  const probeMs = parseDuration(opts.probeTimeout);
  const acts = proxyActivities<NodeActivities>(probeProfile(node, opts));

  let reachable = true;
  const guard = async <T>(p: Promise<T>, empty: T): Promise<T> => {
    try {
      return await p;
    } catch (err) {
      if (notPickedUp(err)) {
        reachable = false;
        return empty;
      }
      throw err;
    }
  };
  const [containers, gpu, xids, engines, disks] = await Promise.all([
    guard(acts.inspectContainers(), []),
    guard(acts.queryGpus(), { gpus: [], error: null }),
    guard(acts.readXidEvents({ since: opts.xidSince }), []),
    guard(acts.probeEngines({ generate: opts.generate, timeoutMs: healthTimeoutMs(probeMs) }), []),
    guard(acts.checkDisks(), []),
  ]);

  return classifyRound(node, reachable, { containers, gpu, xids, engines, disks }, opts);
}

/** Options of probeNodeRound: a probe round's, and the test generation's own deadline. */
export interface RoundOptions extends ProbeOptions {
  /** How long an engine's 2-token test generation may take before the engine counts as hung this round, ms. */
  generateTimeoutMs: number;
}

const EMPTY_ROUND: ProbeRoundResult = {
  containers: [],
  gpu: { gpus: [], error: null },
  xids: [],
  engines: [],
  disks: [],
};

/**
 * One probe round as ONE activity (probeRound) on the node's queue, which runs the five probes concurrently there.
 * Same report as probeNode; a round that no node worker picks up in time reads as an unreachable node.
 */
export async function probeNodeRound(node: string, opts: RoundOptions): Promise<HealthReport> {
  const probeMs = parseDuration(opts.probeTimeout);
  const acts = proxyActivities<NodeActivities>(roundProfile(node, opts));
  try {
    const round = await acts.probeRound({
      generate: opts.generate,
      timeoutMs: healthTimeoutMs(probeMs),
      generateTimeoutMs: Math.min(opts.generateTimeoutMs, healthTimeoutMs(probeMs)),
      xidSince: opts.xidSince,
    });
    return classifyRound(node, true, round, opts);
  } catch (err) {
    if (notPickedUp(err)) return classifyRound(node, false, EMPTY_ROUND, opts);
    // Runs recorded before the patch failed here (and ended); they replay that way.
    if (!patched(ROUND_SAFETY_PATCH)) throw err;
    // Mixed versions during an upgrade: this node's worker predates probeRound, so this round is five single probes.
    if (activityNotRegistered(err)) return probeNode(node, opts);
    const cause = err instanceof ActivityFailure ? err.cause : undefined;
    if (cause instanceof TimeoutFailure || cause instanceof ApplicationFailure) {
      const why = cause instanceof TimeoutFailure ? `timed out (${cause.timeoutType})` : cause.message;
      return classifyRound(node, true, { ...EMPTY_ROUND, roundError: `probeRound ${why}` }, opts);
    }
    throw err;
  }
}

/** probeRound's profile: a probe's, and a worker without it (NotFoundError) is told at once, not after retries. */
function roundProfile(node: string, opts: ProbeOptions): ActivityOptions {
  const profile = probeProfile(node, opts);
  return { ...profile, retry: { ...profile.retry, nonRetryableErrorTypes: ['NotFoundError'] } };
}

/** Each engine health call's timeout within a probe: the probe's own, less time to send the answer back. */
function healthTimeoutMs(probeMs: number): number {
  return Math.max(1000, probeMs - 2000);
}

function probeProfile(node: string, opts: ProbeOptions): ActivityOptions {
  return {
    taskQueue: nodeTaskQueue(node),
    // Not picked up in time = the node (or its worker) is down: a different fault from a sick engine.
    scheduleToStartTimeout: opts.pickupTimeout,
    // Engine probes bound their own HTTP calls; this only catches a worker that died mid-probe.
    startToCloseTimeout: parseDuration(opts.probeTimeout) + 5_000,
    // A probe is read-only, so a retry after a killed worker is always safe; three tries keep a report timely.
    retry: { maximumAttempts: 3, initialInterval: '500ms', backoffCoefficient: 2 },
  };
}

/** Classify what a round saw (and count it in the worker's metrics). */
function classifyRound(
  node: string,
  reachable: boolean,
  round: ProbeRoundResult & { roundError?: string },
  opts: ProbeOptions,
): HealthReport {
  const { containers, gpu, xids, engines, disks, failures, roundError } = round;
  const observation: NodeObservation = {
    node,
    observedAt: new Date(Date.now()).toISOString(),
    reachable,
    containers,
    gpus: gpu.gpus,
    gpuError: gpu.error,
    xids,
    engines,
    disks,
    ...(failures?.length ? { probeFailures: failures } : {}),
    ...(roundError !== undefined ? { roundError } : {}),
  };
  const report = classifyNode(observation, opts.expectedGpus === undefined ? {} : { expectedGpus: opts.expectedGpus });
  // Metrics go to the worker's exporter, not into history: no command, and nothing is recorded on replay.
  const metrics = workflowMetrics();
  metrics.add('probeRounds', { node, outcome: !reachable ? 'unreachable' : report.healthy ? 'healthy' : 'unhealthy' });
  for (const p of report.problems) metrics.add('probeProblems', { node, kind: p.kind });
  return report;
}
