/**
 * Following a workflow to its end (`deploy --follow`, `gpuops follow`, `recover --follow`, `backup follow`): look at
 * it every second — its Query, the heartbeats of its pending activity — until its result is in.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  WorkflowFailedError,
  WorkflowNotFoundError,
  type WorkflowHandle,
  type WorkflowResultType,
} from '@temporalio/client';
import { CancelledFailure, defaultPayloadConverter, type Workflow } from '@temporalio/common';
import { optionalTsToMs } from '@temporalio/common/lib/time';
import type { GlobalOptions } from './context';
import type { TransferLine } from './output';
import { RateMeter, etaSeconds, renderProgress, type ProgressView } from './progress-bar';

/** A pending activity as the workflow's description shows it (the UI's Pending Activities). */
export interface PendingActivity {
  type: string;
  attempt: number;
  /** The first heartbeat detail ({} before the first heartbeat). */
  details: Record<string, unknown>;
  /** When the worker last heartbeated (ms since the epoch), null before it did. */
  heartbeatAt: number | null;
}

export async function pendingActivities(h: WorkflowHandle): Promise<PendingActivity[]> {
  const d = await h.describe();
  return (d.raw.pendingActivities ?? []).map((a) => {
    const payload = a.heartbeatDetails?.payloads?.[0];
    return {
      type: a.activityType?.name ?? '',
      attempt: a.attempt ?? 1,
      details: payload ? (defaultPayloadConverter.fromPayload(payload) as Record<string, unknown>) : {},
      heartbeatAt: optionalTsToMs(a.lastHeartbeatTime) ?? null,
    };
  });
}

/**
 * Look at the workflow with `tick` now and every `intervalMs` until it ends; resolves to its result. A tick that
 * fails (the workflow between tasks, no worker to answer a Query yet) is tried again at the next one. A run that
 * failed, was cancelled or timed out rejects with its reason ("deploy:n1:chat failed: …").
 */
export async function followToEnd<W extends Workflow>(
  h: WorkflowHandle<W>,
  tick: () => Promise<void>,
  intervalMs = 1000,
): Promise<WorkflowResultType<W>> {
  const done = h.result().then(
    (r) => ({ ok: true as const, r }),
    (e: unknown) => ({ ok: false as const, e }),
  );
  for (;;) {
    await tick().catch(() => undefined);
    // An unref'd wait: once the workflow is done nothing is left waiting on a timer.
    const r = await Promise.race([done, sleep(intervalMs, null, { ref: false })]);
    if (!r) continue;
    if (r.ok) return r.r;
    if (r.e instanceof WorkflowFailedError) {
      const how = r.e.cause instanceof CancelledFailure ? 'was cancelled' : 'failed';
      throw new Error(`${h.workflowId} ${how}: ${r.e.cause?.message ?? r.e.message}`);
    }
    throw r.e;
  }
}

/** The workflow must be running: a clear error names what was looked for, and how the last one ended. */
export async function requireRunning(h: WorkflowHandle, what: string): Promise<void> {
  try {
    const d = await h.describe();
    if (d.status.name !== 'RUNNING') {
      const when = d.closeTime ? ` at ${d.closeTime.toISOString()}` : '';
      throw new Error(`no ${what} is running: ${h.workflowId} ended ${d.status.name.toLowerCase()}${when}`);
    }
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new Error(`no ${what} is running (no workflow ${h.workflowId})`);
    throw err;
  }
}

const SAFE_WORD = /^[A-Za-z0-9@%+=:,./_-]+$/;

/** A word as a POSIX shell reads it back unchanged. */
export function shellWord(w: string): string {
  return SAFE_WORD.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
}

/** A gpuops command line to print for the operator to run: with the `-c` this one was given, words quoted. */
export function gpuopsCommand(globals: GlobalOptions, args: string[]): string {
  return ['gpuops', ...(globals.config ? ['-c', globals.config] : []), ...args].map(shellWord).join(' ');
}

/** Turns the samples of one transfer into {@link FollowOutput.transfer}'s lines, with a rate measured across them. */
export class TransferMeter {
  private readonly meter = new RateMeter();

  /** `key` names the transfer (a new one starts the rate over); `at`: when `done` was measured (ms). */
  line(key: string, view: Omit<ProgressView, 'rate'>, at: number): TransferLine {
    const v: ProgressView = { ...view, rate: this.meter.sample(key, view.done, at) };
    const eta = etaSeconds(v);
    return {
      event: {
        event: 'progress',
        label: v.label,
        done: v.done,
        total: v.total,
        unit: v.bytes ? 'bytes' : 'fraction',
        ratePerSecond: v.rate,
        etaSeconds: eta === null ? null : Math.ceil(eta),
      },
      render: (width) => renderProgress(v, width),
    };
  }
}
