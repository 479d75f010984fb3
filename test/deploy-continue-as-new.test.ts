/**
 * Bounded history (workflows/deploy/resume.ts): a canary with a small maxHistoryEvents continues as new between
 * analysis rounds, on a real dev server, a real router and a sandbox node with its node worker. Across the boundary
 * the `status` query goes on with the same record, promote and rollback still work (the rollback runs the undos the
 * first run registered), and the workflow ID still locks the alias.
 */
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import {
  SEARCH_ATTRIBUTES,
  getDeploymentStatusQuery,
  promoteCanaryUpdate,
  rollbackDeploymentUpdate,
  workflowIds,
  type DeployModelInput,
  type DeploymentStatus,
} from '../src/contracts';
import { OllamaClient } from '../src/hosts/engines/ollama';
import { defaultLibrary } from '../src/sandbox/state';
import type { deployModel } from '../workflows/deploy';
import { routedAlias } from './production/fixtures/deployments';
import { controlWorker, recordHistory, useSandboxEnv, waitForDeployment } from './helpers/env';

const ctx = useSandboxEnv({ router: true, sandbox: {} });
const MODEL = 'qwen2.5:0.5b-good';

/**
 * A canary step far longer than the test, analysed every second, in runs of at most 100 events: it continues as new
 * every ten-odd rounds and ends only by promote or rollback.
 */
const policy = {
  canarySteps: [50],
  stepDuration: '10m',
  analysisInterval: '1s',
  minSamples: 10,
  rollbackWindow: '1s',
  removePulledOnRollback: true,
};

/** deployModel of MODEL to `alias` in runs of at most 100 events; `over` replaces input fields. */
function start(alias: string, over: Partial<DeployModelInput> = {}) {
  return ctx.env.client.workflow.start<typeof deployModel>('deployModel', {
    taskQueue: ctx.env.controlQueue,
    workflowId: workflowIds.deploy(ctx.sbx.nodeId, alias),
    workflowIdConflictPolicy: 'FAIL',
    args: [
      {
        node: ctx.sbx.nodeId,
        alias,
        engine: 'ollama',
        model: MODEL,
        expectedDigest: defaultLibrary()[MODEL]?.digest ?? '',
        requestedBy: 'jest',
        policy,
        maxHistoryEvents: 100,
        ...over,
      },
    ],
  });
}

const engine = (): OllamaClient => new OllamaClient(ctx.sbx.loaded.config.nodes[0]?.engines[0]?.url ?? '');
const variants = (alias: string) => ctx.router.table.current.routes[alias]?.variants ?? [];
/** The rounds' numbers: 1, 2, 3 … without a gap when no round was lost at a boundary. */
const roundNumbers = (st: DeploymentStatus): number[] => st.rounds.map((r) => r.n);
const oneToN = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1);

test('a canary that continues as new twice keeps its status, the alias lock and its search attributes; promote after the boundary ends promoted with the routes right', async () => {
  const alias = routedAlias(ctx.router, ctx.sbx);
  const control = await controlWorker(ctx.env, ctx.sbx.loaded);
  await control.runUntil(async () => {
    const first = await start(alias);
    const h = ctx.env.client.workflow.getHandle(first.workflowId);
    const before = await waitForDeployment(h, (st) => st.stage === 'canary' && st.rounds.length > 0, 60_000);
    const st = await waitForDeployment(h, (x) => (x.continuedAsNew ?? 0) >= 2, 90_000);
    const d = await h.describe();
    expect(d.status.name).toBe('RUNNING');
    expect(d.runId).not.toBe(first.firstExecutionRunId);
    // The record goes on: the same deployment, its start, every round since the first, the canary at 50%.
    expect(st).toMatchObject({ workflowId: h.workflowId, model: MODEL, stage: 'canary', outcome: 'in-progress' });
    expect(st.timings.startedAt).toBe(before.timings.startedAt);
    expect(st.weights).toEqual({ stable: 50, canary: 50 });
    expect(roundNumbers(st)).toEqual(oneToN(st.rounds.length));
    expect(st.rounds.length).toBeGreaterThan(before.rounds.length);
    expect(d.typedSearchAttributes.get(SEARCH_ATTRIBUTES.stage)).toBe('canary');
    expect(d.typedSearchAttributes.get(SEARCH_ATTRIBUTES.canaryWeight)).toBe(50);
    expect(variants(alias).map((v) => [v.name, v.weight])).toEqual([
      ['stable', 50],
      ['canary', 50],
    ]);
    // The ID still locks the alias: a second deployment is refused while the continued run runs.
    await expect(start(alias)).rejects.toBeInstanceOf(WorkflowExecutionAlreadyStartedError);
    // A caller that recorded the first run's ID still steers it (firstExecutionRunId survives continue-as-new).
    const promoted = await h.executeUpdate(promoteCanaryUpdate, {
      args: [{ by: 'ci', expect: { model: MODEL, runId: first.firstExecutionRunId } }],
    });
    expect(promoted.stage).toBe('canary');
    const record = await first.result();
    recordHistory(ctx.env, h.workflowId, 'deploy-model-continued-as-new', first.firstExecutionRunId);
    recordHistory(ctx.env, h.workflowId, 'deploy-model-resumed-promoted');
    expect(record.outcome).toBe('promoted');
    expect(record.promotedBy).toBe('ci');
    expect(record.continuedAsNew).toBeGreaterThanOrEqual(2);
    expect(roundNumbers(record)).toEqual(oneToN(record.rounds.length));
    // Each stage entered once: the runs after the first re-entered the canary step without entering it again.
    const stages = record.timings.stages.map((s) => s.stage);
    expect(stages.slice(-4)).toEqual(['canary', 'promoting', 'rollback-window', 'promoted']);
    expect(stages.filter((s) => s === 'canary')).toHaveLength(1);
    expect(variants(alias)).toEqual([expect.objectContaining({ name: 'stable', model: MODEL, weight: 100 })]);
    expect(record.cleanup.every((c) => c.ok)).toBe(true);
  });
}, 180_000);

test('a rollback after the boundary runs the undos the first run registered: canary variant removed, the pulled model unloaded and deleted', async () => {
  // The test before promoted the model onto the engine: no route names it now, and this deployment pulls it anew.
  ctx.router.table.replace({ routes: {}, drained: ctx.router.table.current.drained });
  await engine().delete(MODEL);
  const alias = routedAlias(ctx.router, ctx.sbx);
  const control = await controlWorker(ctx.env, ctx.sbx.loaded);
  const record = await control.runUntil(async () => {
    const first = await start(alias);
    const h = ctx.env.client.workflow.getHandle(first.workflowId);
    await waitForDeployment(h, (x) => (x.continuedAsNew ?? 0) >= 1, 90_000);
    expect((await engine().tags()).map((m) => m.name)).toContain(MODEL);
    await h.executeUpdate(rollbackDeploymentUpdate, { args: [{ by: 'bob', reason: 'enough' }] });
    const r = await first.result();
    recordHistory(ctx.env, h.workflowId, 'deploy-model-resumed-rollback');
    // The status query on the workflow ID answers the last run's record: the whole deployment.
    expect(await h.query(getDeploymentStatusQuery)).toEqual(r);
    return r;
  });
  expect(record.outcome).toBe('rolled-back');
  expect(record.rollback).toEqual({ by: 'bob', reason: 'rollback requested: enough' });
  expect(record.undo).toEqual([
    { step: 'route: canary weight 0', ok: true, detail: 'canary weight 0' },
    { step: 'route: remove the canary variant, stable back to 100', ok: true, detail: 'stable only' },
    { step: `unload ${MODEL} from ollama`, ok: true, detail: 'unloaded' },
    { step: `delete ${MODEL} from ollama`, ok: true, detail: 'deleted' },
  ]);
  expect(variants(alias)).toEqual([expect.objectContaining({ name: 'stable', model: 'llama3.2:1b', weight: 100 })]);
  expect((await engine().ps()).map((m) => m.name)).not.toContain(MODEL);
  expect((await engine().tags()).map((m) => m.name)).not.toContain(MODEL);
  expect(record.continuedAsNew).toBeGreaterThanOrEqual(1);
  expect(roundNumbers(record)).toEqual(oneToN(record.rounds.length));
}, 180_000);

test('a shadow stage that continues as new goes on mirroring from where it was, passes once, and hands over to the canary', async () => {
  ctx.router.table.replace({ routes: {}, drained: ctx.router.table.current.drained });
  await engine().delete(MODEL);
  const alias = routedAlias(ctx.router, ctx.sbx);
  const control = await controlWorker(ctx.env, ctx.sbx.loaded);
  // This test is about the boundary, not the verdict: the latency and throughput gates are wide open.
  const shadowPolicy = {
    ...policy,
    maxTtftP95Ratio: 1000,
    minTokensPerSecondRatio: 0.001,
    shadow: { percent: 100, duration: '15s', minSamples: 5 },
  };
  const record = await control.runUntil(async () => {
    const first = await start(alias, { policy: shadowPolicy });
    const h = ctx.env.client.workflow.getHandle(first.workflowId);
    // Still in shadow after a boundary: the canary has no weight and the mirroring goes on in the new run.
    const during = await waitForDeployment(h, (x) => x.stage === 'shadow' && (x.continuedAsNew ?? 0) >= 1, 90_000);
    expect(during.weights).toEqual({ stable: 100, canary: 0 });
    expect(ctx.router.table.current.routes[alias]?.shadow).toMatchObject({ variant: 'canary', percent: 100 });
    const inCanary = await waitForDeployment(h, (x) => x.stage === 'canary', 90_000);
    expect(inCanary.shadow?.verdict).toBe('pass');
    expect(ctx.router.table.current.routes[alias]?.shadow).toBeUndefined();
    await h.executeUpdate(promoteCanaryUpdate, { args: [{ by: 'ci' }] });
    return first.result();
  });
  expect(record.outcome).toBe('promoted');
  const stages = record.timings.stages.map((s) => s.stage);
  expect(stages.filter((s) => s === 'shadow')).toHaveLength(1);
  expect(stages.filter((s) => s === 'canary')).toHaveLength(1);
  const shadowRounds = record.shadow?.rounds.map((r) => r.n) ?? [];
  expect(shadowRounds).toEqual(oneToN(shadowRounds.length));
  expect(record.continuedAsNew).toBeGreaterThanOrEqual(1);
  expect(variants(alias)).toEqual([expect.objectContaining({ name: 'stable', model: MODEL, weight: 100 })]);
}, 180_000);

test('a start that hands in a `resume` (forged, or copied from a continued run) is refused before it does anything', async () => {
  const alias = routedAlias(ctx.router, ctx.sbx);
  const before = JSON.stringify(ctx.router.table.current.routes[alias]);
  const workflowId = workflowIds.deploy(ctx.sbx.nodeId, alias);
  const control = await controlWorker(ctx.env, ctx.sbx.loaded);
  const failure = await control.runUntil(async () => {
    const h = await start(alias, {
      requestedBy: 'mallory',
      resume: {
        status: { workflowId } as never,
        plan: {},
        served: MODEL,
        golden: [],
        undo: [{ undo: 'delete-model', engine: { name: 'ollama', url: 'http://127.0.0.1:1' }, model: 'llama3.2:1b' }],
        at: { stage: 'canary', step: 5, startedAt: 0, synthetic: 0, failures: 0, starved: 0, analyseNow: false },
        runs: 1,
      },
    });
    return h.result().then(
      () => null,
      (err: Error) => err,
    );
  });
  expect((failure?.cause as Error | undefined)?.message).toBe(
    'invalid deployModel input: resume: is set only by a deployment continuing as new, never by a start',
  );
  // Nothing ran: no activity was scheduled, the route is as it was.
  const events = (await ctx.env.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
  expect(events.some((e) => e.activityTaskScheduledEventAttributes)).toBe(false);
  expect(JSON.stringify(ctx.router.table.current.routes[alias])).toBe(before);
}, 60_000);
