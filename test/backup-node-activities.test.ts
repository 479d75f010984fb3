/**
 * The two merged node activities of a plan run (patch backup-two-node-activities) against the real restic: which
 * restic commands each runs (through a logging wrapper that execs restic), first runs and repeat runs, a retry
 * after a killed worker, resuming at the check, and a failure that names its step. The activity context (attempt,
 * heartbeat details of an earlier attempt) is the SDK's MockActivityEnvironment; no Temporal server is involved.
 */
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createBackupActivities, type PrecheckAndBackupInput } from '../activities/backup';
import { NvidiaSmi } from '../src/hosts/nvidia-smi';
import { ResticCli } from '../src/hosts/restic';
import { damageDataPacks } from './helpers/restic-damage';
import { nodeConfig, tempDir } from './sandbox/helpers';

let dir: string;
let cleanup: () => void;
let acts: ReturnType<typeof createBackupActivities>;
const log = (): string => path.join(dir, 'restic-calls');

/** The restic subcommands run since the last call (the wrapper logs each invocation's first argument). */
function calls(): string[] {
  let text = '';
  try {
    text = readFileSync(log(), 'utf8');
  } catch {
    return [];
  }
  rmSync(log(), { force: true });
  return text.split('\n').filter((l) => l !== '');
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('gpuops-backup-acts-'));
  const wrapper = path.join(dir, 'restic-logged');
  writeFileSync(wrapper, `#!/bin/sh\necho "$1" >> '${log()}'\nexec restic "$@"\n`);
  chmodSync(wrapper, 0o755);
  writeFileSync(path.join(dir, 'pw'), 'node-activities-test\n');
  writeFileSync(path.join(dir, 'wrong-pw'), 'not the password\n');
  mkdirSync(path.join(dir, 'models'));
  writeFileSync(path.join(dir, 'models', 'weights.bin'), Buffer.alloc(200_000, 7));
  writeFileSync(path.join(dir, 'models', 'manifest.json'), '{"layers":[]}\n');
  // A model-store plan never reads the GPU: an nvidia-smi that does not exist fails loudly if it ever did.
  const nvidiaSmi = new NvidiaSmi({ bin: path.join(dir, 'no-nvidia-smi') });
  acts = createBackupActivities({ node: await nodeConfig('acts-node'), nvidiaSmi, resticBin: wrapper });
});

afterAll(() => cleanup());

const plan = (id: string, extra: Partial<PrecheckAndBackupInput> = {}): PrecheckAndBackupInput => ({
  plan: id,
  repository: path.join(dir, 'repos', id),
  passwordFile: path.join(dir, 'pw'),
  what: 'model-store',
  paths: [path.join(dir, 'models')],
  runTag: `run-${id}-1`,
  samples: 0,
  ...extra,
});

/** Run an activity in a mock activity context, typed by the activity's own result. */
function inMock<A extends unknown[], R>(
  env: MockActivityEnvironment,
  fn: (...args: A) => Promise<R>,
  ...args: A
): Promise<R> {
  return env.run(fn, ...args) as Promise<R>;
}

/** What a merged activity threw, as the ApplicationFailure it must be. */
async function failure(p: Promise<unknown>): Promise<ApplicationFailure> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  if (!(err instanceof ApplicationFailure)) throw new Error(`expected an ApplicationFailure, got ${String(err)}`);
  return err;
}

test('a first run creates the missing local repository and backs up: init and backup, no separate pre-check open', async () => {
  const r = await inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, plan('first'));
  expect(calls()).toEqual(['init', 'backup']);
  expect(r.precheck.initialised).toBe(true);
  expect(r.precheck.freeBytes).toBeGreaterThan(0);
  expect(r.backup).toMatchObject({ filesNew: 2, reused: false, unlocked: false, incomplete: false });

  const again = await inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, {
    ...plan('first'),
    runTag: 'run-first-2',
  });
  // The repository opens once: restic backup's own open is the pre-check's "reachable, password right".
  expect(calls()).toEqual(['backup']);
  expect(again.precheck.initialised).toBe(false);
  expect(again.backup).toMatchObject({ filesNew: 0, filesChanged: 0, filesUnmodified: 2 });
  const snaps = await new ResticCli({
    repository: plan('first').repository,
    passwordFile: path.join(dir, 'pw'),
  }).snapshots();
  expect(snaps.map((s) => s.short_id)).toEqual([r.backup.snapshotId, again.backup.snapshotId]);
});

test('a repository path that exists but holds no repository: restic backup says so, the repository is created, the backup runs again', async () => {
  mkdirSync(plan('empty-dir').repository, { recursive: true });
  const r = await inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, plan('empty-dir'));
  expect(calls()).toEqual(['backup', 'init', 'backup']);
  expect(r.precheck.initialised).toBe(true);
  expect(r.backup.filesNew).toBe(2);
});

test('failures name their step: no repository (init refused) and wrong password are the pre-check, a missing path the backup', async () => {
  const noRepo = await failure(
    inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, { ...plan('no-init'), initIfMissing: false }),
  );
  expect(noRepo).toMatchObject({ type: 'ResticNoRepository', nonRetryable: true, details: [{ step: 'precheck' }] });
  expect(calls()).toEqual([]);

  // A repository of this test's own, made by a first run.
  await inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, plan('fails'));
  calls();
  const wrong = await failure(
    inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, {
      ...plan('fails'),
      passwordFile: path.join(dir, 'wrong-pw'),
      runTag: 'run-fails-wrong',
    }),
  );
  expect(wrong).toMatchObject({ type: 'ResticWrongPassword', nonRetryable: true, details: [{ step: 'precheck' }] });
  expect(calls()).toEqual(['backup']);

  const full = await failure(
    inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, { ...plan('fails'), minFreeBytes: 2 ** 60 }),
  );
  expect(full).toMatchObject({ type: 'RepositoryFull', nonRetryable: true, details: [{ step: 'precheck' }] });
  expect(full.message).toMatch(/^only \d+ bytes free at .*\(need \d+\)$/);
  expect(calls()).toEqual([]);

  const missing = await failure(
    inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, {
      ...plan('fails'),
      paths: [path.join(dir, 'no-such-models')],
    }),
  );
  expect(missing).toMatchObject({
    type: 'MissingPath',
    nonRetryable: true,
    details: [{ step: 'backup', initialised: false }],
  });
  expect(calls()).toEqual([]);
  // The same on a first run: the failure says the pre-check created the repository.
  const fresh = await failure(
    inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, {
      ...plan('fails-fresh'),
      paths: [path.join(dir, 'no-such-models')],
    }),
  );
  expect(fresh).toMatchObject({ type: 'MissingPath', details: [{ step: 'backup', initialised: true }] });
  expect(calls()).toEqual(['init']);
});

test('a retry after a killed worker unlocks and reuses the snapshot the first attempt finished, and backs up nothing again', async () => {
  const first = await inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, plan('retry'));
  calls();
  const retry = await inMock(new MockActivityEnvironment({ attempt: 2 }), acts.resticPrecheckAndBackup, plan('retry'));
  expect(calls()).toEqual(['unlock', 'snapshots']);
  expect(retry.backup).toMatchObject({ snapshotId: first.backup.snapshotId, reused: true, unlocked: true });
  expect(retry.precheck.initialised).toBe(false);

  // A first attempt that died before it created the repository: the retry creates it and backs up.
  const late = await inMock(new MockActivityEnvironment({ attempt: 2 }), acts.resticPrecheckAndBackup, plan('late'));
  expect(calls()).toEqual(['unlock', 'init', 'backup']);
  expect(late.precheck.initialised).toBe(true);
  expect(late.backup).toMatchObject({ reused: false, filesNew: 2 });
});

test('forget and check in one activity; a retry whose earlier attempt heartbeated the retention goes straight to the check', async () => {
  const p = plan('retention');
  for (const n of [1, 2, 3]) {
    await inMock(new MockActivityEnvironment(), acts.resticPrecheckAndBackup, { ...p, runTag: `run-retention-${n}` });
  }
  calls();
  const repo = { plan: p.plan, repository: p.repository, passwordFile: p.passwordFile };
  const beats: unknown[] = [];
  const env = new MockActivityEnvironment();
  env.on('heartbeat', (d: unknown) => beats.push(d));
  const r = await inMock(env, acts.resticForgetAndCheck, {
    ...repo,
    retention: { keepLast: 1 },
    readDataSubset: '100%',
  });
  expect(calls()).toEqual(['forget', 'check']);
  expect(r.retention.kept).toHaveLength(1);
  expect(r.retention.removed).toHaveLength(2);
  expect(r.check.ok).toBe(true);
  expect(r.retentionResumed).toBe(false);
  // The check's heartbeat carries the retention's result: what a retry resumes from.
  expect(beats).toContainEqual({ stage: 'check', retention: r.retention });

  const retry = new MockActivityEnvironment({
    attempt: 2,
    heartbeatDetails: { stage: 'check', retention: r.retention },
  });
  const resumed = await inMock(retry, acts.resticForgetAndCheck, {
    ...repo,
    retention: { keepLast: 1 },
    readDataSubset: '5%',
  });
  expect(calls()).toEqual(['check']);
  expect(resumed).toMatchObject({ retention: r.retention, retentionResumed: true, check: { ok: true } });

  // An empty policy forgets nothing and runs no forget; a damaged repository is check.ok=false, not a failure.
  damageDataPacks(p.repository);
  const damaged = await inMock(new MockActivityEnvironment(), acts.resticForgetAndCheck, {
    ...repo,
    retention: {},
    readDataSubset: '100%',
  });
  expect(calls()).toEqual(['check']);
  expect(damaged.retention).toEqual({ kept: [], removed: [] });
  expect(damaged.check.ok).toBe(false);

  const wrong = await failure(
    inMock(new MockActivityEnvironment(), acts.resticForgetAndCheck, {
      ...repo,
      passwordFile: path.join(dir, 'wrong-pw'),
      retention: { keepLast: 1 },
    }),
  );
  expect(wrong).toMatchObject({ type: 'ResticWrongPassword', nonRetryable: true, details: [{ step: 'forget' }] });
  // Failing at the check after the retention: the failure carries the retention's result for the record.
  const atCheck = await failure(
    inMock(
      new MockActivityEnvironment({ attempt: 2, heartbeatDetails: { stage: 'check', retention: r.retention } }),
      acts.resticForgetAndCheck,
      { ...repo, passwordFile: path.join(dir, 'wrong-pw'), retention: { keepLast: 1 } },
    ),
  );
  expect(atCheck).toMatchObject({ type: 'ResticWrongPassword', details: [{ step: 'check', retention: r.retention }] });
});
