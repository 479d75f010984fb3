/**
 * watchNode's one-activity probe round (patch 'watch-single-probe-activity') on a real Temporal dev server with a
 * sandbox node whose real node worker runs as a child process: a round is one probeRound activity, a hung engine
 * costs a round its short generation deadline (not the health timeout), and a single-probe blip starts nothing.
 */
import { ApplicationFailure } from '@temporalio/common';
import { Worker } from '@temporalio/worker';
import { createNodeActivities } from '../activities/node';
import { createProbeRoundActivities, type ProbeRoundDeps } from '../activities/probe-round';
import { DockerCli } from '../src/hosts/docker';
import { KernelLog } from '../src/hosts/kernel-log';
import { NvidiaSmi } from '../src/hosts/nvidia-smi';
import { clearFaults, injectFault, type SandboxFaultKind } from '../src/sandbox/faults';
import {
  WatchNodeInput,
  getWatchStatusQuery,
  nodeTaskQueue,
  setMaintenanceUpdate,
  workflowIds,
  type WatchStatus,
} from '../src/contracts';
import type { recoverNode, watchNode } from '../workflows/recovery';
import { FAST_RECOVERY, controlWorker, recordHistory, useSandboxEnv, type TestSandbox } from './helpers/env';
import { containerState, gpuStatus, healthyProbes } from './helpers/hosts';
import { eventTime, roundLeadInMs, roundTimes, scheduledActivities } from './helpers/watch-history';
import { startWebhookReceiver } from './helpers/webhook';

const ctx = useSandboxEnv();

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A watcher at 1 s probes, threshold 3; probeTimeout 6 s, so a full-timeout hang would cost each probe 4 s. */
function startWatcher(s: TestSandbox, extra: Record<string, unknown> = {}) {
  return ctx.env.client.workflow.start<typeof watchNode>('watchNode', {
    taskQueue: ctx.env.controlQueue,
    workflowId: workflowIds.watch(s.nodeId),
    args: [
      {
        node: s.nodeId,
        probeInterval: '1s',
        failureThreshold: 3,
        pickupTimeout: '2s',
        probeTimeout: '6s',
        generateTimeout: '500ms',
        recovery: { ...FAST_RECOVERY, maxRecoveries: 100 },
        ...extra,
      },
    ],
  });
}

async function withControl<T>(s: TestSandbox, fn: (w: Worker) => Promise<T>): Promise<T> {
  const w = await controlWorker(ctx.env, s.loaded);
  return w.runUntil(fn(w));
}

async function statusWhen(
  h: Awaited<ReturnType<typeof startWatcher>>,
  pred: (s: WatchStatus) => boolean,
  timeoutMs = 30_000,
): Promise<WatchStatus> {
  const deadline = Date.now() + timeoutMs;
  let st = await h.query(getWatchStatusQuery);
  while (!pred(st)) {
    if (Date.now() > deadline) throw new Error(`watcher status never matched: ${JSON.stringify(st)}`);
    await sleep(50);
    st = await h.query(getWatchStatusQuery);
  }
  return st;
}

test('probeRound refuses a deadline that is not a number of ms ≥ 50, naming the field', async () => {
  const none = () => Promise.reject(new Error('must not run'));
  const acts = createProbeRoundActivities({
    inspectContainers: none,
    queryGpus: none,
    readXidEvents: none,
    probeEngines: none,
    checkDisks: none,
  });
  await expect(
    acts.probeRound({ generate: true, timeoutMs: 1000, generateTimeoutMs: 10, xidSince: new Date().toISOString() }),
  ).rejects.toThrow(/generateTimeoutMs must be a number ≥ 50 ms \(got 10\)/);
  await expect(
    acts.probeRound({ generate: true, timeoutMs: NaN, generateTimeoutMs: 500, xidSince: new Date().toISOString() }),
  ).rejects.toThrow(/timeoutMs must be a number ≥ 50 ms \(got NaN\)/);
});

test('a probe that throws is a failure named in the round; the other four results are kept', async () => {
  const acts = createProbeRoundActivities({
    ...healthyProbes(),
    readXidEvents: () => Promise.reject(new Error('dmesg: read kernel buffer failed')),
  });
  const r = await acts.probeRound({
    generate: true,
    timeoutMs: 1000,
    generateTimeoutMs: 500,
    xidSince: new Date().toISOString(),
  });
  expect(r.failures).toEqual([{ probe: 'readXidEvents', error: 'dmesg: read kernel buffer failed' }]);
  expect(r.disks).toEqual([{ path: '/models', totalBytes: 100e9, freeBytes: 50e9 }]);
  expect(r.xids).toEqual([]);
});

test('a round answers by its deadline: a probe still running then is a failure, the engines get the budget', async () => {
  let budgetMs: number | undefined;
  const acts = createProbeRoundActivities({
    ...healthyProbes(),
    inspectContainers: () => new Promise(() => undefined), // a docker CLI that never returns
    probeEngines: (input) => {
      budgetMs = input.budgetMs;
      return Promise.resolve([]);
    },
  });
  const started = Date.now();
  const r = await acts.probeRound({
    generate: true,
    timeoutMs: 600,
    generateTimeoutMs: 500,
    xidSince: new Date().toISOString(),
  });
  expect(Date.now() - started).toBeLessThan(1_500);
  expect(r.failures).toEqual([{ probe: 'inspectContainers', error: "did not answer within the round's 600 ms" }]);
  expect(budgetMs).toBeLessThan(600);
}, 10_000);

test('watchNode refuses a generateTimeout under 50ms, naming the field and the rule', () => {
  const r = WatchNodeInput.safeParse({ node: 'n1', generateTimeout: '10ms' });
  expect(r.success).toBe(false);
  expect(r.error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual([
    'generateTimeout: must be at least 50ms',
  ]);
  expect(WatchNodeInput.safeParse({ node: 'n1', generateTimeout: '50ms' }).success).toBe(true);
});

/** A node worker in this process on the sandbox's queue, serving the given activities (the sandbox runs none). */
function nodeWorker(s: TestSandbox, activities: object): Promise<Worker> {
  return Worker.create({
    connection: ctx.env.connection,
    namespace: 'default',
    taskQueue: nodeTaskQueue(s.nodeId),
    activities,
  });
}

/** A node worker from before probeRound: the real single probes over the sandbox's shims, and no probeRound. */
function oldNodeActivities(s: TestSandbox): object {
  const env = s.sim.shimEnv();
  const node = s.loaded.config.nodes[0];
  if (!node) throw new Error('no node');
  const acts = createNodeActivities(node, {
    configPath: s.loaded.path,
    docker: new DockerCli({ env }),
    nvidiaSmi: new NvidiaSmi({ env }),
    kernelLog: new KernelLog({ env }),
  });
  return Object.fromEntries(Object.entries(acts).filter(([name]) => name !== 'probeRound'));
}

/** The probeRound inputs and failure types of a watcher's history. */
async function roundsOf(h: Awaited<ReturnType<typeof startWatcher>>) {
  const events = (await h.fetchHistory()).events ?? [];
  const inputs = events.flatMap((e) => {
    const a = e.activityTaskScheduledEventAttributes;
    if (a?.activityType?.name !== 'probeRound') return [];
    const data = a.input?.payloads?.[0]?.data;
    return [JSON.parse(Buffer.from(data ?? new Uint8Array()).toString('utf8')) as { generateTimeoutMs: number }];
  });
  const failures = events.flatMap((e) => {
    const f = e.activityTaskFailedEventAttributes?.failure;
    return f ? [{ type: f.applicationFailureInfo?.type }] : [];
  });
  return { events, inputs, failures };
}

test('an old node worker without probeRound gets the five single probes that round, and the watcher goes on', async () => {
  const s = await ctx.sandbox({ withWorker: false });
  const old = await nodeWorker(s, oldNodeActivities(s));
  // No generateTimeout: the default must be what single probes gave the generation (probeTimeout 6 s less 2 s).
  const h = await startWatcher(s, { generateTimeout: undefined });
  await old.runUntil(
    withControl(s, async () => {
      const st = await statusWhen(h, (x) => x.probes >= 3 && x.lastReport?.healthy === true);
      expect(st.consecutiveFailures).toBe(0);
      await h.terminate('test done');
    }),
  );
  recordHistory(ctx.env, workflowIds.watch(s.nodeId), 'watch-node-probe-round-fallback', h.firstExecutionRunId);
  const { events, inputs, failures } = await roundsOf(h);
  expect(inputs.length).toBeGreaterThanOrEqual(3);
  expect(inputs.every((i) => i.generateTimeoutMs === 4_000)).toBe(true);
  // Each round's probeRound fails once (NotFoundError is not retried), then the single probes run; the last one may
  // still be in flight when the watcher is terminated (a sub-second rest is the next round's lead-in, not a timer).
  expect(failures.length).toBeGreaterThanOrEqual(inputs.length - 1);
  expect(failures.length).toBeLessThanOrEqual(inputs.length);
  expect(failures.every((f) => f.type === 'NotFoundError')).toBe(true);
  const single = scheduledActivities(events).filter((t) => t === 'inspectContainers');
  expect(single.length).toBeGreaterThanOrEqual(3);
}, 60_000);

test('a round that fails on the node worker is an unhealthy report, not the end of the watcher', async () => {
  const s = await ctx.sandbox({ withWorker: false });
  const broken = await nodeWorker(s, {
    probeRound: () => Promise.reject(ApplicationFailure.nonRetryable('the node is on fire', 'Boom')),
  });
  const h = await startWatcher(s, { failureThreshold: 100 });
  await broken.runUntil(
    withControl(s, async () => {
      const st = await statusWhen(h, (x) => x.consecutiveFailures >= 2);
      expect(st.lastReport).toMatchObject({ healthy: false, recommendedRung: 'escalate' });
      expect(st.lastReport?.problems).toEqual([`probe-failed ${s.nodeId}`]);
      expect((await h.describe()).status.name).toBe('RUNNING');
      await h.terminate('test done');
    }),
  );
}, 60_000);

test('a watcher round is one probeRound activity on the node queue, and the history says so', async () => {
  const s = await ctx.sandbox();
  const h = await startWatcher(s);
  await withControl(s, async () => {
    await statusWhen(h, (st) => st.probes >= 4 && st.lastReport?.healthy === true);
    await h.terminate('test done');
  });
  recordHistory(ctx.env, workflowIds.watch(s.nodeId), 'watch-node-single-probe-activity', h.firstExecutionRunId);
  const history = await h.fetchHistory();
  const events = history.events ?? [];
  const scheduled = events.flatMap((e) => {
    const a = e.activityTaskScheduledEventAttributes;
    return a ? [{ type: a.activityType?.name, queue: a.taskQueue?.name }] : [];
  });
  const markers = events.flatMap((e) => {
    const m = e.markerRecordedEventAttributes;
    return m?.markerName === 'core_patch' ? [m] : [];
  });
  const rounds = scheduled.filter((a) => a.type === 'probeRound');
  // nodeFacts (control queue) once, then probeRound per round and releaseAutoDrain at the first healthy one.
  expect(rounds.length).toBeGreaterThanOrEqual(4);
  expect(rounds.every((a) => a.queue === `gpuops-node-${s.nodeId}`)).toBe(true);
  expect(scheduled.map((a) => a.type).filter((t) => t !== 'probeRound')).toEqual(['nodeFacts', 'releaseAutoDrain']);
  expect(markers.length).toBeGreaterThanOrEqual(1);
}, 60_000);

/** Per probeRound of a history, in order: its lead-in, run time, and the timers started before the next round. */
function roundsAndTimers(events: Awaited<ReturnType<typeof roundsOf>>['events']) {
  const rounds: { scheduledAt: number; leadInMs: number; ms: number; timersMs: number[] }[] = [];
  const started = new Map<number, number>();
  const index = new Map<number, number>();
  for (const e of events) {
    const id = Number(e.eventId);
    const a = e.activityTaskScheduledEventAttributes;
    if (a?.activityType?.name === 'probeRound') {
      index.set(id, rounds.length);
      rounds.push({ scheduledAt: eventTime(e), leadInMs: roundLeadInMs(a), ms: NaN, timersMs: [] });
    }
    const st = e.activityTaskStartedEventAttributes;
    if (st) started.set(Number(st.scheduledEventId), eventTime(e));
    const done = e.activityTaskCompletedEventAttributes;
    const i = done ? index.get(Number(done.scheduledEventId)) : undefined;
    const begun = done ? started.get(Number(done.scheduledEventId)) : undefined;
    if (i !== undefined && begun !== undefined) rounds[i]!.ms = eventTime(e) - begun;
    const timer = e.timerStartedEventAttributes?.startToFireTimeout;
    if (timer && rounds.length > 0)
      rounds[rounds.length - 1]!.timersMs.push(Number(timer.seconds ?? 0) * 1000 + (timer.nanos ?? 0) / 1e6);
  }
  return rounds;
}

test("the probe interval is a cadence: a round counts against it, its sub-second rest is the next round's lead-in", async () => {
  const s = await ctx.sandbox({ withWorker: false });
  const scripted = scriptedRounds(s, [{}]) as { probeRound: (input: unknown) => Promise<unknown> };
  let delayMs = 200;
  const worker = await nodeWorker(s, {
    probeRound: async (input: unknown) => {
      await sleep(delayMs);
      return scripted.probeRound(input);
    },
  });
  const h = await startWatcher(s, { failureThreshold: 100, probeInterval: '2s' });
  await worker.runUntil(
    withControl(s, async () => {
      const st = await statusWhen(h, (x) => x.probes >= 3);
      // Rounds that leave less than a second of the 2 s interval: no timer, the rest waited out on the node.
      delayMs = 1_300;
      await statusWhen(h, (x) => x.probes >= st.probes + 4);
      // Rounds longer than the interval: the next one follows at once.
      delayMs = 2_500;
      await statusWhen(h, (x) => x.probes >= st.probes + 7);
      await h.terminate('test done');
    }),
  );
  recordHistory(ctx.env, workflowIds.watch(s.nodeId), 'watch-node-probe-cadence', h.firstExecutionRunId);
  const rounds = roundsAndTimers((await h.fetchHistory()).events ?? []);
  // The run time a round shows in the history is its lead-in plus its probing.
  const probing = (r: (typeof rounds)[number]): number => r.ms - r.leadInMs;
  // Wide margins between the kinds: the watcher decides on its own elapsed time, the round's run time plus the
  // task round trips around it, which a loaded machine stretches by a few hundred ms.
  const short = rounds.filter((r) => probing(r) < 600);
  const middle = rounds.filter((r) => probing(r) >= 1_250 && probing(r) < 1_650);
  const long = rounds.filter((r) => probing(r) >= 2_400);
  expect([short.length, middle.length, long.length].every((n) => n >= 2)).toBe(true);
  // A 0.2 s round leaves more than a second: one timer for the rest of the interval (a whole 2 s before the patch).
  for (const r of short) {
    expect(r.timersMs).toHaveLength(1);
    expect(r.timersMs[0]).toBeLessThanOrEqual(2_000 - probing(r));
  }
  // A 1.3 s round leaves under a second: no timer; the next round waits it out on the node as its lead-in.
  for (const r of middle) {
    expect(r.timersMs).toEqual([]);
    const next = rounds[rounds.indexOf(r) + 1];
    if (next) {
      expect(next.leadInMs).toBeGreaterThan(0);
      expect(next.leadInMs).toBeLessThanOrEqual(2_000 - probing(r));
    }
  }
  // Rounds about an interval apart start to start, not interval + round (≈ 3.3 s before the patch).
  const gaps = middle.flatMap((r) => {
    const next = rounds[rounds.indexOf(r) + 1];
    return next && middle.includes(next) ? [next.scheduledAt + next.leadInMs - (r.scheduledAt + r.leadInMs)] : [];
  });
  expect(gaps.length).toBeGreaterThanOrEqual(1);
  for (const g of gaps) expect(g).toBeLessThan(2_500);
  // A round longer than the interval: the next one follows at once, with no timer and no lead-in.
  for (const r of long) {
    expect(r.timersMs).toEqual([]);
    const next = rounds[rounds.indexOf(r) + 1];
    if (next) expect(next.leadInMs).toBe(0);
  }
}, 90_000);

test('probeRound waits out its lead-in first, cuts one over 1000 ms to 1000, and refuses a negative one', async () => {
  const acts = createProbeRoundActivities(healthyProbes());
  const base = { generate: true, timeoutMs: 1000, generateTimeoutMs: 500, xidSince: new Date().toISOString() };
  await expect(acts.probeRound({ ...base, leadInMs: -1 })).rejects.toThrow(
    /leadInMs must be a number of ms ≥ 0 \(got -1\)/,
  );
  await expect(acts.probeRound({ ...base, leadInMs: NaN })).rejects.toThrow(/leadInMs must be a number/);
  let t = Date.now();
  await acts.probeRound({ ...base, leadInMs: 300 });
  expect(Date.now() - t).toBeGreaterThanOrEqual(290);
  t = Date.now();
  await acts.probeRound({ ...base, leadInMs: 5_000 });
  const capped = Date.now() - t;
  expect(capped).toBeGreaterThanOrEqual(990);
  expect(capped).toBeLessThan(3_000);
}, 10_000);

test('a hung engine is recovered within threshold × (interval + generation deadline) + margin, not after full timeouts', async () => {
  const s = await ctx.sandbox();
  const h = await startWatcher(s);
  await withControl(s, async () => {
    await statusWhen(h, (st) => st.probes >= 2 && st.lastReport?.healthy === true);
    const t0 = Date.now();
    injectFault(s.sim.store, 'engine-hang');
    const recover = ctx.env.client.workflow.getHandle<typeof recoverNode>(workflowIds.recover(s.nodeId));
    let detectedAt: number | undefined;
    while (detectedAt === undefined) {
      try {
        detectedAt = (await recover.describe()).startTime.getTime();
      } catch {
        if (Date.now() - t0 > 30_000) throw new Error('no recovery within 30 s of the hang');
        await sleep(50);
      }
    }
    const incident = await recover.result();
    // Each round's run time (probeRound started → completed), before the hang and while it lasted.
    const rounds = roundTimes((await h.fetchHistory()).events ?? []);
    const healthy = rounds.filter((r) => r.start < t0).map((r) => r.ms);
    const hung = rounds.filter((r) => r.start > t0 && r.start < detectedAt).map((r) => r.ms);
    expect(healthy.length).toBeGreaterThanOrEqual(2);
    expect(hung.length).toBe(3);
    // A hung round costs at most its 0.5 s generation deadline more than a healthy one (the shims dominate a round
    // on a loaded machine); with the health timeout as the generation's limit it would cost 4 s more.
    const slowestHealthy = Math.max(...healthy);
    for (const ms of hung) expect(ms).toBeLessThan(slowestHealthy + 500 + 1_000);
    // Detection: up to one interval and round before the first probe sees the hang, then 3 rounds and 2 sleeps.
    expect(detectedAt - t0).toBeLessThan(4 * (1_000 + slowestHealthy + 500) + 1_500);
    expect(incident.outcome).toBe('recovered');
    expect(incident.rungs[0]?.rung).toBe('restart-container');
    // The watcher's reason names how long the hung generation was given: its deadline, not the health timeout.
    const ms = Number(/test generation failed after (\d+) ms/.exec(incident.reason)?.[1]);
    expect(ms).toBeGreaterThanOrEqual(450);
    expect(ms).toBeLessThan(1_500);
    // So does recoverNode's diagnosis, which the watcher hands its deadline (before: the 2 s health timeout of the
    // recovery's 4 s probeTimeout).
    const diagnosis = (incident.initial?.problems ?? []).map((p) => p.detail).join('; ');
    const diagnosedMs = Number(/test generation failed after (\d+) ms/.exec(diagnosis)?.[1]);
    expect(diagnosedMs).toBeGreaterThanOrEqual(450);
    expect(diagnosedMs).toBeLessThan(1_500);
    await h.terminate('test done');
  });
}, 90_000);

test.each<SandboxFaultKind>(['engine-hang', 'container-exit'])(
  'a single-probe %s blip counts one failure and starts no recovery',
  async (kind) => {
    const s = await ctx.sandbox();
    const h = await startWatcher(s);
    await withControl(s, async () => {
      await statusWhen(h, (st) => st.probes >= 2 && st.lastReport?.healthy === true);
      injectFault(s.sim.store, kind);
      const hit = await statusWhen(h, (st) => st.consecutiveFailures >= 1);
      clearFaults(s.sim.store);
      expect(hit.consecutiveFailures).toBe(1);
      const after = await statusWhen(h, (st) => st.probes >= hit.probes + 3);
      expect(after.consecutiveFailures).toBe(0);
      expect(after.lastAction).toBeNull();
      await expect(ctx.env.client.workflow.getHandle(workflowIds.recover(s.nodeId)).describe()).rejects.toThrow(
        /not found/i,
      );
      await h.terminate('test done');
    });
  },
  60_000,
);

/**
 * A node worker whose probeRound runs the real round over scripted single probes, one script entry per round (the
 * last one repeats); the GPUs are the node's configured ones, healthy, unless a step says otherwise.
 */
function scriptedRounds(s: TestSandbox, steps: Partial<ProbeRoundDeps>[]): object {
  const gpus = (s.loaded.config.nodes[0]?.gpus ?? []).map((g) =>
    gpuStatus({ index: g.index, pciBusId: `00000000:0${g.index + 1}:00.0` }),
  );
  let round = 0;
  return {
    probeRound: (input: Parameters<ReturnType<typeof createProbeRoundActivities>['probeRound']>[0]) => {
      const step = steps[Math.min(round, steps.length - 1)];
      round++;
      const base: ProbeRoundDeps = { ...healthyProbes(), queryGpus: () => Promise.resolve({ gpus, error: null }) };
      return createProbeRoundActivities({ ...base, ...step }).probeRound(input);
    },
  };
}

const fail = (why: string) => () => Promise.reject(new Error(why));
const containers = (restartCount: number) => () => Promise.resolve([containerState({ restartCount })]);
const gpuLost = () => Promise.resolve({ gpus: [], error: 'GPU is lost' });

test("a round whose probes failed neither resets the watcher's count nor releases router drains, and keeps the restart baseline", async () => {
  const s = await ctx.sandbox({ withWorker: false });
  const worker = await nodeWorker(
    s,
    scriptedRounds(s, [
      // Two sick rounds (a lost GPU), containers at restart count 1.
      { queryGpus: gpuLost, inspectContainers: containers(1) },
      { queryGpus: gpuLost, inspectContainers: containers(1) },
      // Two blind rounds: the engines' and the containers' probes fail, nothing else is wrong.
      { probeEngines: fail('engines: socket hang up'), inspectContainers: fail('docker: daemon busy') },
      { probeEngines: fail('engines: socket hang up'), inspectContainers: fail('docker: daemon busy') },
      // The restart count climbed across the blind rounds: a restart loop, seen against the kept baseline.
      { inspectContainers: containers(2) },
      // Healthy from here on.
      { inspectContainers: containers(2) },
    ]),
  );
  const h = await startWatcher(s, { failureThreshold: 100 });
  const releases = async () =>
    scheduledActivities((await h.fetchHistory()).events ?? []).filter((t) => t === 'releaseAutoDrain').length;
  await worker.runUntil(
    withControl(s, async () => {
      const blind = await statusWhen(h, (x) => x.probes === 4);
      expect(blind.consecutiveFailures).toBe(2);
      expect(blind.lastReport).toMatchObject({ healthy: false, recommendedRung: 'none' });
      expect(blind.lastReport?.problems).toEqual(['probe-failed inspectContainers', 'probe-failed probeEngines']);
      expect(await releases()).toBe(0);
      const loop = await statusWhen(h, (x) => x.probes === 5);
      expect(loop.lastReport?.problems).toEqual(['container-restarting ollama']);
      expect(loop.consecutiveFailures).toBe(3);
      const healthy = await statusWhen(h, (x) => x.probes >= 6);
      expect(healthy).toMatchObject({ consecutiveFailures: 0, lastReport: { healthy: true } });
      await statusWhen(h, (x) => x.probes >= 7);
      expect(await releases()).toBe(1);
      await h.terminate('test done');
    }),
  );
}, 60_000);

test('rounds that fail as a whole start recoverNode at escalate, and its diagnosis of the blind node escalates', async () => {
  const s = await ctx.sandbox({ withWorker: false });
  // probeRound fails, and the single probes recoverNode diagnoses with are not there either.
  const broken = await nodeWorker(s, {
    probeRound: () => Promise.reject(ApplicationFailure.nonRetryable('the node is on fire', 'Boom')),
  });
  const h = await startWatcher(s, { failureThreshold: 2 });
  await broken.runUntil(
    withControl(s, async () => {
      const st = await statusWhen(h, (x) => /^escalated after/.test(x.lastAction?.detail ?? ''), 45_000);
      expect(st.lastAction?.detail).toBe('escalated after escalate');
      const recover = ctx.env.client.workflow.getHandle<typeof recoverNode>(workflowIds.recover(s.nodeId));
      const first = (await recover.fetchHistory()).events?.[0]?.workflowExecutionStartedEventAttributes;
      const data = first?.input?.payloads?.[0]?.data;
      expect(JSON.parse(Buffer.from(data ?? new Uint8Array()).toString('utf8'))).toMatchObject({
        startRung: 'escalate',
      });
      const incident = await recover.result();
      expect(incident.initial).toMatchObject({ healthy: false, recommendedRung: 'escalate' });
      expect(incident.rungs.map((r) => r.rung)).toEqual(['escalate']);
      await h.terminate('test done');
    }),
  );
}, 60_000);

test("failed rounds on a node whose single probes see it healthy: the diagnosis overrules the watcher's escalate", async () => {
  const s = await ctx.sandbox({ withWorker: false });
  // Only the round is broken (a bug in it, say): the single probes recoverNode diagnoses with answer, healthy.
  const half = await nodeWorker(s, {
    ...oldNodeActivities(s),
    probeRound: () => Promise.reject(ApplicationFailure.nonRetryable('the round is broken', 'Boom')),
  });
  const h = await startWatcher(s, { failureThreshold: 2 });
  await half.runUntil(
    withControl(s, async () => {
      const st = await statusWhen(h, (x) => /no fault found|no-fault-found/.test(x.lastAction?.detail ?? ''), 45_000);
      const recover = ctx.env.client.workflow.getHandle<typeof recoverNode>(workflowIds.recover(s.nodeId));
      const incident = await recover.result();
      // Escalating would have drained the healthy node's engines and paged someone.
      expect({ outcome: incident.outcome, rungs: incident.rungs.map((r) => r.rung) }).toEqual({
        outcome: 'no-fault-found',
        rungs: [],
      });
      expect(st.lastAction?.detail).toMatch(/no.fault.found/);
      await h.terminate('test done');
    }),
  );
}, 60_000);

test('an old node worker whose single probe fails gets a report naming it; the watcher goes on', async () => {
  const s = await ctx.sandbox({ withWorker: false });
  const acts = {
    ...oldNodeActivities(s),
    checkDisks: () => Promise.reject(ApplicationFailure.nonRetryable('statfs: input/output error', 'DiskError')),
  };
  const old = await nodeWorker(s, acts);
  // The default generation deadline (probeTimeout less 2 s), not 500 ms: this test is about a failed probe, and five
  // single probes on a loaded CI box once took the sandbox engine's generation past 500 ms, a hang that counted.
  const h = await startWatcher(s, { generateTimeout: undefined });
  await old.runUntil(
    withControl(s, async () => {
      const st = await statusWhen(h, (x) => x.probes >= 2);
      expect(st.lastReport?.problems).toContain('probe-failed checkDisks');
      expect(st.lastReport?.healthy).toBe(false);
      // With the problems beside it, so that a failure says which other problem counted.
      expect({ counted: st.consecutiveFailures, problems: st.lastReport?.problems }).toMatchObject({ counted: 0 });
      expect((await h.describe()).status.name).toBe('RUNNING');
      await h.terminate('test done');
    }),
  );
}, 60_000);

type Notice = { title: string; severity: string; fields: Record<string, unknown> };

test('a watcher blind for blindAlertAfter rounds warns once, across continue-as-new, and says when probes answer again', async () => {
  const hook = await startWebhookReceiver<Notice>();
  try {
    const s = await ctx.sandbox({ withWorker: false, extra: { notifications: [hook.notifier('oncall')] } });
    const blind = { probeEngines: fail('engines: socket hang up') };
    // Four blind rounds, then healthy ones; two rounds per run, so the streak crosses two continue-as-new.
    const worker = await nodeWorker(s, scriptedRounds(s, [blind, blind, blind, blind, {}]));
    const h = await startWatcher(s, { failureThreshold: 2, blindAlertAfter: 3, probesPerRun: 2 });
    await worker.runUntil(
      withControl(s, async () => {
        const alerted = await statusWhen(h, (x) => x.blindAlert !== undefined);
        // The third blind round is the first of the second run: the streak came across continue-as-new.
        expect(alerted.blind?.alerted).toBe(true);
        expect(alerted.blind?.rounds).toBeGreaterThanOrEqual(3);
        expect(alerted.blindAlert).toMatchObject({ kind: 'alert', rounds: 3, sent: ['oncall'], failed: [] });
        // Blind rounds never count: no recovery started however long the node stayed unseen.
        expect(alerted.consecutiveFailures).toBe(0);
        const answered = await statusWhen(h, (x) => x.blindAlert?.kind === 'answered');
        expect(answered.blind).toBeUndefined();
        expect(answered.lastReport?.healthy).toBe(true);
        expect(answered.blindAlert).toMatchObject({ rounds: 4, sent: ['oncall'], failed: [] });
        // Healthy rounds after the all-clear send nothing more.
        await statusWhen(h, (x) => x.probes >= 2 && x.lastReport?.healthy === true);
        await sleep(2_500);
        expect(hook.received.map((m) => [m.severity, m.fields.kind, m.fields.rounds])).toEqual([
          ['warning', 'watch-blind', 3],
          ['info', 'watch-blind', 4],
        ]);
        expect(hook.received[0]).toMatchObject({
          title: `watcher blind on ${s.nodeId}: 3 rounds in a row with a failed probe`,
          fields: { node: s.nodeId, failedProbes: 'probeEngines' },
        });
        expect(hook.received[0]?.fields.since).toBe(hook.received[1]?.fields.since);
        await expect(ctx.env.client.workflow.getHandle(workflowIds.recover(s.nodeId)).describe()).rejects.toThrow(
          /not found/i,
        );
        // The warning went out from the second run, which continued as new carrying the alerted streak.
        const first = await ctx.env.client.workflow.getHandle(h.workflowId, h.firstExecutionRunId).fetchHistory();
        const second = first.events?.at(-1)?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId;
        expect(scheduledActivities(first.events ?? [])).not.toContain('notify');
        const secondEvents = (await ctx.env.client.workflow.getHandle(h.workflowId, second ?? '').fetchHistory())
          .events;
        expect(scheduledActivities(secondEvents ?? []).filter((t) => t === 'notify')).toHaveLength(1);
        recordHistory(ctx.env, h.workflowId, 'watch-node-blind-round-alert', second ?? undefined);
        await h.terminate('test done');
      }),
    );
  } finally {
    await hook.close();
  }
}, 60_000);

test('a notifier that fails never stops the watcher: the rounds go on, and the failure outlives continue-as-new', async () => {
  const hook = await startWebhookReceiver<Notice>();
  await hook.close(); // nobody listens: every send is refused
  const s = await ctx.sandbox({ withWorker: false, extra: { notifications: [hook.notifier('oncall')] } });
  const worker = await nodeWorker(s, scriptedRounds(s, [{ probeEngines: fail('engines: socket hang up') }]));
  // Two rounds per run: the warning's five tries (about 15 s of backoff) outlast the first run's count.
  const h = await startWatcher(s, { blindAlertAfter: 1, probesPerRun: 2 });
  await worker.runUntil(
    withControl(s, async () => {
      const failedNotice = 'notify failed: every notifier failed: oncall (ECONNREFUSED)';
      const st = await statusWhen(h, (x) => x.blindAlert !== undefined, 60_000);
      expect(st.blindAlert).toMatchObject({ kind: 'alert', rounds: 1, sent: [], failed: [failedNotice] });
      // The first run probed on while its warning was being tried, rather than wait for it at continue-as-new.
      const deadline = Date.now() + 15_000;
      while ((await h.describe()).runId === h.firstExecutionRunId && Date.now() < deadline) await sleep(100);
      const first = await ctx.env.client.workflow.getHandle(h.workflowId, h.firstExecutionRunId).fetchHistory();
      const acts = scheduledActivities(first.events ?? []);
      expect(acts.filter((t) => t === 'probeRound').length).toBeGreaterThan(4);
      expect(acts.filter((t) => t === 'notify')).toHaveLength(1);
      expect(first.events?.at(-1)?.workflowExecutionContinuedAsNewEventAttributes).toBeTruthy();
      recordHistory(ctx.env, h.workflowId, 'watch-node-blind-alert-notifier-down', h.firstExecutionRunId);
      // The next run keeps the streak (no second warning) and shows the failed one.
      const next = await statusWhen(h, (x) => x.probes >= 1 && (x.blind?.rounds ?? 0) > 5, 30_000);
      expect(next.blindAlert).toMatchObject({ kind: 'alert', failed: [failedNotice] });
      expect(next.blind?.alerted).toBe(true);
      expect((await h.describe()).status.name).toBe('RUNNING');
      await h.terminate('test done');
    }),
  );
}, 120_000);

test('node-wide maintenance holds the blind warning; a streak that outlasts the window warns when it ends', async () => {
  const hook = await startWebhookReceiver<Notice>();
  try {
    const s = await ctx.sandbox({ withWorker: false, extra: { notifications: [hook.notifier('oncall')] } });
    const worker = await nodeWorker(s, scriptedRounds(s, [{ probeEngines: fail('engines: socket hang up') }]));
    const h = await startWatcher(s, { blindAlertAfter: 2 });
    await worker.runUntil(
      withControl(s, async () => {
        await h.executeUpdate(setMaintenanceUpdate, { args: [{ reason: 'driver upgrade', duration: '10m' }] });
        const held = await statusWhen(h, (x) => (x.blind?.rounds ?? 0) >= 4);
        expect(held.maintenance).toHaveLength(1);
        expect(held.blindAlert).toBeUndefined();
        expect(hook.received).toEqual([]);
        await h.executeUpdate(setMaintenanceUpdate, { args: [{ reason: 'done', clear: true }] });
        const alerted = await statusWhen(h, (x) => x.blindAlert !== undefined);
        expect(alerted.blindAlert).toMatchObject({ kind: 'alert', sent: ['oncall'] });
        expect(alerted.blindAlert?.rounds).toBeGreaterThan(4);
        expect(hook.received.map((m) => m.severity)).toEqual(['warning']);
        await h.terminate('test done');
      }),
    );
  } finally {
    await hook.close();
  }
}, 60_000);
