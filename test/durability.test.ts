/**
 * Durability across a Temporal server restart: a workflow in flight when the server stops is still there, with its
 * history, when the server comes back on the same SQLite file, and it finishes.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { privateDevServerOptions, startDevServer, type DevServer } from '../src/temporal/dev-server';
import { nodeTaskQueue } from '../src/messages';
import type { HealthReport } from '../src/domain/classify';
import {
  controlWorker,
  openTestEnv,
  startTestSandbox,
  uniqueId,
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
