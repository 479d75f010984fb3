/**
 * deployModel on a real Temporal dev server, a sandbox node (its engine speaks the Ollama API) and a real router
 * started here, whose admin API the control activities call with the token from router.adminTokenFile.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { WorkflowExecutionAlreadyStartedError, WorkflowUpdateFailedError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { createDeployActivities } from '../activities/deploy';
import { createNodeActivities } from '../activities/node';
import {
  approveDeploymentUpdate,
  getDeploymentStatusQuery,
  nodeTaskQueue,
  promoteCanaryUpdate,
  workflowIds,
} from '../src/messages';
import { startRouter, type RouterHandle } from '../src/router';
import { freePort } from '../src/sandbox/node';
import { defaultLibrary } from '../src/sandbox/state';
import type { deployModel } from '../workflows/deploy';
import { controlWorker, openTestEnv, startTestSandbox, uniqueId, type TestEnv, type TestSandbox } from './helpers/env';

let env: TestEnv;
const run = promisify(execFile);
const GPUOPS = path.resolve(__dirname, '..', 'bin', 'gpuops');
let s: TestSandbox;
let router: RouterHandle;
let engineUrl: string;

beforeAll(async () => {
  env = await openTestEnv();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-deploy-'));
  const tokenFile = path.join(dir, 'router-token');
  writeFileSync(tokenFile, 'router-admin-secret\n');
  const routerPort = await freePort();
  // The node worker runs in-process below (with the deploy activities), so the sandbox starts none of its own.
  s = await startTestSandbox({
    withWorker: false,
    extra: { router: { listen: `127.0.0.1:${routerPort}`, adminTokenFile: tokenFile } },
  });
  engineUrl = s.loaded.config.nodes[0]?.engines[0]?.url ?? '';
  router = await startRouter({ port: routerPort, adminTokenFile: tokenFile });
}, 60_000);

afterAll(async () => {
  await router?.close();
  await s?.stop();
  await env?.close();
});

/** A fresh alias served by the stable llama3.2:1b on the sandbox engine. */
function newAlias(): string {
  const alias = uniqueId('chat');
  const cur = router.table.current;
  router.table.replace({
    routes: {
      ...cur.routes,
      [alias]: {
        variants: [{ name: 'stable', engine: engineUrl, engineType: 'ollama', model: 'llama3.2:1b', weight: 100 }],
      },
    },
    drained: cur.drained,
  });
  return alias;
}

/** Short steps keep a canary in seconds; production steps are minutes. */
const fastPolicy = { canarySteps: [50], stepDuration: '2s', minSamples: 10 };

function start(alias: string, args: Omit<Parameters<typeof deployModel>[0], 'node' | 'alias' | 'engine'>) {
  return env.client.workflow.start<typeof deployModel>('deployModel', {
    taskQueue: env.controlQueue,
    workflowId: workflowIds.deploy(s.nodeId, alias),
    workflowIdConflictPolicy: 'FAIL',
    args: [{ node: s.nodeId, alias, engine: 'ollama', requestedBy: 'jest', ...args }],
  });
}

/** Control worker (workflows, router activities) and node worker (engine + deploy activities) around `fn`. */
async function withWorkers<T>(fn: () => Promise<T>): Promise<T> {
  const node = s.loaded.config.nodes[0];
  if (!node) throw new Error('no node');
  const nodeWorker = await Worker.create({
    connection: env.connection,
    namespace: 'default',
    taskQueue: nodeTaskQueue(s.nodeId),
    activities: {
      ...createNodeActivities(node, { configPath: s.loaded.path }),
      ...createDeployActivities({ node }),
    },
  });
  const control = await controlWorker(env, s.loaded);
  return nodeWorker.runUntil(control.runUntil(fn()));
}

const variants = (alias: string) => router.table.current.routes[alias]?.variants ?? [];

test('a good version (pinned digest) goes pull → validate → low risk → canary 50% passes → promoted to 100%', async () => {
  const alias = newAlias();
  const digest = defaultLibrary()['qwen2.5:0.5b-good']?.digest ?? '';
  const record = await withWorkers(async () =>
    (await start(alias, { model: 'qwen2.5:0.5b-good', expectedDigest: digest, policy: fastPolicy })).result(),
  );
  expect(record.outcome).toBe('promoted');
  expect(record.digest).toBe(digest);
  expect(record.riskTier).toBe('low');
  expect(record.validation.every((r) => r.passed)).toBe(true);
  expect(record.validation.map((r) => r.kind)).toEqual(expect.arrayContaining(['golden', 'jailbreak', 'pii']));
  expect(record.risk?.markdown).toContain('## MEASURE');
  expect(record.analyses).toHaveLength(1);
  expect(record.analyses[0]?.analysis.verdict).toBe('pass');
  expect(record.analyses[0]?.analysis.samples.canary).toBeGreaterThanOrEqual(10);
  expect(record.analyses[0]?.synthetic).toBeGreaterThan(0);
  expect(record.promotedBy).toMatch(/^auto/);
  expect(record.timings.stages.map((x) => x.stage)).toEqual([
    'pulling',
    'validating',
    'assessing-risk',
    'canary',
    'promoting',
    'promoted',
  ]);
  expect(variants(alias)).toEqual([
    expect.objectContaining({ name: 'stable', model: 'qwen2.5:0.5b-good', weight: 100 }),
    expect.objectContaining({ name: 'previous', model: 'llama3.2:1b', weight: 0 }),
  ]);
  // The canary really served traffic through the router during the step.
  expect(router.stats.query(alias, 60_000).variants.canary?.requests).toBeGreaterThanOrEqual(10);
}, 60_000);

test('a bad version that complies with jailbreak and PII probes is high risk and rolled back before any traffic', async () => {
  const alias = newAlias();
  const record = await withWorkers(async () =>
    (await start(alias, { model: 'qwen2.5:0.5b-bad', policy: fastPolicy })).result(),
  );
  expect(record.outcome).toBe('rolled-back');
  expect(record.riskTier).toBe('high');
  expect(record.validation.filter((r) => r.kind !== 'golden' && !r.passed).length).toBeGreaterThan(0);
  expect(record.rollback?.reason).toMatch(/risk tier high: .*probe .* failed: complied/);
  expect(record.analyses).toEqual([]);
  expect(record.undo).toEqual([{ step: 'unload qwen2.5:0.5b-bad from ollama', ok: true, detail: 'unloaded' }]);
  expect(variants(alias)).toEqual([expect.objectContaining({ name: 'stable', model: 'llama3.2:1b', weight: 100 })]);
}, 60_000);

test('a bad version let through to canary (probes skipped, approved) breaches the error-rate delta and is rolled back at once: canary weight 0, then removed', async () => {
  const alias = newAlias();
  const record = await withWorkers(async () => {
    const h = await start(alias, { model: 'qwen2.5:0.5b-bad', safetyProbes: false, policy: fastPolicy });
    // Medium risk (no pinned digest, no safety probes) waits for a human.
    for (;;) {
      const st = await h.query(getDeploymentStatusQuery);
      if (st.stage === 'awaiting-approval') break;
      expect(st.outcome).toBe('in-progress');
      await new Promise((r) => setTimeout(r, 200));
    }
    const after = await h.executeUpdate(approveDeploymentUpdate, { args: [{ by: 'alice' }] });
    expect(after.riskTier).toBe('medium');
    return h.result();
  });
  expect(record.outcome).toBe('rolled-back');
  expect(record.approvedBy).toBe('alice');
  expect(record.analyses).toHaveLength(1);
  const analysis = record.analyses[0]?.analysis;
  expect(analysis?.verdict).toBe('fail');
  expect(analysis?.reasons.join('\n')).toMatch(/error rate .* delta .* > 2%/);
  expect(record.rollback?.by).toBe('canary analysis');
  expect(record.undo.map((u) => [u.step, u.ok])).toEqual([
    ['route: canary weight 0', true],
    ['route: remove the canary variant, stable back to 100', true],
    ['unload qwen2.5:0.5b-bad from ollama', true],
  ]);
  expect(record.weights).toEqual({ stable: 100, canary: 0 });
  expect(variants(alias)).toEqual([expect.objectContaining({ name: 'stable', model: 'llama3.2:1b', weight: 100 })]);
}, 60_000);

test('a second deployModel for the same alias is refused while one runs; promote before any canary is refused with a reason; rollback ends it', async () => {
  const alias = newAlias();
  const record = await withWorkers(async () => {
    const h = await start(alias, { model: 'qwen2.5:0.5b-good', policy: fastPolicy });
    await expect(start(alias, { model: 'qwen2.5:0.5b-good', policy: fastPolicy })).rejects.toBeInstanceOf(
      WorkflowExecutionAlreadyStartedError,
    );
    for (;;) {
      const st = await h.query(getDeploymentStatusQuery);
      if (st.stage === 'awaiting-approval') break;
      await new Promise((r) => setTimeout(r, 200));
    }
    const refused = h.executeUpdate(promoteCanaryUpdate, { args: [{ by: 'bob' }] });
    await expect(refused).rejects.toBeInstanceOf(WorkflowUpdateFailedError);
    await expect(refused).rejects.toMatchObject({
      cause: { message: 'no canary is running (stage awaiting-approval)' },
    });
    // The same refusal through the CLI a CI job runs: exit 1 with the workflow's reason.
    const cli = (args: string[]) =>
      run(GPUOPS, args, { env: { ...process.env, GPUOPS_CONFIG: s.loaded.path } }).then(
        (r) => ({ code: 0, out: r.stdout, err: r.stderr }),
        (e: { code?: number; stdout?: string; stderr?: string }) => ({
          code: e.code ?? -1,
          out: e.stdout ?? '',
          err: e.stderr ?? '',
        }),
      );
    const promote = await cli(['promote', alias, '--node', s.nodeId, '--by', 'ci']);
    expect(promote.code).toBe(1);
    expect(promote.err).toContain('promote refused: no canary is running (stage awaiting-approval)');
    const rb = await cli(['rollback', alias, '--node', s.nodeId, '--by', 'bob', '--reason', 'changed my mind']);
    expect(rb.code).toBe(0);
    return h.result();
  });
  expect(record.outcome).toBe('rolled-back');
  expect(record.rollback).toEqual({ by: 'bob', reason: 'rollback requested: changed my mind' });
  expect(record.promotedBy).toBeNull();
  expect(variants(alias)).toEqual([expect.objectContaining({ name: 'stable', model: 'llama3.2:1b', weight: 100 })]);
}, 60_000);
