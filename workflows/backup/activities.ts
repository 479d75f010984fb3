/**
 * The backup workflows' activity proxies, one named profile per kind of work. restic runs on the plan's node queue;
 * notifications and the Proxmox API on the control worker, which also runs these workflows.
 */
import { proxyActivities, workflowInfo, type ActivityOptions } from '@temporalio/workflow';
import type { BackupActivities } from '../../activities/backup';
import type { NotifyActivities } from '../../activities/notify';
import type { createVmConfigActivities } from '../../activities/vm-config';
import { nodeTaskQueue, type RunBackupInput } from '../../src/contracts';
import type { z } from 'zod';

type VmConfigActivities = ReturnType<typeof createVmConfigActivities>;
type Timings = z.output<typeof RunBackupInput>['timings'];

/** restic on the plan's node: `options` on top of the node's queue and the pickup timeout. */
function resticOn(node: string, pickupTimeout: string, options: Omit<ActivityOptions, 'taskQueue'>) {
  return proxyActivities<BackupActivities>({
    taskQueue: nodeTaskQueue(node),
    scheduleToStartTimeout: pickupTimeout,
    ...options,
  });
}

/** Pre-checks, listings and test restores are safe to repeat; a few tries ride out a worker restart. */
export const quickResticActivities = (node: string, t: Timings) =>
  resticOn(node, t.pickupTimeout, {
    startToCloseTimeout: '10m',
    retry: { maximumAttempts: 4, initialInterval: '1s', backoffCoefficient: 2 },
  });

/** Long, heartbeated restic work: the run and heartbeat timeouts, retried with backoff from 1 s as `retry` says. */
function longRestic(node: string, t: Timings, retry: { maximumAttempts: number; nonRetryableErrorTypes?: string[] }) {
  return resticOn(node, t.pickupTimeout, {
    startToCloseTimeout: t.runTimeout,
    heartbeatTimeout: t.heartbeatTimeout,
    retry: { initialInterval: '1s', backoffCoefficient: 2, ...retry },
  });
}

/**
 * Backup, forget and check: long, heartbeated. A killed node worker stops heartbeating: the attempt is retried on
 * the restarted worker, which unlocks restic's stale locks and reuses or redoes the snapshot (resticBackup is
 * idempotent per run).
 */
export const longResticActivities = (node: string, t: Timings) => longRestic(node, t, { maximumAttempts: 5 });

/**
 * The two merged node activities of a plan run (pre-check and backup; forget and check): the long profile, and a
 * node worker from before they existed (the SDK answers NotFoundError) is told at once, not after five tries, so the
 * run falls back to the one-step activities.
 */
export const mergedResticActivities = (node: string, t: Timings) =>
  longRestic(node, t, { maximumAttempts: 5, nonRetryableErrorTypes: ['NotFoundError'] });

/** A restore into the same target is repeatable; a non-empty target is refused, not retried. */
export const restoreActivities = (node: string, t: Timings) =>
  longRestic(node, t, { maximumAttempts: 3, nonRetryableErrorTypes: ['TargetNotEmpty'] });

/** Read-only listings for backupReport: two tries, two minutes. */
export const reportActivities = (node: string, pickupTimeout: string) =>
  resticOn(node, pickupTimeout, { startToCloseTimeout: '2m', retry: { maximumAttempts: 2 } });

/** Notifications and the Proxmox API (VM config export), on the control worker that runs this workflow. */
export function controlActivities() {
  return proxyActivities<NotifyActivities & VmConfigActivities>({
    taskQueue: workflowInfo().taskQueue,
    startToCloseTimeout: '30s',
    retry: { maximumAttempts: 3, initialInterval: '1s' },
  });
}

/** The message of an activity failure (its cause), or of any error. */
export function errMessage(err: unknown): string {
  const e = err as { cause?: { message?: string }; message?: string };
  return e.cause?.message ?? e.message ?? String(err);
}
