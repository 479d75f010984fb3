/**
 * Small helpers over the Temporal activity context that also work outside an activity (unit tests, the CLI calling
 * a factory directly): heartbeats become no-ops and cancellation never fires.
 */
import { asyncLocalStorage } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { gpuopsMetrics } from '../src/metrics/definitions';
import { recordOnRuntime } from '../src/metrics/runtime';

/** Heartbeat with progress details, when running inside an activity. */
export function heartbeat(details?: unknown): void {
  asyncLocalStorage.getStore()?.heartbeat(details);
}

/** The activity's cancellation signal (aborts when the workflow cancels it or heartbeats time out), if any. */
export function cancellationSignal(): AbortSignal | undefined {
  return asyncLocalStorage.getStore()?.cancellationSignal;
}

/** Details of the last heartbeat of a previous attempt (for resuming long activities), if any. */
export function lastHeartbeatDetails<T>(): T | undefined {
  return asyncLocalStorage.getStore()?.info.heartbeatDetails as T | undefined;
}

/**
 * gpuops's metric families, recorded on the worker's Runtime meter (its /metrics) with the activity's namespace,
 * task_queue and activity_type; nowhere outside an activity.
 */
export function activityMetrics(): ReturnType<typeof gpuopsMetrics> {
  const info = asyncLocalStorage.getStore()?.info;
  return gpuopsMetrics((key, labels, value) => {
    if (!info) return;
    const sdkTags = { namespace: info.namespace, task_queue: info.taskQueue, activity_type: info.activityType };
    recordOnRuntime(key, labels, value, sdkTags);
  });
}

/** Warn through the activity logger when inside an activity, else to stderr. */
export function warn(message: string, attrs: Record<string, unknown> = {}): void {
  const ctx = asyncLocalStorage.getStore();
  if (ctx) ctx.log.warn(message, attrs);
  else console.warn(message, attrs);
}

/**
 * A failure no retry can fix (bad input, a container gpuops is not configured to touch). `type` lets workflows
 * match it; the message says what to change.
 */
export function nonRetryable(type: string, message: string, details?: unknown): ApplicationFailure {
  return ApplicationFailure.create({
    type,
    message,
    nonRetryable: true,
    ...(details === undefined ? {} : { details: [details] }),
  });
}

/**
 * Run `work`, heartbeating `details` every `everyMs` while it runs, so a long host command (a VM shutdown, a GPU
 * reset) is not mistaken for a dead worker and a cancellation is delivered promptly.
 */
export async function withHeartbeat<T>(details: unknown, work: () => Promise<T>, everyMs = 5000): Promise<T> {
  heartbeat(details);
  const timer = setInterval(() => heartbeat(details), everyMs);
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}
