/**
 * Backups: runBackup (one run of a plan, started by its Temporal Schedule `backup:<plan>`) and restoreBackup (a
 * verified restore, workflow ID restore:<plan>:<snapshot>). restic runs on the node's queue; the VM config comes
 * from the hypervisor side (the Proxmox API on the control worker); failures notify.
 */
import {
  ApplicationFailure,
  proxyActivities,
  setCurrentDetails,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { BackupActivities } from '../activities/backup';
import type { NotifyActivities } from '../activities/notify';
import type { createVmConfigActivities } from '../activities/vm-config';
import { parseDuration } from '../src/domain/durations';
import { parseInput } from '../src/domain/validation';
import {
  BackupReportInput,
  RestoreBackupInput,
  RunBackupInput,
  SEARCH_ATTRIBUTES,
  nodeTaskQueue,
  type BackupRecord,
  type BackupReport,
  type BackupStep,
  type RestoreRecord,
} from '../src/contracts';

type VmConfigActivities = ReturnType<typeof createVmConfigActivities>;

function errMessage(err: unknown): string {
  const e = err as { cause?: { message?: string }; message?: string };
  return e.cause?.message ?? e.message ?? String(err);
}

/**
 * Back up one plan: pre-check the repository (init on first use, free space), back up with restic on the node's
 * queue (progress heartbeated; restic exit 3 recorded as a warning), apply retention (`forget --prune`), verify
 * (`check --read-data-subset`, and a sample test restore when the verify policy asks). Any failure notifies and
 * fails the run (so a schedule with pauseOnFailure pauses). Returns the record of what happened.
 */
export async function runBackup(rawInput: RunBackupInput): Promise<BackupRecord> {
  const input = parseInput(RunBackupInput, rawInput, 'runBackup input');
  const plan = input.plan;
  if (plan.what === 'model-store' && plan.paths.length === 0) {
    throw ApplicationFailure.create({
      type: 'ValidationError',
      nonRetryable: true,
      message: 'invalid runBackup input: plan.paths: must list at least one path for a model-store plan',
    });
  }
  if (plan.what === 'vm-config' && !input.vm) {
    throw ApplicationFailure.create({
      type: 'ValidationError',
      nonRetryable: true,
      message: 'invalid runBackup input: vm: is required for a vm-config plan (set nodes[].vm)',
    });
  }
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.node, value: plan.node },
    { key: SEARCH_ATTRIBUTES.stage, value: 'backup' },
  ]);
  const t = input.timings;
  const repo = { plan: plan.id, repository: plan.repository, passwordFile: plan.passwordFile };
  const quick = proxyActivities<BackupActivities>({
    taskQueue: nodeTaskQueue(plan.node),
    scheduleToStartTimeout: t.pickupTimeout,
    startToCloseTimeout: '10m',
    // Pre-checks, listings and test restores are safe to repeat; a few tries ride out a worker restart.
    retry: { maximumAttempts: 4, initialInterval: '1s', backoffCoefficient: 2 },
  });
  const long = proxyActivities<BackupActivities>({
    taskQueue: nodeTaskQueue(plan.node),
    scheduleToStartTimeout: t.pickupTimeout,
    startToCloseTimeout: t.runTimeout,
    // A killed node worker stops heartbeating: the attempt is retried on the restarted worker, which unlocks
    // restic's stale locks and reuses or redoes the snapshot (resticBackup is idempotent per run).
    heartbeatTimeout: t.heartbeatTimeout,
    retry: { maximumAttempts: 5, initialInterval: '1s', backoffCoefficient: 2 },
  });
  const control = proxyActivities<NotifyActivities & VmConfigActivities>({
    // Notifications and the Proxmox API are served by the control worker, which also runs this workflow.
    taskQueue: workflowInfo().taskQueue,
    startToCloseTimeout: '30s',
    retry: { maximumAttempts: 3, initialInterval: '1s' },
  });

  const startedAt = Date.now();
  const record: BackupRecord = {
    plan: plan.id,
    node: plan.node,
    what: plan.what,
    status: 'ok',
    startedAt: new Date(startedAt).toISOString(),
    finishedAt: '',
    durationMs: 0,
    snapshotId: null,
    initialisedRepository: false,
    backup: null,
    retention: null,
    verify: null,
    steps: [],
  };
  const stage = (s: string): void =>
    setCurrentDetails(
      `Backup plan **${plan.id}** (${plan.what}) on node **${plan.node}** — ${s}\n\n` +
        record.steps.map((x) => `- ${x.ok ? '✓' : '✗'} ${x.step}: ${x.detail}`).join('\n'),
    );
  const finish = (): BackupRecord => {
    record.finishedAt = new Date(Date.now()).toISOString();
    record.durationMs = Date.now() - startedAt;
    return record;
  };
  const fail = async (step: BackupStep['step'], type: string, message: string): Promise<never> => {
    record.status = 'failed';
    stage(`FAILED at ${step}`);
    if (input.notify) {
      try {
        const r = await control.notify({
          title: `backup ${plan.id} failed at ${step}`,
          text: `${message}\nnode ${plan.node}, workflow ${workflowInfo().workflowId}`,
          severity: 'critical',
          fields: { plan: plan.id, node: plan.node, step, snapshot: record.snapshotId },
        });
        record.steps.push({
          step: 'notify',
          ok: true,
          detail: `sent to ${r.sent.join(', ') || 'nobody (none configured)'}`,
        });
      } catch (err) {
        record.steps.push({ step: 'notify', ok: false, detail: errMessage(err) });
      }
    }
    throw ApplicationFailure.create({ type, message, nonRetryable: true, details: [finish()] });
  };
  const attemptStep = async <T>(step: BackupStep['step'], work: () => Promise<T>, describe: (r: T) => string) => {
    stage(`${step}…`);
    try {
      const r = await work();
      record.steps.push({ step, ok: true, detail: describe(r) });
      return r;
    } catch (err) {
      record.steps.push({ step, ok: false, detail: errMessage(err) });
      return fail(step, 'BackupFailed', `${step} failed: ${errMessage(err)}`);
    }
  };

  const pre = await attemptStep(
    'precheck',
    () => quick.resticPrecheck({ ...repo, initIfMissing: true }),
    (r) =>
      `${r.initialised ? 'repository created' : 'repository ok'}${r.freeBytes === null ? '' : `, ${r.freeBytes} bytes free`}`,
  );
  record.initialisedRepository = pre.initialised;

  let vmConfig: { name: string; text: string } | undefined;
  const vm = input.vm;
  if (plan.what === 'vm-config' && vm) {
    vmConfig = await attemptStep(
      'vm-config',
      () => control.exportVmConfig(vm),
      (r) => `exported ${r.name} from ${vm.hypervisor}`,
    );
  }

  const outcome = await attemptStep(
    'backup',
    () =>
      long.resticBackup({
        ...repo,
        what: plan.what,
        paths: plan.paths,
        runTag: workflowInfo().workflowId,
        ...(vmConfig ? { vmConfig } : {}),
        ...(input.limitUploadKiB ? { limitUploadKiB: input.limitUploadKiB } : {}),
      }),
    (r) =>
      `snapshot ${r.snapshotId}: ${r.filesNew} new, ${r.filesChanged} changed, ${r.filesUnmodified} unchanged files, ${r.dataAdded} bytes added${r.incomplete ? ' (INCOMPLETE: some files unreadable)' : ''}${r.reused ? ' (reused from an earlier attempt)' : ''}`,
  );
  record.backup = outcome;
  record.snapshotId = outcome.snapshotId;
  if (outcome.incomplete) record.status = 'warning';

  record.retention = await attemptStep(
    'forget',
    () => long.resticForget({ ...repo, retention: plan.retention }),
    (r) =>
      r.kept.length + r.removed.length === 0
        ? 'no retention policy'
        : `kept ${r.kept.length}, removed ${r.removed.length}`,
  );

  const check = await attemptStep(
    'check',
    () => long.resticCheck({ ...repo, readDataSubset: plan.verify.readDataSubset }),
    (r) => (r.ok ? `no errors (read ${plan.verify.readDataSubset})` : `ERRORS: ${r.output}`),
  );
  record.verify = { ok: check.ok, readDataSubset: plan.verify.readDataSubset, output: check.output, testRestore: null };
  if (!check.ok) {
    record.steps[record.steps.length - 1]!.ok = false;
    return fail('check', 'BackupVerifyFailed', `restic check found errors in ${plan.repository}: ${check.output}`);
  }

  if ((input.testRestore ?? plan.verify.testRestore) && outcome.samples.length > 0) {
    const tr = await attemptStep(
      'test-restore',
      () => quick.resticTestRestore({ ...repo, snapshotId: outcome.snapshotId, samples: outcome.samples }),
      (r) => (r.ok ? `${r.compared} sample file(s) match` : `MISMATCH: ${r.mismatches.join('; ')}`),
    );
    record.verify.testRestore = tr;
    if (!tr.ok) {
      record.steps[record.steps.length - 1]!.ok = false;
      return fail('test-restore', 'BackupVerifyFailed', `test restore differs: ${tr.mismatches.join('; ')}`);
    }
  }
  stage(record.status === 'warning' ? 'done with warnings' : 'done');
  return finish();
}

/**
 * Restore a snapshot of a plan (latest or by id) into a directory on the plan's node, verify the restored content,
 * and report the duration against the plan's RTO. Refuses a non-empty target unless `force`. Workflow ID
 * restore:<plan>:<snapshot>.
 */
export async function restoreBackup(rawInput: RestoreBackupInput): Promise<RestoreRecord> {
  const input = parseInput(RestoreBackupInput, rawInput, 'restoreBackup input');
  const plan = input.plan;
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.node, value: plan.node },
    { key: SEARCH_ATTRIBUTES.stage, value: 'restore' },
  ]);
  const t = input.timings;
  const acts = proxyActivities<BackupActivities>({
    taskQueue: nodeTaskQueue(plan.node),
    scheduleToStartTimeout: t.pickupTimeout,
    startToCloseTimeout: t.runTimeout,
    heartbeatTimeout: t.heartbeatTimeout,
    // A restore into the same target is repeatable (force on retry is implied by our own partial output).
    retry: {
      maximumAttempts: 3,
      initialInterval: '1s',
      backoffCoefficient: 2,
      nonRetryableErrorTypes: ['TargetNotEmpty'],
    },
  });
  setCurrentDetails(
    `Restoring **${plan.id}** snapshot \`${input.snapshot}\` to \`${input.target}\` on **${plan.node}**`,
  );
  const started = Date.now();
  const r = await acts.resticRestore({
    plan: plan.id,
    repository: plan.repository,
    passwordFile: plan.passwordFile,
    snapshot: input.snapshot,
    target: input.target,
    force: input.force,
  });
  const durationMs = Date.now() - started;
  const rtoMs = plan.rto ? parseDuration(plan.rto) : null;
  const record: RestoreRecord = {
    plan: plan.id,
    node: plan.node,
    snapshotId: r.snapshotId,
    target: input.target,
    files: r.files,
    bytes: r.bytes,
    sha256: r.sha256,
    verified: true,
    durationMs,
    rtoMs,
    rtoBreached: rtoMs !== null && durationMs > rtoMs,
  };
  setCurrentDetails(
    `Restored **${plan.id}** snapshot \`${r.snapshotId}\`: ${r.files} files, ${r.bytes} bytes, verified, in ${durationMs} ms` +
      (rtoMs === null ? '' : ` (RTO ${plan.rto}: ${record.rtoBreached ? 'BREACHED' : 'met'})`),
  );
  return record;
}

/** Read a plan's snapshots and repository size on its node (for `gpuops backup status`). Read-only. */
export async function backupReport(rawInput: BackupReportInput): Promise<BackupReport> {
  const input = parseInput(BackupReportInput, rawInput, 'backupReport input');
  const plan = input.plan;
  upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.node, value: plan.node }]);
  const acts = proxyActivities<BackupActivities>({
    taskQueue: nodeTaskQueue(plan.node),
    scheduleToStartTimeout: input.timings.pickupTimeout,
    startToCloseTimeout: '2m',
    retry: { maximumAttempts: 2 },
  });
  const repo = { plan: plan.id, repository: plan.repository, passwordFile: plan.passwordFile };
  try {
    const snaps = await acts.resticSnapshots(repo);
    const stats = await acts.resticStats(repo);
    return {
      plan: plan.id,
      snapshots: snaps.map((s) => ({ id: s.short_id, time: s.time })),
      repositorySizeBytes: stats.total_size,
      error: null,
    };
  } catch (err) {
    return { plan: plan.id, snapshots: [], repositorySizeBytes: null, error: errMessage(err) };
  }
}
