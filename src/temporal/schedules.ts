/**
 * `gpuops schedules sync`: make the Temporal Schedules `backup:<plan>` match gpuops.yaml's backup plans. Creates the
 * missing, updates those whose definition changed, deletes those whose plan is gone, and leaves the rest alone, so
 * running it twice changes nothing. Only schedules whose id starts with "backup:" are ever touched. A schedule's
 * paused state belongs to the operator (CLI, UI or `temporal schedule toggle`): sync never changes it.
 */
import { createHash } from 'node:crypto';
import {
  ScheduleNotFoundError,
  ScheduleOverlapPolicy,
  type Client,
  type ScheduleOptions,
  type ScheduleOptionsStartWorkflowAction,
} from '@temporalio/client';
import { optionalTsToMs } from '@temporalio/common/lib/time';
import type { BackupPlanConfig, Config } from '../config/schema';
import { CONTROL_TASK_QUEUE, RunBackupInput, runBackupWorkflow, workflowIds } from '../contracts';
import { byteSize } from '../domain/schemas';
import { parseOrThrow } from '../domain/validation';

/** Prefix of every schedule gpuops owns. */
export const BACKUP_SCHEDULE_PREFIX = 'backup:';

/** A schedule as the list shows it: enough to sync and to list, nothing decoded. */
export interface ListedSchedule {
  scheduleId: string;
  paused: boolean;
  nextActionTimes: Date[];
  lastActionAt: Date | null;
}

/**
 * The namespace's schedules whose ids start with `prefix`, read from the raw list: the SDK's list decodes every
 * schedule's memo and search attributes, so one it cannot decode (another application's, or encrypted with a key this
 * client lacks: "Unknown encoding: binary/encrypted") would stop the whole listing, and with it `schedules sync`.
 */
export async function* listSchedules(client: Client, prefix: string): AsyncGenerator<ListedSchedule> {
  let nextPageToken: Uint8Array | undefined;
  do {
    const page = await client.workflowService.listSchedules({
      namespace: client.options.namespace,
      maximumPageSize: 1000,
      ...(nextPageToken ? { nextPageToken } : {}),
    });
    for (const e of page.schedules ?? []) {
      if (!e.scheduleId?.startsWith(prefix)) continue;
      const toDate = (ms: number | undefined): Date | null => (ms === undefined ? null : new Date(ms));
      yield {
        scheduleId: e.scheduleId,
        paused: e.info?.paused === true,
        nextActionTimes: (e.info?.futureActionTimes ?? []).flatMap((t) => toDate(optionalTsToMs(t)) ?? []),
        lastActionAt: toDate(optionalTsToMs(e.info?.recentActions?.at(-1)?.actualTime)),
      };
    }
    nextPageToken = page.nextPageToken?.length ? page.nextPageToken : undefined;
  } while (nextPageToken);
}
/** Action memo key holding the hash of the definition sync last wrote. */
const HASH_MEMO = 'gpuopsDefinitionHash';

/** What one sync did, by schedule id. */
export interface SyncResult {
  created: string[];
  updated: string[];
  deleted: string[];
  unchanged: string[];
}

/** Options of syncSchedules. */
export interface SyncOptions {
  /** Queue the scheduled workflows run on (default gpuops-control). */
  taskQueue?: string;
  /**
   * Only schedules whose id starts with this are candidates for deletion (default "backup:"); must itself start with
   * "backup:". Lets two gpuops installs (or parallel tests) share a namespace without deleting each other's.
   */
  idPrefix?: string;
  /** Report what would change without changing it. */
  dryRun?: boolean;
  /** Extra workflow input fields (tests pass short timings). */
  inputOverrides?: Partial<RunBackupInput>;
  /**
   * Longest one scheduled run may take (its workflowExecutionTimeout, default 1d). A run is one attempt; the next
   * scheduled one is the retry (and pauseOnFailure can stop the series).
   */
  executionTimeout?: string;
}

/** runBackup's input for a plan: the plan without its schedule, and the node's VM for vm-config plans. */
export function backupInputFor(config: Config, plan: BackupPlanConfig): RunBackupInput {
  const { schedule: _schedule, minFree, ...rest } = plan;
  const vm = config.nodes.find((n) => n.id === plan.node)?.vm;
  return {
    plan: { ...rest, ...(minFree !== undefined ? { minFreeBytes: byteSize(minFree) } : {}) },
    ...(plan.what === 'vm-config' && vm ? { vm } : {}),
  };
}

/**
 * The schedule gpuops wants for a plan, with its hash. The hash is taken over the very options create and update
 * send (everything but the hash itself), so a change to any of them — spec, policies, the action's input, summary,
 * timeouts, memo — reaches an existing schedule, with nothing to keep in step by hand.
 */
export function desiredSchedule(
  config: Config,
  plan: BackupPlanConfig,
  opts: SyncOptions = {},
): {
  options: ScheduleOptions<ScheduleOptionsStartWorkflowAction<(i: RunBackupInput) => Promise<unknown>>>;
  hash: string;
} {
  const s = plan.schedule;
  const input: RunBackupInput = { ...backupInputFor(config, plan), ...opts.inputOverrides };
  // What a schedule starts is checked as `gpuops backup run` checks it: an input runBackup would refuse (credentials
  // in a repository URL) never reaches a schedule's stored action, whichever caller asked for the sync.
  parseOrThrow(RunBackupInput, input, `runBackup input for plan ${plan.id}`);
  const scheduleId = workflowIds.backupSchedule(plan.id);
  const options = {
    scheduleId,
    spec: {
      ...(s.cron ? { cronExpressions: [s.cron] } : {}),
      ...(s.every ? { intervals: [{ every: s.every }] } : {}),
      timezone: s.timezone,
      ...(s.jitter ? { jitter: s.jitter } : {}),
    },
    action: {
      type: 'startWorkflow' as const,
      workflowType: runBackupWorkflow.workflowType,
      taskQueue: opts.taskQueue ?? CONTROL_TASK_QUEUE,
      // Temporal appends the scheduled time: runs are backup:<plan>-<time>.
      workflowId: scheduleId,
      args: [input],
      staticSummary: `Backup ${plan.id} (${plan.what}) of node ${plan.node}`,
      workflowExecutionTimeout: opts.executionTimeout ?? '1d',
    },
    policies: {
      // Never two runs of a plan at once: a run still going when the next is due makes that one skip.
      overlap: ScheduleOverlapPolicy.SKIP,
      catchupWindow: s.catchupWindow,
      pauseOnFailure: s.pauseOnFailure,
    },
    memo: { gpuopsPlan: plan.id },
  } satisfies ScheduleOptions<ScheduleOptionsStartWorkflowAction<(i: RunBackupInput) => Promise<unknown>>>;
  const hash = createHash('sha256').update(JSON.stringify(options)).digest('hex').slice(0, 16);
  return { hash, options: { ...options, action: { ...options.action, memo: { [HASH_MEMO]: hash } } } };
}

/** Make the backup schedules match the config. Idempotent; never touches a schedule outside `idPrefix`. */
export async function syncSchedules(client: Client, config: Config, opts: SyncOptions = {}): Promise<SyncResult> {
  const prefix = opts.idPrefix ?? BACKUP_SCHEDULE_PREFIX;
  if (!prefix.startsWith(BACKUP_SCHEDULE_PREFIX)) {
    throw new Error(`idPrefix must start with "${BACKUP_SCHEDULE_PREFIX}" (got "${prefix}")`);
  }
  const result: SyncResult = { created: [], updated: [], deleted: [], unchanged: [] };
  const wanted = new Set<string>();
  // Every plan is checked before any schedule changes: one bad plan stops the sync, not the sync halfway through.
  const desired = config.backups.map((plan) => desiredSchedule(config, plan, opts));
  for (const { options, hash } of desired) {
    const sid = options.scheduleId;
    if (!sid.startsWith(prefix)) continue;
    wanted.add(sid);
    const handle = client.schedule.getHandle(sid);
    // describe, not list: listing is eventually consistent, and a just-created schedule may not show up yet.
    let current: Awaited<ReturnType<typeof handle.describe>> | null = null;
    try {
      current = await handle.describe();
    } catch (err) {
      if (!(err instanceof ScheduleNotFoundError)) throw err;
    }
    if (!current) {
      if (!opts.dryRun) await client.schedule.create(options);
      result.created.push(sid);
      continue;
    }
    const currentHash = current.action.type === 'startWorkflow' ? current.action.memo?.[HASH_MEMO] : undefined;
    if (currentHash === hash) {
      result.unchanged.push(sid);
      continue;
    }
    if (!opts.dryRun) {
      // Everything create sent but the schedule's own memo, which Temporal sets at creation only (it holds the plan
      // id, which the schedule id holds too, so it cannot differ).
      await handle.update((prev) => ({
        ...prev,
        spec: options.spec,
        action: options.action,
        policies: options.policies ?? {},
        // Paused or not, and the note, are the operator's.
        state: prev.state,
      }));
    }
    result.updated.push(sid);
  }
  for await (const s of listSchedules(client, prefix)) {
    if (wanted.has(s.scheduleId)) continue;
    if (!opts.dryRun) {
      try {
        await client.schedule.getHandle(s.scheduleId).delete();
      } catch (err) {
        if (!(err instanceof ScheduleNotFoundError)) throw err;
        continue; // deleted already (list lags behind)
      }
    }
    result.deleted.push(s.scheduleId);
  }
  return result;
}

/** "created backup:a; updated backup:b" — or "no changes". */
export function describeSync(r: SyncResult): string {
  const parts = [
    r.created.length ? `created ${r.created.join(', ')}` : '',
    r.updated.length ? `updated ${r.updated.join(', ')}` : '',
    r.deleted.length ? `deleted ${r.deleted.join(', ')}` : '',
  ].filter((p) => p !== '');
  return parts.length ? parts.join('; ') : `no changes (${r.unchanged.length} schedule(s) up to date)`;
}
