/**
 * `gpuops backup status|run|restore` and `gpuops schedules sync|list|pause|resume|trigger`. Each validates its
 * arguments (exit 2 with the field named) and prints a table, or JSON with --json.
 */
import type { Client, WorkflowHandle } from '@temporalio/client';
import { z } from 'zod';
import { loadConfig, type LoadedConfig } from '../config/load';
import type { BackupPlanConfig, Config } from '../config/schema';
import { formatAge, rpoStatus, type RpoStatus } from '../domain/rpo';
import { parseOrThrow, ValidationError } from '../domain/validation';
import {
  BackupReportInput,
  CONTROL_TASK_QUEUE,
  RestoreBackupInput,
  RunBackupInput,
  SEARCH_ATTRIBUTES,
  backupReportWorkflow,
  getBackupRecordQuery,
  restoreBackupWorkflow,
  runBackupWorkflow,
  workflowIds,
  type BackupRecord,
  type RestoreRecord,
  type WorkflowOf,
} from '../contracts';
import {
  backupInputFor,
  describeSync,
  listSchedules,
  syncSchedules,
  BACKUP_SCHEDULE_PREFIX,
} from '../temporal/schedules';
import { executeWorkflow, startWorkflow, workflowHandle } from '../temporal/workflows';
import { withClient, withInputs, workflowInput, type GlobalOptions, type Program } from './context';
import { followToEnd, pendingActivities, TransferMeter } from './follow';
import { emit, FollowOutput, table } from './output';

/** One row of `gpuops backup status`. */
export interface PlanStatus extends RpoStatus {
  node: string;
  what: string;
  rpo: string;
  snapshots: number;
  repositorySizeBytes: number | null;
  /** Last completed runBackup that verified (restic check), and whether it passed. */
  lastVerify: { at: string; ok: boolean } | null;
  error: string | null;
}

const planId = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, { message: 'must be a backup plan id' });

/** The plan named on the command line, or a ValidationError listing the plans there are. */
export function requirePlan(config: Config, plan: string): BackupPlanConfig {
  parseOrThrow(z.object({ plan: planId }), { plan }, 'argument');
  const p = config.backups.find((b) => b.id === plan);
  if (!p) {
    throw new ValidationError('argument', [
      `plan: must be one of ${config.backups.map((b) => b.id).join(', ') || '(no plans in gpuops.yaml)'} (got "${plan}")`,
    ]);
  }
  return p;
}

/** Options shared by the commands (tests point them at their own queue). */
export interface BackupCliOptions {
  taskQueue?: string;
  /** Now, for RPO ages (tests). */
  now?: number;
  timings?: { pickupTimeout?: string; heartbeatTimeout?: string };
}

/** Is `workflowId` a run of `plan`: its schedule's (`backup:<plan>-<time>`) or a manual one (`backup:<plan>:manual-…`)? */
function isRunOf(plan: string, workflowId: string): boolean {
  const prefix = workflowIds.backupSchedule(plan);
  if (!workflowId.startsWith(prefix)) return false;
  const rest = workflowId.slice(prefix.length);
  return rest === '' || /^[-:]/.test(rest); // backup:a must not match backup:ab-…
}

async function lastVerify(client: Client, plan: BackupPlanConfig): Promise<PlanStatus['lastVerify']> {
  const query = `WorkflowType = '${runBackupWorkflow.workflowType}' AND ${SEARCH_ATTRIBUTES.node.name} = '${plan.node}' AND ExecutionStatus != 'Running'`;
  let n = 0;
  for await (const wf of client.workflow.list({ query })) {
    if (++n > 50) break;
    if (!isRunOf(plan.id, wf.workflowId)) continue;
    const at = (wf.closeTime ?? wf.startTime).toISOString();
    if (wf.status.name === 'COMPLETED') {
      const r = await workflowHandle(client, runBackupWorkflow, wf.workflowId, wf.runId).result();
      if (r.verify) return { at, ok: r.verify.ok };
    } else if (wf.status.name === 'FAILED') {
      const h = await workflowHandle(client, runBackupWorkflow, wf.workflowId, wf.runId).fetchHistory();
      const failed = (h.events ?? []).some((e) =>
        e.workflowExecutionFailedEventAttributes?.failure?.applicationFailureInfo?.type?.includes('BackupVerifyFailed'),
      );
      if (failed) return { at, ok: false };
    }
  }
  return null;
}

/** backupReport's input for each plan, in config order, each checked with backupReport's own schema. */
export function reportInputs(
  config: Config,
  opts: BackupCliOptions = {},
): { plan: BackupPlanConfig; input: BackupReportInput }[] {
  return config.backups.map((plan) => {
    const timings = { pickupTimeout: opts.timings?.pickupTimeout ?? '20s' };
    const input = { plan: backupInputFor(config, plan).plan, timings };
    return { plan, input: workflowInput(BackupReportInput, input, `backupReport input for plan ${plan.id}`) };
  });
}

/** runBackup's input for a plan (what its schedule starts), checked with runBackup's own schema. */
export function runInputFor(config: Config, plan: BackupPlanConfig, opts: BackupCliOptions = {}): RunBackupInput {
  const input = { ...backupInputFor(config, plan), ...(opts.timings ? { timings: opts.timings } : {}) };
  return workflowInput(RunBackupInput, input, `runBackup input for plan ${plan.id}`);
}

/** Per plan: last success and its age against the RPO (breach marked), last verify, snapshots, repository size. */
export async function backupStatus(client: Client, config: Config, opts: BackupCliOptions = {}): Promise<PlanStatus[]> {
  const now = opts.now ?? Date.now();
  // Every input is checked before the first report starts.
  return Promise.all(
    reportInputs(config, opts).map(async ({ plan, input: reportInput }) => {
      const report = await executeWorkflow(client, backupReportWorkflow, reportInput, {
        taskQueue: opts.taskQueue ?? CONTROL_TASK_QUEUE,
        workflowId: `backup-report:${plan.id}:${new Date(now).toISOString().replace(/[:.]/g, '-')}:${Math.random().toString(36).slice(2, 6)}`,
        staticSummary: `Backup report for plan ${plan.id}`,
        workflowExecutionTimeout: '3m',
      });
      const newest = report.snapshots.reduce<string | null>(
        (a, s) => (a === null || Date.parse(s.time) > Date.parse(a) ? s.time : a),
        null,
      );
      return {
        ...rpoStatus(plan, newest, now),
        node: plan.node,
        what: plan.what,
        rpo: plan.rpo,
        snapshots: report.snapshots.length,
        repositorySizeBytes: report.repositorySizeBytes,
        lastVerify: await lastVerify(client, plan).catch(() => null),
        error: report.error,
      };
    }),
  );
}

/** The status table; a breached RPO reads "BREACH". */
export function renderStatus(rows: PlanStatus[]): string {
  return table(
    ['PLAN', 'NODE', 'WHAT', 'LAST SUCCESS', 'AGE', 'RPO', 'RPO STATUS', 'LAST VERIFY', 'SNAPSHOTS', 'REPO SIZE'],
    rows.map((r) => [
      r.plan,
      r.node,
      r.what,
      r.lastSuccess ?? 'never',
      r.ageMs === null ? '-' : formatAge(r.ageMs),
      r.rpo,
      r.error ? `ERROR: ${r.error}` : r.breached ? 'BREACH' : 'ok',
      r.lastVerify ? `${r.lastVerify.ok ? 'ok' : 'FAILED'} ${r.lastVerify.at}` : '-',
      r.snapshots,
      r.repositorySizeBytes,
    ]),
  );
}

type BackupHandle = WorkflowHandle<WorkflowOf<typeof runBackupWorkflow>>;

/** Start a run of a plan now (outside its schedule). */
export async function startPlanNow(
  client: Client,
  config: Config,
  plan: string,
  opts: BackupCliOptions = {},
): Promise<BackupHandle> {
  const p = requirePlan(config, plan);
  const input = runInputFor(config, p, opts);
  return startWorkflow(client, runBackupWorkflow, input, {
    taskQueue: opts.taskQueue ?? CONTROL_TASK_QUEUE,
    workflowId: `${workflowIds.backupSchedule(p.id)}:manual-${new Date().toISOString().replace(/[:.]/g, '-')}`,
    staticSummary: `Backup ${p.id} (manual run)`,
  });
}

/** The running run of a plan (its schedule's or a manual one), from visibility; a clear error when none runs. */
export async function runningBackup(client: Client, config: Config, plan: string): Promise<BackupHandle> {
  const p = requirePlan(config, plan);
  // Not by GpuopsNode: a run no worker has picked up yet has not set it. Running backups are few.
  const query = `WorkflowType = '${runBackupWorkflow.workflowType}' AND ExecutionStatus = 'Running'`;
  for await (const wf of client.workflow.list({ query })) {
    if (isRunOf(p.id, wf.workflowId)) return workflowHandle(client, runBackupWorkflow, wf.workflowId, wf.runId);
  }
  throw new Error(`no backup of plan ${p.id} is running (start one with gpuops backup run ${p.id} --follow)`);
}

/** A run's record, the way `backup run` prints it. */
const renderRecord = (r: BackupRecord): string =>
  `${r.plan}: ${r.status}, snapshot ${r.snapshotId ?? '-'}, ${r.durationMs} ms`;

/**
 * Follow a backup run to its end: each step as it is done, restic's progress as a bar (percent and ETA; restic's
 * heartbeat carries no byte counts), then the record. A failed run exits 1 with its reason.
 */
async function followBackup(h: BackupHandle, globals: GlobalOptions): Promise<void> {
  const out = new FollowOutput(globals);
  const meter = new TransferMeter();
  out.once('attach', { event: 'following', workflowId: h.workflowId }, [
    `following ${h.workflowId} (Ctrl-C stops following; the backup goes on)`,
  ]);
  const show = (r: BackupRecord): void =>
    r.steps.forEach((st, n) =>
      out.once(`step:${n}`, { event: 'step', ...st }, [`${st.ok ? 'ok' : 'FAILED'} ${st.step}: ${st.detail}`]),
    );
  let record: BackupRecord;
  try {
    record = await followToEnd(h, async () => {
      show(await h.query(getBackupRecordQuery));
      // resticPrecheckAndBackup heartbeats restic's progress only in its backup stage (its pre-check inits).
      const a = (await pendingActivities(h)).find(
        (x) => x.type === 'resticBackup' || (x.type === 'resticPrecheckAndBackup' && x.details.stage === 'backup'),
      );
      if (!a) return out.transfer(null);
      const view = { label: `restic backup${a.attempt > 1 ? ` (attempt ${a.attempt})` : ''}`, total: 1, bytes: false };
      out.transfer(
        meter.line('backup', { ...view, done: Number(a.details.percent ?? 0) }, a.heartbeatAt ?? Date.now()),
      );
    });
    show(record);
  } finally {
    out.close();
  }
  await emit(globals, record, renderRecord, { line: true });
}

const RestoreArgs = z.strictObject({
  plan: planId,
  snapshot: z.string().regex(/^(latest|[0-9a-f]{8,64})$/, { message: 'must be "latest" or a snapshot id' }),
  target: z.string().min(1, { message: 'is required (--target DIR)' }),
  force: z.boolean(),
});

/** What `gpuops backup restore` asks for. */
export interface RestoreRequest {
  plan: string;
  snapshot?: string;
  target?: string;
  force?: boolean;
}

/** restoreBackup's input and workflow ID for `args`, checked with restoreBackup's own schema. */
export function restoreInputFor(
  config: Config,
  args: RestoreRequest,
  opts: BackupCliOptions = {},
): { input: RestoreBackupInput; workflowId: string } {
  const p = requirePlan(config, args.plan);
  const a = parseOrThrow(
    RestoreArgs,
    { plan: args.plan, snapshot: args.snapshot ?? 'latest', target: args.target ?? '', force: args.force ?? false },
    'arguments',
  );
  const input = {
    plan: backupInputFor(config, p).plan,
    snapshot: a.snapshot,
    target: a.target,
    force: a.force,
    ...(opts.timings ? { timings: opts.timings } : {}),
  };
  return {
    input: workflowInput(RestoreBackupInput, input, `restoreBackup input for plan ${p.id}`),
    workflowId: workflowIds.restore(p.id, a.snapshot),
  };
}

/** Restore a snapshot of a plan into a directory on its node (workflow restore:<plan>:<snapshot>). */
export async function restorePlan(
  client: Client,
  config: Config,
  args: RestoreRequest,
  opts: BackupCliOptions = {},
): Promise<RestoreRecord> {
  const { input, workflowId } = restoreInputFor(config, args, opts);
  return executeWorkflow(client, restoreBackupWorkflow, input, {
    taskQueue: opts.taskQueue ?? CONTROL_TASK_QUEUE,
    workflowId,
    staticSummary: `Restore ${input.plan.id} snapshot ${input.snapshot ?? 'latest'} to ${input.target}`,
  });
}

/** Register `backup` and `schedules` on the gpuops command. */
export function registerBackupCommands(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  const backup = program.command('backup').description('backups: status against the RPO, run now, restore');
  backup
    .command('status')
    .description('per plan: last success and its age vs the RPO, last verify, snapshot count, repository size')
    .action(async () => {
      await withInputs(
        globals(),
        ({ config }) => reportInputs(config),
        async (client, _inputs, loaded) => {
          await emit(globals(), await backupStatus(client, loaded.config), renderStatus);
        },
      );
    });
  backup
    .command('run <plan>')
    .description('run a plan now and print its record')
    .option('--follow', "print each step and restic's progress while it runs")
    .action(async (plan, o) => {
      // Bad arguments, and a plan whose input runBackup would refuse, exit 2 before any connection attempt.
      await withInputs(
        globals(),
        ({ config }) => runInputFor(config, requirePlan(config, plan)),
        async (client, _input, loaded) => {
          const h = await startPlanNow(client, loaded.config, plan);
          if (o.follow) await followBackup(h, globals());
          else await emit(globals(), await h.result(), renderRecord);
        },
      );
    });
  backup
    .command('follow <plan>')
    .description('attach to the running backup of a plan (scheduled or manual) and follow it to its end')
    .action(async (plan) => {
      requirePlan(loadConfig(globals().config).config, plan);
      await withClient(globals(), async (client, loaded) => {
        await followBackup(await runningBackup(client, loaded.config, plan), globals());
      });
    });
  backup
    .command('restore <plan> [snapshot]')
    .description('restore a snapshot (default latest) into --target on the plan node; refuses a non-empty target')
    .option('--target <dir>', 'directory on the node to restore into')
    .option('--force', 'restore into a non-empty target')
    .action(async (plan, snapshot, o) => {
      const args = {
        plan,
        ...(snapshot ? { snapshot } : {}),
        ...(o.target ? { target: o.target } : {}),
        force: o.force ?? false,
      };
      await withInputs(
        globals(),
        ({ config }) => restoreInputFor(config, args),
        async (client, _input, loaded) => {
          const r = await restorePlan(client, loaded.config, args);
          await emit(
            globals(),
            r,
            (x) =>
              `restored ${x.plan} ${x.snapshotId} to ${x.target}: ${x.files} files, ${x.bytes} bytes, verified, ${x.durationMs} ms` +
              `${x.rtoMs === null ? '' : ` (RTO ${x.rtoBreached ? 'BREACHED' : 'met'})`}`,
          );
        },
      );
    });

  const schedules = program.command('schedules').description('the Temporal Schedules backup:<plan>');
  schedules
    .command('sync')
    .description('create, update and delete schedules to match gpuops.yaml (idempotent)')
    .option('--dry-run', 'show what would change')
    .action(async (o) => {
      // Each schedule's action starts runBackup with its plan's input: a bad one would fail every run.
      const inputs = ({ config }: LoadedConfig) => config.backups.map((p) => runInputFor(config, p));
      await withInputs(globals(), inputs, async (client, _inputs, loaded) => {
        const r = await syncSchedules(client, loaded.config, { dryRun: o.dryRun ?? false });
        await emit(globals(), r, (x) => `${o.dryRun ? '(dry run) ' : ''}${describeSync(x)}`);
      });
    });
  schedules
    .command('list')
    .description('list backup schedules with their state and next run')
    .action(async () => {
      await withClient(globals(), async (client) => {
        const rows: { id: string; paused: boolean; next: string | null; recent: string | null }[] = [];
        for await (const s of listSchedules(client, BACKUP_SCHEDULE_PREFIX)) {
          rows.push({
            id: s.scheduleId,
            paused: s.paused,
            next: s.nextActionTimes[0]?.toISOString() ?? null,
            recent: s.lastActionAt?.toISOString() ?? null,
          });
        }
        await emit(globals(), rows, (x) =>
          table(
            ['SCHEDULE', 'STATE', 'NEXT RUN', 'LAST RUN'],
            x.map((r) => [r.id, r.paused ? 'paused' : 'active', r.next, r.recent]),
          ),
        );
      });
    });
  for (const [name, what] of [
    ['pause', 'pause a plan schedule'],
    ['resume', 'resume a paused plan schedule'],
    ['trigger', 'start a run of a plan now, through its schedule'],
  ] as const) {
    schedules
      .command(`${name} <plan>`)
      .description(what)
      .action(async (plan) => {
        requirePlan(loadConfig(globals().config).config, plan);
        // A trigger starts runBackup: the plan's input is checked with runBackup's schema before connecting.
        const inputs = ({ config }: LoadedConfig) =>
          name === 'trigger' ? runInputFor(config, requirePlan(config, plan)) : undefined;
        await withInputs(globals(), inputs, async (client, _input, loaded) => {
          const p = requirePlan(loaded.config, plan);
          const h = client.schedule.getHandle(workflowIds.backupSchedule(p.id));
          if (name === 'pause') await h.pause('paused with gpuops schedules pause');
          else if (name === 'resume') await h.unpause('resumed with gpuops schedules resume');
          // Trigger honours the overlap policy (SKIP): no second run while one is going.
          else await h.trigger();
          await emit(
            globals(),
            { schedule: h.scheduleId, action: name },
            (x) => `${x.schedule}: ${name === 'trigger' ? 'triggered' : `${name}d`}`,
          );
        });
      });
  }
}
