/**
 * deployModel's activity proxies, one named profile per kind of work. Router, reports and node facts run on the
 * control worker (the workflow's own queue); model pulls, slot loads and checks on the node's queue.
 */
import { proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type * as controlActivities from '../../activities/control';
import type * as deployActivities from '../../activities/deploy';
import type * as nodeActivities from '../../activities/node';
import { nodeTaskQueue } from '../../src/contracts';
import type { DeployInput } from './deployment';

type ControlActivities = ReturnType<typeof controlActivities.createControlActivities>;
type NodeActivities = ReturnType<typeof nodeActivities.createNodeActivities>;
type DeployActivities = ReturnType<typeof deployActivities.createDeployActivities>;

/** Router reads, weight changes, node facts, reports: quick calls, safe to repeat. */
const controlCall = {
  startToCloseTimeout: '30s',
  retry: { maximumAttempts: 5, initialInterval: '1s' },
} as const satisfies ActivityOptions;

/**
 * Synthetic traffic runs until its requests finish; a slow canary makes it slower, which is what is measured.
 * Not retried: a retry would send the whole batch again and overshoot maxSyntheticPerStep; the next analysis round
 * sends what is still missing.
 */
const syntheticBatch = { startToCloseTimeout: '5m', retry: { maximumAttempts: 1 } } as const satisfies ActivityOptions;

/**
 * One route operation with If-Match (changeRoute). A conflict — someone changed the table between the activity's
 * read and its write — is a retryable RouteConflict: the retry reads the new table and applies the operation to it.
 * Short first interval: a conflict needs a fresh read, not a wait. Other refusals (unknown alias, invalid routes,
 * wrong token) are non-retryable.
 */
const routeChange = {
  startToCloseTimeout: '30s',
  retry: { maximumAttempts: 10, initialInterval: '200ms', backoffCoefficient: 2, maximumInterval: '5s' },
} as const satisfies ActivityOptions;

/** The activities of one deployment, by profile. */
export function deploymentActivities(input: DeployInput) {
  const onNode = { taskQueue: nodeTaskQueue(input.node), scheduleToStartTimeout: input.pickupTimeout };
  return {
    control: proxyActivities<ControlActivities>(controlCall),
    traffic: proxyActivities<ControlActivities>(syntheticBatch),
    routes: proxyActivities<ControlActivities>(routeChange),
    node: proxyActivities<NodeActivities & DeployActivities>({
      ...onNode,
      // The first prompt loads the model into VRAM; every prompt has its own timeout inside.
      startToCloseTimeout: '10m',
      heartbeatTimeout: '2m',
      retry: { maximumAttempts: 3, initialInterval: '1s' },
    }),
    modelPull: proxyActivities<NodeActivities>({
      ...onNode,
      startToCloseTimeout: input.pullTimeout,
      // A stalled download (or a killed worker) fails over to a retry, which resumes from the partial blobs.
      heartbeatTimeout: input.pullHeartbeatTimeout,
      retry: {
        maximumAttempts: 10,
        initialInterval: '1s',
        maximumInterval: '30s',
        nonRetryableErrorTypes: ['DiskFull'],
      },
    }),
  };
}

/** The proxies a deployment's stages call. */
export type DeploymentActivities = ReturnType<typeof deploymentActivities>;
