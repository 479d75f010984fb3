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
import { failedGpuQuery, type NodeObservation, type ProbeFailure, type ProbeName } from '../src/domain/health';
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
  /** How long each engine's test generation may take, ms (default: the engine probe's health timeout). */
  generateTimeoutMs?: number | undefined;
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
  const failures: ProbeFailure[] = [];
  const guard = async <T>(probe: ProbeName, p: Promise<T>, empty: T, failed: (error: string) => T = () => empty) => {
    try {
      return await p;
    } catch (err) {
      if (notPickedUp(err)) {
        reachable = false;
        return empty;
      }
      // Since the patch a probe that timed out or failed on every attempt is a blind spot in the report (as in a
      // probe round), not the caller's end: recoverNode's diagnosis of a wedged node, or a watcher's old-worker round.
      const error = probeFailureMessage(err);
      if (error === null || !patched(ROUND_SAFETY_PATCH)) throw err;
      failures.push({ probe, error });
      return failed(error);
    }
  };
  const [containers, gpu, xids, engines, disks] = await Promise.all([
    guard('inspectContainers', acts.inspectContainers(), []),
    guard('queryGpus', acts.queryGpus(), { gpus: [], error: null }, failedGpuQuery),
    guard('readXidEvents', acts.readXidEvents({ since: opts.xidSince }), []),
    guard(
      'probeEngines',
      acts.probeEngines({
        generate: opts.generate,
        timeoutMs: healthTimeoutMs(probeMs),
        ...(opts.generateTimeoutMs !== undefined
          ? { generateTimeoutMs: Math.min(opts.generateTimeoutMs, healthTimeoutMs(probeMs)) }
          : {}),
      }),
      [],
    ),
    guard('checkDisks', acts.checkDisks(), []),
  ]);
  // Every probe failed: nothing was seen, as when a whole round fails.
  const roundError =
    failures.length === PROBE_COUNT ? `every probe failed (${failures[0]?.probe}: ${failures[0]?.error})` : undefined;
  return classifyRound(
    node,
    reachable,
    {
      containers,
      gpu,
      xids,
      engines,
      disks,
      ...(failures.length ? { failures } : {}),
      ...(roundError !== undefined ? { roundError } : {}),
    },
    opts,
  );
}

/** The single probes a round is made of. */
const PROBE_COUNT = 5;

/**
 * Why a probe activity failed, when it is a probe's own failure (timed out or failed on every attempt); null for
 * anything else (a cancellation), which the caller rethrows.
 */
function probeFailureMessage(err: unknown): string | null {
  const cause = err instanceof ActivityFailure ? err.cause : undefined;
  if (cause instanceof TimeoutFailure) return `timed out (${cause.timeoutType})`;
  if (cause instanceof ApplicationFailure) return cause.message;
  return null;
}

/** Options of probeNodeRound: a probe round's, and the test generation's own deadline. */
export interface RoundOptions extends ProbeOptions {
  /** How long an engine's 2-token test generation may take before the engine counts as hung this round, ms. */
  generateTimeoutMs: number;
  /** How long the round waits on the node before probing, ms (probeRound's `leadInMs`); 0 or absent: none. */
  leadInMs?: number;
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
  const lead = opts.leadInMs ? Math.round(opts.leadInMs) : 0;
  const profile = roundProfile(node, opts);
  // The lead-in is spent on the node worker, inside the activity's start-to-close.
  if (lead > 0) profile.startToCloseTimeout = Number(profile.startToCloseTimeout) + lead;
  const acts = proxyActivities<NodeActivities>(profile);
  try {
    const round = await acts.probeRound({
      generate: opts.generate,
      timeoutMs: healthTimeoutMs(probeMs),
      generateTimeoutMs: Math.min(opts.generateTimeoutMs, healthTimeoutMs(probeMs)),
      xidSince: opts.xidSince,
      ...(lead > 0 ? { leadInMs: lead } : {}),
    });
    return classifyRound(node, true, round, opts);
  } catch (err) {
    if (notPickedUp(err)) return classifyRound(node, false, EMPTY_ROUND, opts);
    // Runs recorded before the patch failed here (and ended); they replay that way.
    if (!patched(ROUND_SAFETY_PATCH)) throw err;
    // Mixed versions during an upgrade: this node's worker predates probeRound, so this round is five single probes
    // (each one's failure a blind spot in the report, never the watcher's end).
    if (activityNotRegistered(err)) return probeNode(node, opts);
    const why = probeFailureMessage(err);
    if (why !== null) return classifyRound(node, true, { ...EMPTY_ROUND, roundError: `probeRound ${why}` }, opts);
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
