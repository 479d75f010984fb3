/**
 * inspectNode — one round of health probes on a node, run ON the node (its pinned task queue), classified into a
 * typed health report. The smallest workflow that proves the whole path: control worker → node worker → host
 * tools (docker, nvidia-smi, kernel log, engine HTTP) → pure classification.
 */
import {
  ActivityFailure,
  TimeoutFailure,
  proxyActivities,
  setCurrentDetails,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import { z } from 'zod';
import type * as nodeActivities from '../activities/node';
import { classifyNode, type HealthReport } from '../src/domain/classify';
import type { NodeObservation } from '../src/domain/health';
import { parseDuration } from '../src/domain/durations';
import { parseInput } from '../src/domain/validation';
import { SEARCH_ATTRIBUTES, nodeTaskQueue } from '../src/messages';

type NodeActivities = ReturnType<typeof nodeActivities.createNodeActivities>;

export const InspectNodeInput = z.strictObject({
  /** Node id from gpuops.yaml. */
  node: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, { message: 'must be a node id from gpuops.yaml' }),
  /** Also run a tiny real generation on each engine (catches an engine that answers /health but hangs). */
  generate: z.boolean().default(true),
  /** GPUs the node should show; fewer means one fell off the bus. */
  expectedGpus: z.int().min(0).optional(),
  /** Only Xid events after this time (ISO) count; default: the last 10 minutes. */
  xidSince: z.string().optional(),
  /** How long the node worker has to pick up a probe before the node counts as unreachable. */
  pickupTimeout: z
    .string()
    .regex(/^\d+(ms|s|m)$/, { message: 'must be a duration such as 500ms, 30s or 5m' })
    .default('30s'),
  /** How long one probe may run once picked up. */
  probeTimeout: z
    .string()
    .regex(/^\d+(ms|s|m)$/, { message: 'must be a duration such as 500ms, 30s or 5m' })
    .default('20s'),
});
export type InspectNodeInput = z.input<typeof InspectNodeInput>;

/** true when the activity failed because no node worker picked it up in time. */
function notPickedUp(err: unknown): boolean {
  return (
    err instanceof ActivityFailure &&
    err.cause instanceof TimeoutFailure &&
    err.cause.timeoutType === 'SCHEDULE_TO_START'
  );
}

/**
 * Probe a node and return its health report: engines, containers, GPUs, Xid events, disks, and the classified
 * problems with the recovery rung each calls for. Start it from the UI or:
 * `temporal workflow start --type inspectNode --task-queue gpuops-control --input '{"node":"sandbox-1"}'`.
 */
export async function inspectNode(rawInput: InspectNodeInput): Promise<HealthReport> {
  const input = parseInput(InspectNodeInput, rawInput, 'inspectNode input');
  upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.node, value: input.node }]);
  setCurrentDetails(`Probing node **${input.node}** on queue \`${nodeTaskQueue(input.node)}\``);

  const probeMs = parseDuration(input.probeTimeout);
  const acts = proxyActivities<NodeActivities>({
    taskQueue: nodeTaskQueue(input.node),
    // Not picked up in time = the node (or its worker) is down: a different fault from a sick engine.
    scheduleToStartTimeout: input.pickupTimeout,
    // Engine probes bound their own HTTP calls; this only catches a worker that died mid-probe.
    startToCloseTimeout: probeMs + 5_000,
    // A probe is read-only, so a retry after a killed worker is always safe; three tries keep a report timely.
    retry: { maximumAttempts: 3, initialInterval: '500ms', backoffCoefficient: 2 },
  });

  const since = input.xidSince ?? new Date(Date.now() - 10 * 60_000).toISOString();
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
    guard(acts.readXidEvents({ since }), []),
    guard(acts.probeEngines({ generate: input.generate, timeoutMs: Math.max(1000, probeMs - 2000) }), []),
    guard(acts.checkDisks(), []),
  ]);

  const observation: NodeObservation = {
    node: input.node,
    observedAt: new Date(Date.now()).toISOString(),
    reachable,
    containers,
    gpus: gpu.gpus,
    gpuError: gpu.error,
    xids,
    engines,
    disks,
  };
  const report = classifyNode(
    observation,
    input.expectedGpus === undefined ? {} : { expectedGpus: input.expectedGpus },
  );
  setCurrentDetails(
    `Node **${input.node}**: ${report.healthy ? 'healthy' : 'UNHEALTHY'}; recommended rung: ${report.recommendedRung}` +
      (report.problems.length
        ? `\n\n${report.problems.map((p) => `- ${p.kind} (${p.subject}): ${p.detail}`).join('\n')}`
        : ''),
  );
  return report;
}
