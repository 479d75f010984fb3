/**
 * Upgrading the control worker while workflows run, with Worker Versioning on the production server: version A runs
 * a watchNode and a deployModel waiting for approval; version B (a changed deployModel that cannot replay A's
 * histories) is rolled out and made current. The waiting deployment finishes on A, a new one runs on B, and the
 * watcher continues as new onto B by itself and goes on probing there.
 */
import { Worker, bundleWorkflowCode, type WorkerDeploymentOptions } from '@temporalio/worker';
import { approveDeploymentUpdate, getWatchStatusQuery, nodeTaskQueue, workflowIds } from '../../src/contracts';
import { executionBuildId, setCurrentVersion, workerDeploymentFromEnv } from '../../src/temporal/versioning';
import type { watchNode } from '../../workflows/recovery';
import { createControlWorker } from '../../workers/control';
import {
  FAST_RECOVERY,
  openTestEnv,
  quietLogger,
  startTestRouter,
  startTestSandbox,
  uniqueId,
  waitForDeployment,
  waitForPoller,
  workflowBundle,
  type TestEnv,
  type TestRouter,
  type TestSandbox,
} from '../helpers/env';
import { routedAlias, startHeldDeployment } from './fixtures/deployments';

let env: TestEnv;
let s: TestSandbox;
let testRouter: TestRouter;

beforeAll(async () => {
  env = await openTestEnv();
  testRouter = await startTestRouter();
  s = await startTestSandbox({ extra: testRouter.config });
  await waitForPoller(env.client, nodeTaskQueue(s.nodeId));
}, 60_000);

afterAll(async () => {
  await s?.stop();
  await testRouter?.router.close();
  await env?.close();
});

/** Whether the run's history has version B's marker (a 1 ms timer before anything else). */
async function hasBMarker(workflowId: string): Promise<boolean> {
  const events = (await env.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
  return events.some((e) => {
    const t = e.timerStartedEventAttributes?.startToFireTimeout;
    return !!t && Number(t.seconds ?? 0) === 0 && Number(t.nanos ?? 0) === 1_000_000;
  });
}

test('GPUOPS_WORKER_DEPLOYMENT/BUILD_ID give the control worker its version; one without the other is refused', () => {
  expect(workerDeploymentFromEnv({})).toBeUndefined();
  expect(
    workerDeploymentFromEnv({ GPUOPS_WORKER_DEPLOYMENT: 'gpuops-control', GPUOPS_WORKER_BUILD_ID: 'v1.4.0' }),
  ).toEqual({
    version: { deploymentName: 'gpuops-control', buildId: 'v1.4.0' },
    useWorkerVersioning: true,
    defaultVersioningBehavior: 'PINNED',
  });
  expect(() => workerDeploymentFromEnv({ GPUOPS_WORKER_BUILD_ID: 'v1' })).toThrow(
    /set GPUOPS_WORKER_DEPLOYMENT and GPUOPS_WORKER_BUILD_ID together/,
  );
  expect(() => workerDeploymentFromEnv({ GPUOPS_WORKER_DEPLOYMENT: 'a.b', GPUOPS_WORKER_BUILD_ID: 'v1' })).toThrow(
    /GPUOPS_WORKER_DEPLOYMENT: must be letters, digits/,
  );
});

test('rolling out version B while A runs a watcher and a waiting deployment: the deployment finishes on A, new ones and the watcher run B', async () => {
  const queue = uniqueId('gpuops-control-versioned');
  const deploymentName = uniqueId('gpuops-control');
  const version = (buildId: string): WorkerDeploymentOptions => ({
    version: { deploymentName, buildId },
    useWorkerVersioning: true,
    defaultVersioningBehavior: 'PINNED',
  });
  const bundleB = await bundleWorkflowCode({
    workflowsPath: require.resolve('./fixtures/workflows-b'),
    logger: quietLogger,
  });
  const control = async (buildId: string, bundle: Awaited<ReturnType<typeof workflowBundle>>): Promise<Worker> =>
    createControlWorker({
      connection: env.connection,
      namespace: 'default',
      loaded: s.loaded,
      workflowBundle: bundle,
      taskQueue: queue,
      client: env.client,
      workerDeploymentOptions: version(buildId),
    });

  const workerA = await control('A', await workflowBundle());
  const runA = workerA.run();
  let runB: Promise<void> | undefined;
  let workerB: Worker | undefined;
  try {
    await setCurrentVersion(env.client, deploymentName, 'A');

    // On A: a watcher and a deployment that waits for approval.
    const watch = await env.client.workflow.start<typeof watchNode>('watchNode', {
      taskQueue: queue,
      workflowId: workflowIds.watch(s.nodeId),
      args: [
        {
          node: s.nodeId,
          probeInterval: '300ms',
          failureThreshold: 3,
          pickupTimeout: '2s',
          // Round deadline probeTimeout − 2 s = 4 s for the loaded shims; a hang still costs a round its 1 s generation.
          probeTimeout: '6s',
          generateTimeout: '1s',
          recovery: FAST_RECOVERY,
        },
      ],
    });
    const oldDeploy = await startHeldDeployment(env.client, queue, s, routedAlias(testRouter.router, s, 'llama3.2:1b'));
    await waitForDeployment(oldDeploy, (x) => x.stage === 'awaiting-approval', 90_000);
    expect(await executionBuildId(env.client, oldDeploy.workflowId)).toBe('A');
    expect(await executionBuildId(env.client, watch.workflowId)).toBe('A');

    // Roll out B: its workers start polling, then it becomes current. A keeps running for what it started.
    workerB = await control('B', bundleB);
    runB = workerB.run();
    await setCurrentVersion(env.client, deploymentName, 'B');

    // A new deployment runs B's code.
    const newDeploy = await startHeldDeployment(
      env.client,
      queue,
      s,
      routedAlias(testRouter.router, s, 'qwen2.5:0.5b'),
    );
    await waitForDeployment(newDeploy, (x) => x.stage === 'awaiting-approval', 90_000);
    expect(await executionBuildId(env.client, newDeploy.workflowId)).toBe('B');

    // The old one is approved now, after the rollout, and finishes correctly on A (B could not replay it).
    await oldDeploy.executeUpdate(approveDeploymentUpdate, { args: [{ by: 'alice' }] });
    const oldRecord = await oldDeploy.result();
    expect({ outcome: oldRecord.outcome, rollback: oldRecord.rollback }).toEqual({
      outcome: 'promoted',
      rollback: null,
    });
    expect(await executionBuildId(env.client, oldDeploy.workflowId)).toBe('A');
    expect(await hasBMarker(oldDeploy.workflowId)).toBe(false);
    // Pinning is what saved it: B's code cannot replay the history A wrote, A's can (under deployModel's own ID:
    // the ID is its lock, and it refuses any other).
    const oldHistory = await oldDeploy.fetchHistory();
    await expect(
      Worker.runReplayHistory({ workflowBundle: bundleB }, oldHistory, oldDeploy.workflowId),
    ).rejects.toThrow(/[Nn]ondetermin/);
    await expect(
      Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, oldHistory, oldDeploy.workflowId),
    ).resolves.toBeUndefined();

    await newDeploy.executeUpdate(approveDeploymentUpdate, { args: [{ by: 'bob' }] });
    const newRecord = await newDeploy.result();
    expect({ outcome: newRecord.outcome, rollback: newRecord.rollback }).toEqual({
      outcome: 'promoted',
      rollback: null,
    });
    expect(await hasBMarker(newDeploy.workflowId)).toBe(true);

    // The watcher never stopped, and moved to B by itself: its run on A learnt that B is current and continued as
    // new onto it (AUTO_UPGRADE for the new run's first task) long before its 500 probes were up, carrying its state.
    const deadline = Date.now() + 60_000;
    while ((await executionBuildId(env.client, watch.workflowId)) !== 'B' && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(await executionBuildId(env.client, watch.workflowId)).toBe('B');
    const onB = (await watch.describe()).runId;
    expect(onB).not.toBe(watch.firstExecutionRunId);
    expect(await executionBuildId(env.client, watch.workflowId, watch.firstExecutionRunId)).toBe('A');
    // The run on A ended in continue-as-new after far fewer than its 500 probe rounds.
    const watchOnA =
      (await env.client.workflow.getHandle(watch.workflowId, watch.firstExecutionRunId).fetchHistory()).events ?? [];
    expect(watchOnA[watchOnA.length - 1]?.workflowExecutionContinuedAsNewEventAttributes).toBeTruthy();
    const roundsOnA = watchOnA.filter(
      (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'probeRound',
    );
    expect(roundsOnA.length).toBeGreaterThan(0);
    expect(roundsOnA.length).toBeLessThan(500);
    const before = await watch.query(getWatchStatusQuery);
    let after = before;
    while (after.probes <= before.probes && Date.now() < deadline + 30_000) {
      await new Promise((r) => setTimeout(r, 250));
      after = await watch.query(getWatchStatusQuery);
    }
    expect(after.probes).toBeGreaterThan(before.probes);
    expect(after.lastReport?.healthy).toBe(true);
    expect((await watch.describe()).runId).toBe(onB);
    await watch.terminate('test done');
  } finally {
    workerA.shutdown();
    workerB?.shutdown();
    await runA;
    await runB;
  }
}, 240_000);
