/**
 * Backups end to end: the real restic, a real Temporal server, Temporal Schedules, a control worker and a sandbox
 * node whose real node worker (workers/node.ts) runs restic as a child process.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { WorkflowFailedError, type Client } from '@temporalio/client';
import { parseConfig, type LoadedConfig } from '../src/config/load';
import { getBackupRecordQuery, workflowIds } from '../src/contracts';
import { ResticCli } from '../src/hosts/restic';
import { listSchedules, syncSchedules, backupInputFor } from '../src/temporal/schedules';
import { backupStatus, renderStatus, restorePlan } from '../src/cli/backup';
import { pendingActivities } from '../src/cli/follow';
import type { BackupRecord, RunBackupInput } from '../src/contracts';
import { stringify, parse } from 'yaml';
import { Worker } from '@temporalio/worker';
import { createBackupActivities } from '../activities/backup';
import { nodeTaskQueue } from '../src/contracts';
import { NvidiaSmi } from '../src/hosts/nvidia-smi';
import { controlWorker, recordHistory, uniqueId, useSandboxEnv, waitForPoller } from './helpers/env';
import { damageDataPacks } from './helpers/restic-damage';
import { writeTestSecret } from './helpers/secrets';
import { startWebhookReceiver, type WebhookReceiver } from './helpers/webhook';

const ctx = useSandboxEnv({
  sandbox: {},
  async beforeStop() {
    for await (const s of listSchedules(ctx.env.client, `backup:${tag}`)) {
      await ctx.env.client.schedule.getHandle(s.scheduleId).delete();
    }
    await hook?.close();
  },
});
let loaded: LoadedConfig;
let hook: WebhookReceiver<{ title: string; severity: string }> | undefined;
let received: { title: string; severity: string }[] = [];
const tag = uniqueId('b').toLowerCase();
const plan = (name: string): string => `${tag}-${name}`;
// A heartbeat every second or so from restic's progress; 6 s of silence leaves room for a loaded CI box.
const timings = { pickupTimeout: '20s', heartbeatTimeout: '6s' };

/** Source files of the model-store plan: an Ollama-like store with a manifest, a blob and a partial download. */
function writeModelStore(root: string): void {
  mkdirSync(path.join(root, 'manifests', 'registry.ollama.ai', 'library', 'tiny'), { recursive: true });
  mkdirSync(path.join(root, 'blobs'), { recursive: true });
  writeFileSync(path.join(root, 'manifests', 'registry.ollama.ai', 'library', 'tiny', 'latest'), '{"layers":[]}\n');
  writeFileSync(path.join(root, 'blobs', 'sha256-aaaa'), randomBytes(64 * 1024));
  writeFileSync(path.join(root, 'blobs', 'sha256-bbbb-partial'), 'half a download');
}

function restic(name: string): ResticCli {
  return new ResticCli({
    repository: path.join(ctx.sbx.dir, `repo-${name}`),
    passwordFile: path.join(ctx.sbx.dir, 'pw'),
  });
}

beforeAll(async () => {
  hook = await startWebhookReceiver(ctx.sbx.dir);
  received = hook.received;
  writeTestSecret(path.join(ctx.sbx.dir, 'pw'), 'restic-password');
  writeModelStore(path.join(ctx.sbx.dir, 'models'));
  mkdirSync(path.join(ctx.sbx.dir, 'big'));
  writeFileSync(path.join(ctx.sbx.dir, 'big', 'weights.bin'), randomBytes(1_500_000));
  writeFileSync(path.join(ctx.sbx.dir, 'small'), 'tiny\n');

  const raw = parse(readFileSync(ctx.sbx.loaded.path, 'utf8')) as Record<string, unknown>;
  const base = {
    node: ctx.sbx.nodeId,
    passwordFile: path.join(ctx.sbx.dir, 'pw'),
    schedule: { cron: '0 3 1 1 *' },
    rpo: '1h',
  };
  const models = {
    ...base,
    id: plan('models'),
    what: 'model-store',
    paths: [path.join(ctx.sbx.dir, 'models')],
    repository: path.join(ctx.sbx.dir, 'repo-models'),
    retention: { keepLast: 5 },
    verify: { readDataSubset: '100%', testRestore: true },
    rto: '10m',
  };
  raw.backups = [
    models,
    {
      ...base,
      id: plan('big'),
      what: 'model-store',
      paths: [path.join(ctx.sbx.dir, 'big')],
      repository: path.join(ctx.sbx.dir, 'repo-big'),
    },
    {
      ...base,
      id: plan('gpu'),
      what: 'gpu-config',
      repository: path.join(ctx.sbx.dir, 'repo-corrupt'),
      verify: { readDataSubset: '100%' },
    },
    { ...base, id: plan('old'), what: 'gpuops-config', repository: path.join(ctx.sbx.dir, 'repo-old') },
    // The models plan again, in a repository of its own (the older-node test backs it up on the one-step activities).
    { ...models, id: plan('older-node'), repository: path.join(ctx.sbx.dir, 'repo-older-node') },
  ];
  raw.notifications = [hook.notifier('ops')];
  writeFileSync(ctx.sbx.loaded.path, stringify(raw));
  loaded = { path: ctx.sbx.loaded.path, config: parseConfig(stringify(raw), ctx.sbx.loaded.path) };
});

function planConfig(name: string) {
  const p = loaded.config.backups.find((b) => b.id === plan(name));
  if (!p) throw new Error(`no plan ${name}`);
  return p;
}

function runNow(
  client: Client,
  name: string,
  extra: Partial<RunBackupInput> = {},
  workflowId = `${workflowIds.backupSchedule(plan(name))}:${uniqueId('t')}`,
): Promise<BackupRecord> {
  return client.workflow.execute('runBackup', {
    taskQueue: ctx.env.controlQueue,
    workflowId,
    args: [{ ...backupInputFor(loaded.config, planConfig(name)), timings, ...extra }],
  });
}

/** Trigger the plan's schedule and wait for the run it starts. */
async function triggerAndWait(client: Client, name: string, seen: number): Promise<BackupRecord> {
  const h = client.schedule.getHandle(workflowIds.backupSchedule(plan(name)));
  await h.trigger();
  for (let i = 0; i < 100; i++) {
    const d = await h.describe();
    const a = d.info.recentActions[seen];
    if (a) return client.workflow.getHandle(a.action.workflow.workflowId).result() as Promise<BackupRecord>;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the schedule did not start a run');
}

test('a plan runs from its schedule (triggered), makes a real restic snapshot tagged with plan, node and model digest; a second run is incremental', async () => {
  await syncSchedules(ctx.env.client, loaded.config, {
    taskQueue: ctx.env.controlQueue,
    idPrefix: `backup:${tag}`,
    inputOverrides: { timings },
  });
  const worker = await controlWorker(ctx.env, loaded);
  const [first, second] = await worker.runUntil(async () => {
    const a = await triggerAndWait(ctx.env.client, 'models', 0);
    const b = await triggerAndWait(ctx.env.client, 'models', 1);
    return [a, b];
  });
  expect(first.status).toBe('ok');
  expect(first.initialisedRepository).toBe(true);
  expect(first.backup?.filesNew).toBe(2); // manifest and blob; the partial download is excluded
  expect(first.verify).toMatchObject({ ok: true, testRestore: { ok: true, compared: 2 } });

  expect(second.initialisedRepository).toBe(false);
  expect(second.backup).toMatchObject({ filesNew: 0, filesChanged: 0, filesUnmodified: 2 });
  expect(second.backup?.dataAdded).toBeLessThan(first.backup?.dataAdded ?? 0);

  const snaps = await restic('models').snapshots();
  expect(snaps.map((s) => s.short_id)).toEqual([first.snapshotId, second.snapshotId]);
  expect(snaps[0]?.tags).toEqual(
    expect.arrayContaining([
      `plan:${plan('models')}`,
      `node:${ctx.sbx.nodeId}`,
      expect.stringMatching(/^model:tiny:latest@[0-9a-f]{12}$/),
    ]),
  );
  expect(snaps[1]?.parent).toBeDefined();
});

test('a restore reproduces the files byte for byte, skips partial downloads, and refuses a non-empty target unless forced', async () => {
  const worker = await controlWorker(ctx.env, loaded);
  const target = path.join(ctx.sbx.dir, 'restored');
  await worker.runUntil(async () => {
    const r = await restorePlan(
      ctx.env.client,
      loaded.config,
      { plan: plan('models'), target },
      { taskQueue: ctx.env.controlQueue, timings },
    );
    expect(r).toMatchObject({ files: 2, verified: true, rtoMs: 600_000, rtoBreached: false });
    const src = path.join(ctx.sbx.dir, 'models');
    const restoredRoot = path.join(target, src);
    for (const rel of ['blobs/sha256-aaaa', 'manifests/registry.ollama.ai/library/tiny/latest']) {
      expect(readFileSync(path.join(restoredRoot, rel)).equals(readFileSync(path.join(src, rel)))).toBe(true);
    }
    expect(existsSync(path.join(restoredRoot, 'blobs', 'sha256-bbbb-partial'))).toBe(false);

    // The workflow ID is restore:<plan>:<snapshot>; a second restore of the same snapshot runs as a new execution.
    const again = await restorePlan(
      ctx.env.client,
      loaded.config,
      { plan: plan('models'), target },
      { taskQueue: ctx.env.controlQueue, timings },
    ).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(WorkflowFailedError);
    const activityFailure = (again as WorkflowFailedError).cause;
    expect(activityFailure?.cause).toMatchObject({
      type: 'TargetNotEmpty',
      message: expect.stringMatching(/not empty/),
    });
    const forced = await restorePlan(
      ctx.env.client,
      loaded.config,
      { plan: plan('models'), target, force: true },
      { taskQueue: ctx.env.controlQueue, timings },
    );
    expect(forced.sha256).toBe(r.sha256);
  });
});

test('a corrupted repository makes verify fail and notifies', async () => {
  const worker = await controlWorker(ctx.env, loaded);
  await worker.runUntil(async () => {
    const okId = `${workflowIds.backupSchedule(plan('gpu'))}:${uniqueId('ok')}`;
    const ok = await runNow(ctx.env.client, 'gpu', {}, okId);
    expect(ok.status).toBe('ok');
    recordHistory(ctx.env, okId, 'run-backup-two-node-activities-ok');
    // Two node activities: pre-check and backup in one, retention and the check in the other.
    expect(await activityTypes(okId)).toEqual(['resticPrecheckAndBackup', 'resticForgetAndCheck']);
    // No test restore in this plan's verify policy: nothing is fingerprinted for one.
    expect(ok.backup?.samples).toEqual([]);
    expect(ok.verify?.testRestore).toBeNull();
    // The GPU config snapshot holds nvidia-smi -q -x and the facts parsed from it.
    const files = (await restic('corrupt').run(['ls', 'latest'])).stdout;
    expect(files).toMatch(/nvidia-smi-q\.xml/);
    expect(files).toMatch(/facts\.json/);

    // Damage every data pack: restic check --read-data-subset 100% must notice.
    damageDataPacks(path.join(ctx.sbx.dir, 'repo-corrupt'));
    received.length = 0;
    const failedId = `${workflowIds.backupSchedule(plan('gpu'))}:${uniqueId('corrupt')}`;
    const err = await runNow(ctx.env.client, 'gpu', {}, failedId).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    recordHistory(ctx.env, failedId, 'run-backup-two-node-activities-verify-failed');
    const cause = (err as WorkflowFailedError).cause as Error & { type?: string };
    expect(cause.type).toBe('BackupVerifyFailed');
    expect(received).toEqual([
      expect.objectContaining({ title: `backup ${plan('gpu')} failed at check`, severity: 'critical' }),
    ]);
  });
});

test('a failure in a merged node activity is recorded at the step that failed: a wrong password or too little free space at precheck, a missing path at backup', async () => {
  const models = backupInputFor(loaded.config, planConfig('models')).plan;
  writeFileSync(path.join(ctx.sbx.dir, 'wrong-pw'), 'not the password\n');
  // The first test made this repository; with the wrong password restic must refuse it, not create a new one.
  expect(existsSync(models.repository)).toBe(true);
  const worker = await controlWorker(ctx.env, loaded);
  await worker.runUntil(async () => {
    const cases = [
      { plan: { ...models, passwordFile: path.join(ctx.sbx.dir, 'wrong-pw') }, step: 'precheck', before: [] },
      { plan: { ...models, paths: [path.join(ctx.sbx.dir, 'no-such-dir')] }, step: 'backup', before: ['precheck'] },
      // minFree (as minFreeBytes) above what any disk here has: refused before anything is backed up.
      { plan: { ...models, minFreeBytes: Number.MAX_SAFE_INTEGER }, step: 'precheck', before: [] },
    ];
    for (const c of cases) {
      received.length = 0;
      const id = `${workflowIds.backupSchedule(plan('models'))}:${uniqueId(`fails-${c.step}`)}`;
      const err = await runNow(ctx.env.client, 'models', { plan: c.plan }, id).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect((err as WorkflowFailedError).cause).toMatchObject({ type: 'BackupFailed' });
      const record = await ctx.env.client.workflow.getHandle(id).query(getBackupRecordQuery);
      expect(record.steps.map((x) => [x.step, x.ok])).toEqual([
        ...c.before.map((step) => [step, true]),
        [c.step, false],
        ['notify', true],
      ]);
      expect(received).toEqual([
        expect.objectContaining({ title: `backup ${plan('models')} failed at ${c.step}`, severity: 'critical' }),
      ]);
      if (c.plan.minFreeBytes !== undefined) expect(record.steps[0]?.detail).toMatch(/^only \d+ bytes free at /);
      if (c.step === 'backup') {
        expect(record.steps[0]?.detail).toBe('repository ok (in the same activity as backup)');
        expect(record.initialisedRepository).toBe(false);
      }
      // Non-retryable: one activity, tried once, not five times.
      expect(await activityTypes(id)).toEqual(['resticPrecheckAndBackup', 'notify']);
      expect(await attempts(id)).toEqual([1, 1]);
    }
  });
});

/** The attempt each activity of a finished run ended on, in order. */
async function attempts(workflowId: string): Promise<number[]> {
  const history = await ctx.env.client.workflow.getHandle(workflowId).fetchHistory();
  return (history.events ?? []).flatMap((e) => e.activityTaskStartedEventAttributes?.attempt ?? []);
}

/** The activity types a finished run scheduled, in order. */
async function activityTypes(workflowId: string): Promise<string[]> {
  const history = await ctx.env.client.workflow.getHandle(workflowId).fetchHistory();
  return (history.events ?? []).flatMap((e) => e.activityTaskScheduledEventAttributes?.activityType?.name ?? []);
}

test('a node worker from before the merged activities runs the run on the one-step activities', async () => {
  // Stand in for an older node worker: today's backup activities without the two merged ones, on the node's queue.
  await ctx.sbx.sim.killWorker('SIGTERM');
  try {
    const node = loaded.config.nodes.find((n) => n.id === ctx.sbx.nodeId);
    if (!node) throw new Error(`no node ${ctx.sbx.nodeId} in the config`);
    const { resticPrecheckAndBackup, resticForgetAndCheck, ...older } = createBackupActivities({
      node,
      nvidiaSmi: new NvidiaSmi({ bin: path.join(ctx.sbx.dir, 'no-nvidia-smi') }),
    });
    expect([typeof resticPrecheckAndBackup, typeof resticForgetAndCheck]).toEqual(['function', 'function']);
    const nodeWorker = await Worker.create({
      connection: ctx.env.connection,
      namespace: 'default',
      taskQueue: nodeTaskQueue(ctx.sbx.nodeId),
      activities: older,
    });
    const control = await controlWorker(ctx.env, loaded);
    const id = `${workflowIds.backupSchedule(plan('older-node'))}:${uniqueId('t')}`;
    const record = await nodeWorker.runUntil(control.runUntil(runNow(ctx.env.client, 'older-node', {}, id)));
    expect(record.status).toBe('ok');
    expect(record.steps.map((x) => [x.step, x.ok])).toEqual([
      ['precheck', true],
      ['backup', true],
      ['forget', true],
      ['check', true],
      ['test-restore', true],
    ]);
    expect(record.verify).toMatchObject({ ok: true, testRestore: { ok: true } });
    // Each merged activity was tried once (the worker answered NotFoundError, not retried), then the four ran.
    expect(await attempts(id)).toEqual([1, 1, 1, 1, 1, 1, 1]);
    expect(await activityTypes(id)).toEqual([
      'resticPrecheckAndBackup',
      'resticPrecheck',
      'resticBackup',
      'resticForgetAndCheck',
      'resticForget',
      'resticCheck',
      'resticTestRestore',
    ]);
    recordHistory(ctx.env, id, 'run-backup-two-node-activities-older-node');
  } finally {
    await ctx.sbx.sim.startWorker();
  }
}, 60_000);

/** Wait until the sandbox's node worker (the process it runs now) polls its queue. */
async function nodeWorkerPolling(): Promise<void> {
  const pid = ctx.sbx.sim.status().worker.pid;
  if (pid === null) throw new Error('the sandbox node worker is not running');
  await waitForPoller(ctx.env.client, nodeTaskQueue(ctx.sbx.nodeId), 60_000, pid);
}

test('killing the node worker mid-backup and restarting it completes the run (stale restic lock removed on retry)', async () => {
  // The test before restarts the node worker: a run started before it polls could wait out its pick-up timeout.
  await nodeWorkerPolling();
  const worker = await controlWorker(ctx.env, loaded);
  await worker.runUntil(async () => {
    const handle = await ctx.env.client.workflow.start('runBackup', {
      taskQueue: ctx.env.controlQueue,
      workflowId: `${workflowIds.backupSchedule(plan('big'))}:${uniqueId('kill')}`,
      // 1.5 MB at 400 KiB/s keeps restic busy for ~4 s: long enough to kill the worker in the middle.
      args: [{ ...backupInputFor(loaded.config, planConfig('big')), timings, limitUploadKiB: 400 }],
    });
    const deadline = Date.now() + 30_000;
    // The run's node activity (pre-check and backup in one) heartbeats {stage: 'backup', …} once restic backs up.
    for (;;) {
      const pending = await pendingActivities(handle);
      if (pending.some((a) => a.type === 'resticPrecheckAndBackup' && a.details.stage === 'backup')) break;
      if (Date.now() > deadline) {
        const d = await handle.describe();
        throw new Error(
          `resticPrecheckAndBackup never reached its backup stage: run ${d.status.name}, pending ${JSON.stringify(pending)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    await ctx.sbx.sim.killWorker('SIGKILL');
    await new Promise((r) => setTimeout(r, 500));
    await ctx.sbx.sim.startWorker();
    const record = (await handle.result()) as BackupRecord;
    expect(record.status).toBe('ok');
    expect(record.backup?.unlocked).toBe(true);
    const history = await handle.fetchHistory();
    const attempts = (history.events ?? [])
      .filter((e) => e.activityTaskStartedEventAttributes)
      .map((e) => e.activityTaskStartedEventAttributes?.attempt ?? 1);
    expect(Math.max(...attempts)).toBeGreaterThanOrEqual(2);
    const snaps = await restic('big').snapshots();
    expect(snaps.map((s) => s.short_id)).toContain(record.snapshotId);
  });
}, 120_000);

test('backup status marks a plan whose last success is older than its RPO', async () => {
  // The "old" plan's only snapshot was taken two hours ago (restic --time); its RPO is 1h.
  const old = restic('old');
  await old.init();
  const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000).toISOString().slice(0, 19).replace('T', ' ');
  await old.backup([path.join(ctx.sbx.dir, 'small')], { time: twoHoursAgo, tags: [`plan:${plan('old')}`] });
  const worker = await controlWorker(ctx.env, loaded);
  const rows = await worker.runUntil(
    backupStatus(ctx.env.client, loaded.config, { taskQueue: ctx.env.controlQueue, timings }),
  );
  const byPlan = new Map(rows.map((r) => [r.plan, r]));
  expect(byPlan.get(plan('old'))).toMatchObject({ breached: true, snapshots: 1, error: null });
  expect(byPlan.get(plan('models'))).toMatchObject({ breached: false, snapshots: 2, error: null });
  expect(byPlan.get(plan('models'))?.repositorySizeBytes).toBeGreaterThan(0);
  expect(byPlan.get(plan('models'))?.lastVerify).toMatchObject({ ok: true });
  expect(byPlan.get(plan('gpu'))?.lastVerify).toMatchObject({ ok: false });
  const text = renderStatus(rows);
  expect(text).toMatch(new RegExp(`${plan('old')}.*BREACH`));
  expect(text).not.toMatch(new RegExp(`${plan('models')}.*BREACH`));
});
