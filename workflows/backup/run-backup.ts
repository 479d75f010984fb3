/**
 * runBackup: one run of a backup plan, started by its Temporal Schedule `backup:<plan>`. A `BackupRun` owns the
 * record; each step is one `attempt()` that records what happened, and any failure notifies and fails the run.
 */
import {
  ApplicationFailure,
  patched,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { z } from 'zod';
import type { BackupOutcome } from '../../activities/backup';
import { parseInput } from '../../src/domain/validation';
import { parseDuration } from '../../src/domain/durations';
import { workflowMetrics } from '../metrics';
import {
  RunBackupInput,
  SEARCH_ATTRIBUTES,
  getBackupRecordQuery,
  type BackupRecord,
  type BackupStep,
} from '../../src/contracts';
import { controlActivities, errMessage, longResticActivities, quickResticActivities } from './activities';

type Input = z.output<typeof RunBackupInput>;
type Step = BackupStep['step'];

/**
 * A plan's standing against its RPO, as gauges: the newest good backup's time and the RPO (the dashboard compares
 * time() minus the one with the other). Set by runBackup when it succeeds and by backupReport from the snapshots.
 */
export function recordBackupStanding(plan: string, rpo: string, lastSuccessMs: number): void {
  const metrics = workflowMetrics();
  metrics.set('backupLastSuccess', { plan }, lastSuccessMs / 1000);
  metrics.set('backupRpo', { plan }, parseDuration(rpo) / 1000);
}

/** The state of one run: its input, its activities and the record it returns (or fails with). */
class BackupRun {
  readonly plan: Input['plan'];
  readonly repo: { plan: string; repository: string; passwordFile: string };
  readonly quick: ReturnType<typeof quickResticActivities>;
  readonly long: ReturnType<typeof longResticActivities>;
  readonly control = controlActivities();
  readonly startedAt = Date.now();
  readonly record: BackupRecord;

  constructor(readonly input: Input) {
    this.plan = input.plan;
    this.repo = { plan: this.plan.id, repository: this.plan.repository, passwordFile: this.plan.passwordFile };
    this.quick = quickResticActivities(this.plan.node, input.timings);
    this.long = longResticActivities(this.plan.node, input.timings);
    this.record = {
      plan: this.plan.id,
      node: this.plan.node,
      what: this.plan.what,
      status: 'ok',
      startedAt: new Date(this.startedAt).toISOString(),
      finishedAt: '',
      durationMs: 0,
      snapshotId: null,
      initialisedRepository: false,
      backup: null,
      retention: null,
      verify: null,
      steps: [],
    };
  }

  /** Show where the run is, with every step so far, in the UI. */
  stage(s: string): void {
    setCurrentDetails(
      `Backup plan **${this.plan.id}** (${this.plan.what}) on node **${this.plan.node}** — ${s}\n\n` +
        this.record.steps.map((x) => `- ${x.ok ? '✓' : '✗'} ${x.step}: ${x.detail}`).join('\n'),
    );
  }

  finish(): BackupRecord {
    this.record.finishedAt = new Date(Date.now()).toISOString();
    this.record.durationMs = Date.now() - this.startedAt;
    const plan = this.plan.id;
    const metrics = workflowMetrics();
    metrics.add('backupRuns', { plan, outcome: this.record.status });
    if (this.record.status !== 'failed') recordBackupStanding(plan, this.plan.rpo, this.startedAt);
    return this.record;
  }

  /** Fail the run at `step`: notify (recorded as a step of its own), then fail with the record as details. */
  async fail(step: Step, type: string, message: string): Promise<never> {
    this.record.status = 'failed';
    this.stage(`FAILED at ${step}`);
    if (this.input.notify) {
      try {
        const r = await this.control.notify({
          title: `backup ${this.plan.id} failed at ${step}`,
          text: `${message}\nnode ${this.plan.node}, workflow ${workflowInfo().workflowId}`,
          severity: 'critical',
          fields: { plan: this.plan.id, node: this.plan.node, step, snapshot: this.record.snapshotId },
        });
        const detail = `sent to ${r.sent.join(', ') || 'nobody (none configured)'}`;
        this.record.steps.push({ step: 'notify', ok: true, detail });
      } catch (err) {
        this.record.steps.push({ step: 'notify', ok: false, detail: errMessage(err) });
      }
    }
    throw ApplicationFailure.create({ type, message, nonRetryable: true, details: [this.finish()] });
  }

  /** Run one step: record its outcome; an error fails the run as BackupFailed. */
  async attempt<T>(step: Step, work: () => Promise<T>, describe: (r: T) => string): Promise<T> {
    this.stage(`${step}…`);
    try {
      const r = await work();
      this.record.steps.push({ step, ok: true, detail: describe(r) });
      return r;
    } catch (err) {
      this.record.steps.push({ step, ok: false, detail: errMessage(err) });
      return this.fail(step, 'BackupFailed', `${step} failed: ${errMessage(err)}`);
    }
  }

  /** A step that ran but found the data wrong: mark it failed and fail the run as BackupVerifyFailed. */
  verifyFailed(step: Step, message: string): Promise<never> {
    this.record.steps[this.record.steps.length - 1]!.ok = false;
    return this.fail(step, 'BackupVerifyFailed', message);
  }
}

/** Refuse a plan that cannot be backed up before anything runs. */
function checkPlan(input: Input): void {
  const refuse = (message: string): never => {
    throw ApplicationFailure.create({ type: 'ValidationError', nonRetryable: true, message });
  };
  if (input.plan.what === 'model-store' && input.plan.paths.length === 0) {
    refuse('invalid runBackup input: plan.paths: must list at least one path for a model-store plan');
  }
  if (input.plan.what === 'vm-config' && !input.vm) {
    refuse('invalid runBackup input: vm: is required for a vm-config plan (set nodes[].vm)');
  }
}

/** Pre-check the repository (created on first use) and, for vm-config plans, export the VM's config. */
async function prepare(run: BackupRun): Promise<{ name: string; text: string } | undefined> {
  const pre = await run.attempt(
    'precheck',
    () => run.quick.resticPrecheck({ ...run.repo, initIfMissing: true }),
    (r) =>
      `${r.initialised ? 'repository created' : 'repository ok'}${r.freeBytes === null ? '' : `, ${r.freeBytes} bytes free`}`,
  );
  run.record.initialisedRepository = pre.initialised;
  const vm = run.input.vm;
  if (run.plan.what !== 'vm-config' || !vm) return undefined;
  return run.attempt(
    'vm-config',
    () => run.control.exportVmConfig(vm),
    (r) => `exported ${r.name} from ${vm.hypervisor}`,
  );
}

/**
 * Runs from this patch on fingerprint sample files (sha256 of whole files, read before the backup) only when the
 * run will test-restore them; before it every backup hashed its first three files, read for nothing otherwise.
 */
export const SAMPLES_ONLY_FOR_TEST_RESTORE_PATCH = 'backup-samples-only-for-test-restore';

/** Back up with restic on the node (progress heartbeated; unreadable files make the run a warning). */
async function backUp(run: BackupRun, vmConfig: { name: string; text: string } | undefined): Promise<BackupOutcome> {
  const { input, plan } = run;
  const testRestore = input.testRestore ?? plan.verify.testRestore;
  const noSamples = !testRestore && patched(SAMPLES_ONLY_FOR_TEST_RESTORE_PATCH);
  const outcome = await run.attempt(
    'backup',
    () =>
      run.long.resticBackup({
        ...run.repo,
        what: plan.what,
        paths: plan.paths,
        runTag: workflowInfo().workflowId,
        ...(vmConfig ? { vmConfig } : {}),
        ...(input.limitUploadKiB ? { limitUploadKiB: input.limitUploadKiB } : {}),
        ...(noSamples ? { samples: 0 } : {}),
      }),
    (r) =>
      `snapshot ${r.snapshotId}: ${r.filesNew} new, ${r.filesChanged} changed, ${r.filesUnmodified} unchanged files, ${r.dataAdded} bytes added${r.incomplete ? ' (INCOMPLETE: some files unreadable)' : ''}${r.reused ? ' (reused from an earlier attempt)' : ''}`,
  );
  run.record.backup = outcome;
  run.record.snapshotId = outcome.snapshotId;
  if (outcome.incomplete) run.record.status = 'warning';
  return outcome;
}

/** Apply the plan's retention (`forget --prune`). */
async function applyRetention(run: BackupRun): Promise<void> {
  run.record.retention = await run.attempt(
    'forget',
    () => run.long.resticForget({ ...run.repo, retention: run.plan.retention }),
    (r) =>
      r.kept.length + r.removed.length === 0
        ? 'no retention policy'
        : `kept ${r.kept.length}, removed ${r.removed.length}`,
  );
}

/** Verify: `check --read-data-subset`, then a sample test restore when asked for. */
async function verify(run: BackupRun, outcome: BackupOutcome): Promise<void> {
  const { plan } = run;
  const subset = plan.verify.readDataSubset;
  const check = await run.attempt(
    'check',
    () => run.long.resticCheck({ ...run.repo, readDataSubset: subset }),
    (r) => (r.ok ? `no errors (read ${subset})` : `ERRORS: ${r.output}`),
  );
  run.record.verify = { ok: check.ok, readDataSubset: subset, output: check.output, testRestore: null };
  if (!check.ok) await run.verifyFailed('check', `restic check found errors in ${plan.repository}: ${check.output}`);
  if (!(run.input.testRestore ?? plan.verify.testRestore) || outcome.samples.length === 0) return;
  const tr = await run.attempt(
    'test-restore',
    () => run.quick.resticTestRestore({ ...run.repo, snapshotId: outcome.snapshotId, samples: outcome.samples }),
    (r) => (r.ok ? `${r.compared} sample file(s) match` : `MISMATCH: ${r.mismatches.join('; ')}`),
  );
  run.record.verify.testRestore = tr;
  if (!tr.ok) await run.verifyFailed('test-restore', `test restore differs: ${tr.mismatches.join('; ')}`);
}

/**
 * Back up one plan: pre-check the repository (init on first use, free space), back up with restic on the node's
 * queue (progress heartbeated; restic exit 3 recorded as a warning), apply retention (`forget --prune`), verify
 * (`check --read-data-subset`, and a sample test restore when the verify policy asks). Any failure notifies and
 * fails the run (so a schedule with pauseOnFailure pauses). Returns the record of what happened.
 */
export async function runBackup(rawInput: RunBackupInput): Promise<BackupRecord> {
  const input = parseInput(RunBackupInput, rawInput, 'runBackup input');
  checkPlan(input);
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.node, value: input.plan.node },
    { key: SEARCH_ATTRIBUTES.stage, value: 'backup' },
  ]);
  const run = new BackupRun(input);
  setHandler(getBackupRecordQuery, () => run.record);
  const vmConfig = await prepare(run);
  const outcome = await backUp(run, vmConfig);
  await applyRetention(run);
  await verify(run, outcome);
  run.stage(run.record.status === 'warning' ? 'done with warnings' : 'done');
  return run.finish();
}
