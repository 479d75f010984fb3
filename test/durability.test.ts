/**
 * Durability across a Temporal server restart: a workflow in flight when the server stops is still there, with its
 * history, when the server comes back on the same SQLite file, and it finishes.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { privateDevServerOptions, startDevServer, type DevServer } from '../src/temporal/dev-server';
import {
  approveDeploymentUpdate,
  getDeploymentStatusQuery,
  nodeTaskQueue,
  promoteCanaryUpdate,
  workflowIds,
  type DeploymentStatus,
} from '../src/contracts';
import type { HealthReport } from '../src/domain/classify';
import {
  controlWorker,
  openTestEnv,
  startTestRouter,
  startTestSandbox,
  uniqueId,
  waitForDeployment,
  waitForPoller,
  type TestEnv,
  type TestSandbox,
} from './helpers/env';

let server: DevServer | undefined;
let sbx: TestSandbox | undefined;

afterAll(async () => {
  await sbx?.stop();
  await server?.stop();
});

test('inspectNode survives a Temporal server restart mid-run and completes on the restarted server', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-restart-'));
  const serverOpts = await privateDevServerOptions(dir);
  server = await startDevServer(serverOpts);

  sbx = await startTestSandbox({ address: server.address });
  // The node worker is down while the server restarts, so the workflow's probes are pending across the restart.
  await sbx.sim.killWorker('SIGKILL');

  let env: TestEnv = await openTestEnv(server.address);
  const workflowId = uniqueId('inspect-restart');
  let worker = await controlWorker(env, sbx.loaded);
  const queue = env.controlQueue;
  const runId = await worker.runUntil(async () => {
    const handle = await env.client.workflow.start('inspectNode', {
      taskQueue: queue,
      workflowId,
      args: [{ node: sbx?.nodeId, pickupTimeout: '2m', generate: false }],
    });
    let pending = 0;
    for (let i = 0; i < 100 && pending < 5; i++) {
      await new Promise((r) => setTimeout(r, 100));
      pending = ((await handle.describe()).raw.pendingActivities ?? []).length;
    }
    expect(pending).toBe(5); // all five probes scheduled, none picked up
    return handle.firstExecutionRunId;
  });
  await env.close();

  await server.stop();
  server = await startDevServer(serverOpts);

  env = await openTestEnv(server.address);
  try {
    env.controlQueue = queue;
    worker = await controlWorker(env, sbx.loaded);
    await sbx.sim.startWorker();
    await waitForPoller(env.client, nodeTaskQueue(sbx.nodeId));
    const handle = env.client.workflow.getHandle<() => Promise<HealthReport>>(workflowId);
    const report = await worker.runUntil(handle.result());
    expect((await handle.describe()).runId).toBe(runId);
    expect(report.node).toBe(sbx.nodeId);
    expect(report.observation.reachable).toBe(true);
    expect(report.healthy).toBe(true);
  } finally {
    await env.close();
  }
}, 120_000);

test('deployModel survives a Temporal server restart while its canary waits for promote, and promotes after it', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-restart-deploy-'));
  const serverOpts = await privateDevServerOptions(dir);
  await server?.stop();
  await sbx?.stop();
  server = await startDevServer(serverOpts);
  const { router, config: routerConfig } = await startTestRouter();
  sbx = await startTestSandbox({ address: server.address, extra: routerConfig });
  try {
    const engine = sbx.loaded.config.nodes[0]?.engines[0]?.url ?? '';
    router.table.replace({
      routes: {
        chat: { variants: [{ name: 'stable', engine, engineType: 'ollama', model: 'llama3.2:1b', weight: 100 }] },
      },
      drained: [],
    });
    let env: TestEnv = await openTestEnv(server.address);
    const queue = env.controlQueue;
    const workflowId = workflowIds.deploy(sbx.nodeId, 'chat');
    const policy = {
      canarySteps: [50],
      stepDuration: '2s',
      analysisInterval: '1s',
      minSamples: 10,
      autoPromote: false,
      rollbackWindow: '1s',
    };
    await waitForPoller(env.client, nodeTaskQueue(sbx.nodeId));
    let worker = await controlWorker(env, sbx.loaded);
    await worker.runUntil(async () => {
      const h = await env.client.workflow.start('deployModel', {
        taskQueue: queue,
        workflowId,
        args: [
          { node: sbx?.nodeId, alias: 'chat', engine: 'ollama', model: 'qwen2.5:0.5b-lax', policy, safetyProbes: true },
        ],
      });
      // Medium risk (no pinned digest): it waits for approve; approve, then wait for the canary to pass.
      await waitForDeployment(h, (st) => st.stage === 'awaiting-approval');
      await h.executeUpdate(approveDeploymentUpdate, { args: [{ by: 'alice' }] });
      await waitForDeployment(h, (st) => st.stage === 'awaiting-promotion');
    });
    await env.close();

    await server.stop();
    server = await startDevServer(serverOpts);

    env = await openTestEnv(server.address);
    try {
      env.controlQueue = queue;
      worker = await controlWorker(env, sbx.loaded);
      const h = env.client.workflow.getHandle<() => Promise<DeploymentStatus>>(workflowId);
      const record = await worker.runUntil(async () => {
        const st = await h.query(getDeploymentStatusQuery);
        expect(st.stage).toBe('awaiting-promotion');
        expect(st.approvedBy).toBe('alice');
        await h.executeUpdate(promoteCanaryUpdate, { args: [{ by: 'ci-after-restart' }] });
        return h.result();
      });
      expect(record.outcome).toBe('promoted');
      expect(record.promotedBy).toBe('ci-after-restart');
      expect(router.table.current.routes.chat?.variants).toEqual([
        expect.objectContaining({ name: 'stable', model: 'qwen2.5:0.5b-lax', weight: 100 }),
      ]);
    } finally {
      await env.close();
    }
  } finally {
    await router.close();
  }
}, 150_000);
