/**
 * `gpuops schedules sync` against a real Temporal server: creates, updates and deletes the Temporal Schedules
 * backup:<plan> to match the config, idempotently, and never undoes an operator's pause.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { msToTs } from '@temporalio/common/lib/time';
import { ScheduleNotFoundError, ScheduleOverlapPolicy } from '@temporalio/client';
import { parseConfig } from '../src/config/load';
import type { Config } from '../src/config/schema';
import { ValidationError } from '../src/domain/validation';
import { requirePlan } from '../src/cli/backup';
import { listSchedules, syncSchedules } from '../src/temporal/schedules';
import { openTestEnv, uniqueId, type TestEnv } from './helpers/env';

let env: TestEnv;
const tag = uniqueId('s').toLowerCase();
const prefix = `backup:${tag}`;

beforeAll(async () => {
  env = await openTestEnv();
});

afterAll(async () => {
  for await (const s of listSchedules(env.client, prefix)) await env.client.schedule.getHandle(s.scheduleId).delete();
  await env?.close();
});

function config(plans: { id: string; schedule: Record<string, unknown> }[]): Config {
  return parseConfig(
    JSON.stringify({
      nodes: [{ id: 'n1' }],
      backups: plans.map((p) => ({
        id: `${tag}-${p.id}`,
        node: 'n1',
        what: 'gpu-config',
        repository: '/srv/restic/gpu',
        passwordFile: '/etc/gpuops/restic-pw',
        rpo: '1d',
        schedule: p.schedule,
      })),
    }),
    'test.yaml',
  );
}

const sync = (c: Config) => syncSchedules(env.client, c, { idPrefix: prefix, taskQueue: env.controlQueue });

test('creates one schedule per plan with overlap SKIP, the catch-up window and pause-on-failure; a second sync changes nothing', async () => {
  const c = config([
    { id: 'a', schedule: { cron: '0 3 * * *', timezone: 'Europe/Berlin', jitter: '5m', pauseOnFailure: true } },
    { id: 'b', schedule: { every: '6h', catchupWindow: '30m' } },
  ]);
  const first = await sync(c);
  expect(first.created.sort()).toEqual([`${prefix}-a`, `${prefix}-b`]);
  const a = await env.client.schedule.getHandle(`${prefix}-a`).describe();
  expect(a.policies).toMatchObject({
    overlap: ScheduleOverlapPolicy.SKIP,
    pauseOnFailure: true,
    catchupWindow: 3_600_000,
  });
  expect(a.spec.timezone).toBe('Europe/Berlin');
  expect(a.spec.jitter).toBe(300_000);
  expect(a.action).toMatchObject({ type: 'startWorkflow', workflowType: 'runBackup', workflowId: `${prefix}-a` });
  const b = await env.client.schedule.getHandle(`${prefix}-b`).describe();
  expect(b.spec.intervals?.[0]?.every).toBe(6 * 3_600_000);
  expect(b.policies.catchupWindow).toBe(30 * 60_000);

  const second = await sync(c);
  expect(second).toEqual({
    created: [],
    updated: [],
    deleted: [],
    unchanged: expect.arrayContaining([`${prefix}-a`, `${prefix}-b`]),
  });
});

test('after a config edit sync updates the schedule and keeps it paused; removing a plan deletes its schedule', async () => {
  await sync(
    config([
      { id: 'c', schedule: { cron: '0 3 * * *' } },
      { id: 'd', schedule: { every: '1h' } },
    ]),
  );
  const c = env.client.schedule.getHandle(`${prefix}-c`);
  await c.pause('operator paused it');

  const edited = await sync(
    config([
      { id: 'c', schedule: { cron: '30 4 * * *' } },
      { id: 'd', schedule: { every: '1h' } },
    ]),
  );
  expect(edited.updated).toEqual([`${prefix}-c`]);
  expect(edited.unchanged).toContain(`${prefix}-d`);
  const after = await c.describe();
  expect(after.state.paused).toBe(true);
  // Temporal stores a cron expression as a calendar: 04:30 every day.
  expect(after.spec.calendars?.[0]).toMatchObject({
    hour: [{ start: 4, end: 4, step: 1 }],
    minute: [{ start: 30, end: 30, step: 1 }],
  });

  // Remove plan d (and the earlier a, b). List is eventually consistent: retry until the deletion shows.
  const only = config([{ id: 'c', schedule: { cron: '30 4 * * *' } }]);
  const deleted = new Set<string>();
  for (let i = 0; i < 50 && !deleted.has(`${prefix}-d`); i++) {
    (await sync(only)).deleted.forEach((d) => deleted.add(d));
    if (!deleted.has(`${prefix}-d`)) await sleep(200);
  }
  expect(deleted).toContain(`${prefix}-d`);
  await expect(env.client.schedule.getHandle(`${prefix}-d`).describe()).rejects.toBeInstanceOf(ScheduleNotFoundError);
  await expect(c.describe()).resolves.toBeDefined();
});

test('a change to an option sync sends outside the plan (the execution timeout) updates the existing schedule', async () => {
  const c = config([{ id: 'opt', schedule: { cron: '0 5 * * *' } }]);
  expect((await sync(c)).created).toEqual([`${prefix}-opt`]);
  const h = env.client.schedule.getHandle(`${prefix}-opt`);
  const before = await h.describe();
  expect(before.action).toMatchObject({ type: 'startWorkflow', workflowExecutionTimeout: 86_400_000 });

  const changed = await syncSchedules(env.client, c, {
    idPrefix: prefix,
    taskQueue: env.controlQueue,
    executionTimeout: '2h',
  });
  expect(changed.updated).toEqual([`${prefix}-opt`]);
  const after = await h.describe();
  expect(after.action).toMatchObject({ type: 'startWorkflow', workflowExecutionTimeout: 2 * 3_600_000 });
  // Nothing else moved, and the next sync with the same options finds it up to date.
  expect(after.spec).toEqual(before.spec);
  expect(after.policies).toEqual(before.policies);
  const again = await syncSchedules(env.client, c, {
    idPrefix: prefix,
    taskQueue: env.controlQueue,
    executionTimeout: '2h',
  });
  expect(again.unchanged).toContain(`${prefix}-opt`);
  expect(again.updated).toEqual([]);
});

test('never touches schedules outside its prefix', async () => {
  await env.client.schedule.create({
    scheduleId: `other-${tag}`,
    spec: { intervals: [{ every: '1d' }] },
    action: { type: 'startWorkflow', workflowType: 'runBackup', taskQueue: env.controlQueue, args: [] },
  });
  try {
    await expect(syncSchedules(env.client, config([]), { idPrefix: 'other-' })).rejects.toThrow(
      /must start with "backup:"/,
    );
    await syncSchedules(env.client, config([]), { idPrefix: `${prefix}-` });
    await expect(env.client.schedule.getHandle(`other-${tag}`).describe()).resolves.toBeDefined();
  } finally {
    await env.client.schedule.getHandle(`other-${tag}`).delete();
  }
});

test('another schedule in the namespace that this client cannot decode (an encrypted memo) does not stop the sync', async () => {
  // What another application's (or another key's) schedule looks like to a client without its codec.
  const foreign = `other-${tag}-encrypted`;
  const encrypted = {
    metadata: { encoding: new TextEncoder().encode('binary/encrypted') },
    data: new Uint8Array([1, 2, 3]),
  };
  await env.client.workflowService.createSchedule({
    namespace: 'default',
    scheduleId: foreign,
    requestId: uniqueId('req'),
    schedule: {
      spec: { interval: [{ interval: msToTs('1d') }] },
      action: {
        startWorkflow: {
          workflowId: foreign,
          workflowType: { name: 'runBackup' },
          taskQueue: { name: env.controlQueue },
        },
      },
      state: { paused: true },
    },
    memo: { fields: { note: encrypted } },
  });
  try {
    // The SDK's own list cannot read it (the failure this guards against)...
    const sdkList = async () => {
      for await (const s of env.client.schedule.list()) void s;
    };
    await waitFor(
      async () =>
        (await sdkList().then(
          () => 'listed',
          (e: Error) => e.message,
        )) !== 'listed',
    );
    await expect(sdkList()).rejects.toThrow(/Unknown encoding: binary\/encrypted/);
    // ...and the sync, which lists to delete what the config no longer has, still works, and deletes ours only.
    const c = config([{ id: 'enc', schedule: { every: '1d' } }]);
    expect((await sync(c)).created).toEqual([`${prefix}-enc`]);
    await waitFor(async () => {
      for await (const s of listSchedules(env.client, `${prefix}-enc`)) if (s.scheduleId) return true;
      return false;
    });
    expect((await sync(config([]))).deleted).toEqual([`${prefix}-enc`]);
    const kept = await env.client.workflowService.describeSchedule({ namespace: 'default', scheduleId: foreign });
    expect(kept.schedule?.state?.paused).toBe(true);
  } finally {
    await env.client.schedule.getHandle(foreign).delete();
  }
});

/** Poll until `pred` holds (the schedule list is eventually consistent), at most 15 s. */
async function waitFor(pred: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error('condition never held');
    await sleep(200);
  }
}

test('an unknown plan on the command line is a field-named validation error (exit 2)', () => {
  const c = config([{ id: 'a', schedule: { every: '1h' } }]);
  expect(() => requirePlan(c, 'nope')).toThrow(ValidationError);
  expect(() => requirePlan(c, 'nope')).toThrow(/plan: must be one of/);
  expect(() => requirePlan(c, 'Bad Id')).toThrow(/plan: must be a backup plan id/);
});
