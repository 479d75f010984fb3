/**
 * runBackup: one run of a backup plan, started by its Temporal Schedule `backup:<plan>`. A `BackupRun` owns the
 * record; each step is one `attempt()` that records what happened, and any failure notifies and fails the run.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  TimeoutFailure,
  patched,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { z } from 'zod';
import type { BackupOutcome, BackupStepFailureDetails, PrecheckAndBackupResult } from '../../activities/backup';
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
import { activityNotRegistered } from '../probe';
import {
  controlActivities,
  errMessage,
  longResticActivities,
  mergedResticActivities,
  quickResticActivities,
} from './activities';

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
  readonly merged: ReturnType<typeof mergedResticActivities>;
  readonly control = controlActivities();
  readonly startedAt = Date.now();
  readonly record: BackupRecord;

  constructor(readonly input: Input) {
    this.plan = input.plan;
    this.repo = { plan: this.plan.id, repository: this.plan.repository, passwordFile: this.plan.passwordFile };
    this.quick = quickResticActivities(this.plan.node, input.timings);
    this.long = longResticActivities(this.plan.node, input.timings);
    this.merged = mergedResticActivities(this.plan.node, input.timings);
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

  /**
   * Run one node activity that does several steps in order: record each step it did; a failure is recorded at the
   * step it names (its details, or its last heartbeat's stage for a timeout), the steps before it as done, with
   * what `partial` makes of the failure's details (and keeps in the record). `fallback`: what to do instead when
   * the node worker does not have the activity (an older worker).
   */
  async attemptSteps<T>(
    steps: readonly Step[],
    work: () => Promise<T>,
    describe: (r: T) => { step: Step; detail: string }[],
    partial: (d: Partial<BackupStepFailureDetails>) => Partial<Record<Step, string>>,
    fallback: () => Promise<T>,
  ): Promise<T> {
    this.stage(`${steps.join(' and ')}…`);
    let r: T;
    try {
      r = await work();
    } catch (err) {
      if (activityNotRegistered(err)) return fallback();
      const failed = failedStep(err, steps);
      const done = partial(failureDetails(err) ?? {});
      for (const step of steps.slice(0, steps.indexOf(failed))) {
        const detail = `${done[step] ?? 'done'} (in the same activity as ${failed})`;
        this.record.steps.push({ step, ok: true, detail });
      }
      this.record.steps.push({ step: failed, ok: false, detail: errMessage(err) });
      return this.fail(failed, 'BackupFailed', `${failed} failed: ${errMessage(err)}`);
    }
    for (const d of describe(r)) this.record.steps.push({ ...d, ok: true });
    return r;
  }

  /** A step that ran but found the data wrong: mark it failed and fail the run as BackupVerifyFailed. */
  verifyFailed(step: Step, message: string): Promise<never> {
    this.record.steps[this.record.steps.length - 1]!.ok = false;
    return this.fail(step, 'BackupVerifyFailed', message);
  }
}

/** The heartbeat stages of the merged activities, as the steps they belong to. */
const STAGE_STEPS: Record<string, Step> = { init: 'precheck', backup: 'backup', forget: 'forget', check: 'check' };

/** A merged activity's failure details (the step it failed at, what the steps before it did), if it sent them. */
function failureDetails(err: unknown): Partial<BackupStepFailureDetails> | undefined {
  const cause = err instanceof ActivityFailure ? err.cause : undefined;
  const d = cause instanceof ApplicationFailure ? cause.details?.[0] : undefined;
  return d && typeof d === 'object' ? (d as Partial<BackupStepFailureDetails>) : undefined;
}

/** Which of `steps` a merged activity failed at: the step in its failure's details, a timeout's last stage, or the first. */
function failedStep(err: unknown, steps: readonly Step[]): Step {
  const known = (s: unknown): Step | undefined => ((steps as readonly unknown[]).includes(s) ? (s as Step) : undefined);
  const cause = err instanceof ActivityFailure ? err.cause : undefined;
  if (cause instanceof ApplicationFailure) {
    const step = known(failureDetails(err)?.step);
    if (step) return step;
  }
  if (cause instanceof TimeoutFailure) {
    const stage = (cause.lastHeartbeatDetails as { stage?: unknown } | undefined)?.stage;
    const step = typeof stage === 'string' ? known(STAGE_STEPS[stage]) : undefined;
    if (step) return step;
  }
  return steps[0]!;
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

/** Pre-check the repository (created on first use, free space) in an activity of its own. */
async function precheck(run: BackupRun): Promise<void> {
  const pre = await run.attempt(
    'precheck',
    () => run.quick.resticPrecheck({ ...run.repo, initIfMissing: true, ...minFree(run) }),
    (r) => describePrecheck(r),
  );
  run.record.initialisedRepository = pre.initialised;
}

/** The plan's free-space floor for the pre-check (gpuops.yaml's minFree), when it sets one. */
function minFree(run: BackupRun): { minFreeBytes?: number } {
  return run.plan.minFreeBytes === undefined ? {} : { minFreeBytes: run.plan.minFreeBytes };
}

function describePrecheck(r: { initialised: boolean; freeBytes: number | null }): string {
  return `${r.initialised ? 'repository created' : 'repository ok'}${r.freeBytes === null ? '' : `, ${r.freeBytes} bytes free`}`;
}

/** For vm-config plans, export the VM's config through the hypervisor (on the control worker). */
async function exportVm(run: BackupRun): Promise<{ name: string; text: string } | undefined> {
  const vm = run.input.vm;
  if (run.plan.what !== 'vm-config' || !vm) return undefined;
  return run.attempt(
    'vm-config',
    () => run.control.exportVmConfig(vm),
    (r) => `exported ${r.name} from ${vm.hypervisor}`,
  );
}

/**
 * Runs from this patch on do the pre-check and the backup in one node activity, and retention and the check in
 * another (resticPrecheckAndBackup, resticForgetAndCheck): two activities where there were four, and no `restic cat
 * config` of its own for the pre-check (each restic invocation opens the repository, a key derivation). A vm-config
 * plan exports the VM's config first. A node worker without them runs the four, as before.
 */
export const TWO_NODE_ACTIVITIES_PATCH = 'backup-two-node-activities';

/**
 * Runs from this patch on fingerprint sample files (sha256 of whole files, read before the backup) only when the
 * run will test-restore them; before it every backup hashed its first three files, read for nothing otherwise.
 */
export const SAMPLES_ONLY_FOR_TEST_RESTORE_PATCH = 'backup-samples-only-for-test-restore';

/** What resticBackup (or resticPrecheckAndBackup) backs up, for this run. */
function backupInput(run: BackupRun, vmConfig: { name: string; text: string } | undefined) {
  const { input, plan } = run;
  const testRestore = input.testRestore ?? plan.verify.testRestore;
  const noSamples = !testRestore && patched(SAMPLES_ONLY_FOR_TEST_RESTORE_PATCH);
  return {
    ...run.repo,
    what: plan.what,
    paths: plan.paths,
    runTag: workflowInfo().workflowId,
    ...(vmConfig ? { vmConfig } : {}),
    ...(input.limitUploadKiB ? { limitUploadKiB: input.limitUploadKiB } : {}),
    ...(noSamples ? { samples: 0 } : {}),
  };
}

function describeBackup(r: BackupOutcome): string {
  return `snapshot ${r.snapshotId}: ${r.filesNew} new, ${r.filesChanged} changed, ${r.filesUnmodified} unchanged files, ${r.dataAdded} bytes added${r.incomplete ? ' (INCOMPLETE: some files unreadable)' : ''}${r.reused ? ' (reused from an earlier attempt)' : ''}`;
}

/** Keep a backup's outcome in the record (an incomplete snapshot makes the run a warning). */
function recordBackup(run: BackupRun, outcome: BackupOutcome): BackupOutcome {
  run.record.backup = outcome;
  run.record.snapshotId = outcome.snapshotId;
  if (outcome.incomplete) run.record.status = 'warning';
  return outcome;
}

/** Back up with restic on the node (progress heartbeated; unreadable files make the run a warning). */
async function backUp(run: BackupRun, vmConfig: { name: string; text: string } | undefined): Promise<BackupOutcome> {
  const args = backupInput(run, vmConfig);
  return recordBackup(run, await run.attempt('backup', () => run.long.resticBackup(args), describeBackup));
}

/** Pre-check and back up in one node activity (patch backup-two-node-activities); an older node worker runs two. */
async function precheckAndBackUp(
  run: BackupRun,
  vmConfig: { name: string; text: string } | undefined,
): Promise<BackupOutcome> {
  const args = { ...backupInput(run, vmConfig), initIfMissing: true, ...minFree(run) };
  const r = await run.attemptSteps(
    ['precheck', 'backup'],
    () => run.merged.resticPrecheckAndBackup(args),
    (x) => [
      { step: 'precheck', detail: describePrecheck(x.precheck) },
      { step: 'backup', detail: describeBackup(x.backup) },
    ],
    (d) => {
      run.record.initialisedRepository = d.initialised === true;
      return { precheck: describePrecheck({ initialised: d.initialised === true, freeBytes: null }) };
    },
    async (): Promise<PrecheckAndBackupResult> => {
      await precheck(run);
      const outcome = await backUp(run, vmConfig);
      return { precheck: { initialised: run.record.initialisedRepository, freeBytes: null }, backup: outcome };
    },
  );
  run.record.initialisedRepository = r.precheck.initialised;
  return recordBackup(run, r.backup);
}

function describeRetention(r: { kept: string[]; removed: string[] }): string {
  return r.kept.length + r.removed.length === 0
    ? 'no retention policy'
    : `kept ${r.kept.length}, removed ${r.removed.length}`;
}

function describeCheck(r: { ok: boolean; output: string }, subset: string): string {
  return r.ok ? `no errors (read ${subset})` : `ERRORS: ${r.output}`;
}

/** Apply the plan's retention (`forget --prune`). */
async function applyRetention(run: BackupRun): Promise<void> {
  run.record.retention = await run.attempt(
    'forget',
    () => run.long.resticForget({ ...run.repo, retention: run.plan.retention }),
    describeRetention,
  );
}

/** `check --read-data-subset` in an activity of its own. */
async function check(run: BackupRun): Promise<{ ok: boolean; output: string }> {
  const subset = run.plan.verify.readDataSubset;
  return run.attempt(
    'check',
    () => run.long.resticCheck({ ...run.repo, readDataSubset: subset }),
    (r) => describeCheck(r, subset),
  );
}

/** Retention and the check in one node activity (patch backup-two-node-activities); an older node worker runs two. */
async function retentionAndCheck(run: BackupRun): Promise<{ ok: boolean; output: string }> {
  const subset = run.plan.verify.readDataSubset;
  const r = await run.attemptSteps(
    ['forget', 'check'],
    () => run.merged.resticForgetAndCheck({ ...run.repo, retention: run.plan.retention, readDataSubset: subset }),
    (x) => [
      { step: 'forget', detail: describeRetention(x.retention) },
      { step: 'check', detail: describeCheck(x.check, subset) },
    ],
    (d) => {
      if (!d.retention) return {};
      run.record.retention = d.retention;
      return { forget: describeRetention(d.retention) };
    },
    async () => {
      await applyRetention(run);
      return { retention: run.record.retention!, check: await check(run), retentionResumed: false };
    },
  );
  run.record.retention = r.retention;
  return r.check;
}

/** Verify: the check's verdict, then a sample test restore when asked for. */
async function verify(run: BackupRun, outcome: BackupOutcome, check: { ok: boolean; output: string }): Promise<void> {
  const { plan } = run;
  const subset = plan.verify.readDataSubset;
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
 * (`check --read-data-subset`, and a sample test restore when the verify policy asks). Since patch
 * backup-two-node-activities the first two and the next two are one node activity each. Any failure notifies and
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
  if (patched(TWO_NODE_ACTIVITIES_PATCH)) {
    const vmConfig = await exportVm(run);
    const outcome = await precheckAndBackUp(run, vmConfig);
    await verify(run, outcome, await retentionAndCheck(run));
  } else {
    await precheck(run);
    const vmConfig = await exportVm(run);
    const outcome = await backUp(run, vmConfig);
    await applyRetention(run);
    await verify(run, outcome, await check(run));
  }
  run.stage(run.record.status === 'warning' ? 'done with warnings' : 'done');
  return run.finish();
}
