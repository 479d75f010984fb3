/**
 * Durability across a Temporal server restart: a workflow in flight when the server stops is still there, with its
 * history, when the server comes back on the same SQLite file, and it finishes.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Worker } from '@temporalio/worker';
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

/**
 * A private dev server on a SQLite file of its own (after any earlier test's server and sandbox are stopped), a
 * sandbox node on it, and a control queue of this rig's that outlives the restarts, so the control worker started
 * after a restart takes the workflow started before it.
 */
async function restartRig(extra?: Record<string, unknown>) {
  await server?.stop();
  await sbx?.stop();
  const serverOpts = await privateDevServerOptions(mkdtempSync(path.join(os.tmpdir(), 'gpuops-restart-')));
  server = await startDevServer(serverOpts);
  const s = await startTestSandbox({ address: server.address, extra });
  sbx = s;
  const queue = uniqueId('gpuops-control-test');
  return {
    sbx: s,
    queue,
    /** Stop the server and start it again on the same SQLite file. */
    async restart(): Promise<void> {
      await server?.stop();
      server = await startDevServer(serverOpts);
    },
    /** Run `body` with a fresh connection to the server as it is now and a control worker on the rig's queue. */
    async withControl<T>(body: (env: TestEnv, worker: Worker) => Promise<T>): Promise<T> {
      const env = await openTestEnv(server?.address);
      try {
        env.controlQueue = queue;
        return await body(env, await controlWorker(env, s.loaded));
      } finally {
        await env.close();
      }
    },
  };
}

test('inspectNode survives a Temporal server restart mid-run and completes on the restarted server', async () => {
  const rig = await restartRig();
  const s = rig.sbx;
  // The node worker is down while the server restarts, so the workflow's probes are pending across the restart.
  await s.sim.killWorker('SIGKILL');

  const workflowId = uniqueId('inspect-restart');
  const runId = await rig.withControl((env, worker) =>
    worker.runUntil(async () => {
      const handle = await env.client.workflow.start('inspectNode', {
        taskQueue: rig.queue,
        workflowId,
        args: [{ node: s.nodeId, pickupTimeout: '2m', generate: false }],
      });
      let pending = 0;
      for (let i = 0; i < 100 && pending < 5; i++) {
        await new Promise((r) => setTimeout(r, 100));
        pending = ((await handle.describe()).raw.pendingActivities ?? []).length;
      }
      expect(pending).toBe(5); // all five probes scheduled, none picked up
      return handle.firstExecutionRunId;
    }),
  );

  await rig.restart();
  await rig.withControl(async (env, worker) => {
    await s.sim.startWorker();
    await waitForPoller(env.client, nodeTaskQueue(s.nodeId));
    const handle = env.client.workflow.getHandle<() => Promise<HealthReport>>(workflowId);
    const report = await worker.runUntil(handle.result());
    expect((await handle.describe()).runId).toBe(runId);
    expect(report.node).toBe(s.nodeId);
    expect(report.observation.reachable).toBe(true);
    expect(report.healthy).toBe(true);
  });
}, 120_000);

test('deployModel survives a Temporal server restart while its canary waits for promote, and promotes after it', async () => {
  const { router, config: routerConfig } = await startTestRouter();
  try {
    const rig = await restartRig(routerConfig);
    const s = rig.sbx;
    const engine = s.loaded.config.nodes[0]?.engines[0]?.url ?? '';
    router.table.replace({
      routes: {
        chat: { variants: [{ name: 'stable', engine, engineType: 'ollama', model: 'llama3.2:1b', weight: 100 }] },
      },
      drained: [],
    });
    const workflowId = workflowIds.deploy(s.nodeId, 'chat');
    const policy = {
      canarySteps: [50],
      stepDuration: '2s',
      analysisInterval: '1s',
      minSamples: 10,
      autoPromote: false,
      rollbackWindow: '1s',
    };
    await rig.withControl(async (env, worker) => {
      await waitForPoller(env.client, nodeTaskQueue(s.nodeId));
      await worker.runUntil(async () => {
        const h = await env.client.workflow.start('deployModel', {
          taskQueue: rig.queue,
          workflowId,
          args: [
            { node: s.nodeId, alias: 'chat', engine: 'ollama', model: 'qwen2.5:0.5b-lax', policy, safetyProbes: true },
          ],
        });
        // Medium risk (no pinned digest): it waits for approve; approve, then wait for the canary to pass.
        await waitForDeployment(h, (st) => st.stage === 'awaiting-approval');
        await h.executeUpdate(approveDeploymentUpdate, { args: [{ by: 'alice' }] });
        await waitForDeployment(h, (st) => st.stage === 'awaiting-promotion');
      });
    });

    await rig.restart();
    const record = await rig.withControl((env, worker) => {
      const h = env.client.workflow.getHandle<() => Promise<DeploymentStatus>>(workflowId);
      return worker.runUntil(async () => {
        const st = await h.query(getDeploymentStatusQuery);
        expect(st.stage).toBe('awaiting-promotion');
        expect(st.approvedBy).toBe('alice');
        await h.executeUpdate(promoteCanaryUpdate, { args: [{ by: 'ci-after-restart' }] });
        return h.result();
      });
    });
    expect(record.outcome).toBe('promoted');
    expect(record.promotedBy).toBe('ci-after-restart');
    expect(router.table.current.routes.chat?.variants).toEqual([
      expect.objectContaining({ name: 'stable', model: 'qwen2.5:0.5b-lax', weight: 100 }),
    ]);
  } finally {
    await router.close();
  }
}, 150_000);
