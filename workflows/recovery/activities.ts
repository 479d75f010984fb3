/**
 * The activity profiles of recoverNode and watchNode: one named option set per kind of call, each non-default
 * choice commented with its reason, and the proxies recoverNode acts through.
 */
import { ActivityCancellationType, proxyActivities } from '@temporalio/workflow';
import type * as controlActivities from '../../activities/control';
import type * as hypervisorActivities from '../../activities/hypervisor';
import type * as nodeActivities from '../../activities/node';
import { parseDuration } from '../../src/domain/durations';
import { hypervisorTaskQueue, nodeTaskQueue } from '../../src/contracts';

export type ControlActivities = ReturnType<typeof controlActivities.createControlActivities>;
export type NodeActivities = ReturnType<typeof nodeActivities.createNodeActivities>;
export type HypervisorActivities = ReturnType<typeof hypervisorActivities.createHypervisorActivities>;

/** Control-side calls (node facts, the budget count, router, notifications): quick and idempotent. */
export const controlCall = {
  startToCloseTimeout: '30s',
  // Visibility, the router and webhooks have blips; five tries ride them out.
  retry: { maximumAttempts: 5, initialInterval: '1s' },
} as const;

/** watchNode's node-facts look-up: retried (the default policy) until it works; a watcher without facts cannot watch. */
export const watchFacts = { startToCloseTimeout: '30s' } as const;

/**
 * Engine and GPU commands on the node that heartbeat (restartContainer, stopContainer, resetGpu beat every 5 s).
 */
export const nodeCommand = {
  // docker stop/restart wait for the engine to exit; a GPU reset can take a while.
  startToCloseTimeout: '3m',
  // Three missed beats: a node worker that died mid-command is noticed in seconds, not at startToClose, and the
  // command is retried on the worker that replaces it.
  heartbeatTimeout: '15s',
  retry: { maximumAttempts: 3, initialInterval: '1s' },
} as const;

/**
 * nodeCommand for the stops and the reset of a GPU reset: a cancelled recovery waits until they have really ended
 * (the activity hears of the cancel at its next heartbeat) before it starts the engines again, so a start never
 * races a stop or a reset still running on the node.
 */
export const nodeCommandAwaited = {
  ...nodeCommand,
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
} as const;

/** startContainer on the node: it does not heartbeat, so it gets no heartbeat timeout (a slow start is no death). */
export const nodeStart = {
  startToCloseTimeout: '3m',
  retry: { maximumAttempts: 3, initialInterval: '1s' },
} as const;

/**
 * A VM power request through the Proxmox API. Never retried automatically: a retry after a lost answer would
 * reboot twice. The workflow instead watches whether the node comes back, and falls back to a hard reset once.
 */
export const vmPowerCall = { startToCloseTimeout: '1m', retry: { maximumAttempts: 1 } } as const;

/** Waiting for a Proxmox task: it polls and heartbeats each poll, so a retry only waits again. */
export function vmTaskWait(powerTimeout: string) {
  return {
    startToCloseTimeout: parseDuration(powerTimeout) + 30_000,
    heartbeatTimeout: '30s',
    retry: { maximumAttempts: 3 },
  } as const;
}

/** `qm` power actions on the hypervisor's own worker: a node never restarts its own VM. Never retried (a reboot). */
export function qmPowerCall(hypervisor: string, powerTimeout: string) {
  return {
    taskQueue: hypervisorTaskQueue(hypervisor),
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: powerTimeout,
    retry: { maximumAttempts: 1 },
  } as const;
}

/** The proxies recoverNode acts through; node calls run on the node's own queue. */
export function recoveryActivities(input: { node: string; pickupTimeout: string; powerTimeout: string }) {
  const onNode = { taskQueue: nodeTaskQueue(input.node), scheduleToStartTimeout: input.pickupTimeout };
  return {
    control: proxyActivities<ControlActivities>(controlCall),
    node: proxyActivities<NodeActivities>({ ...nodeCommand, ...onNode }),
    nodeAwaited: proxyActivities<NodeActivities>({ ...nodeCommandAwaited, ...onNode }),
    nodeStart: proxyActivities<NodeActivities>({ ...nodeStart, ...onNode }),
    vmPower: proxyActivities<ControlActivities>(vmPowerCall),
    vmTask: proxyActivities<ControlActivities>(vmTaskWait(input.powerTimeout)),
    qm: (hypervisor: string) => proxyActivities<HypervisorActivities>(qmPowerCall(hypervisor, input.powerTimeout)),
  };
}

export type RecoveryActivities = ReturnType<typeof recoveryActivities>;
