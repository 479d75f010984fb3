/**
 * Two control worker processes (workers/control.ts, as systemd or compose would run two replicas) poll one control
 * queue on the production server. The one that holds a workflow is SIGKILLed in the middle of a recovery and in the
 * middle of a deployment; the other carries on, and no destructive action (a VM reboot, a model pull, a route
 * change, an unload) is taken twice.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import type { temporal } from '@temporalio/proto';
import { injectFault } from '../../src/sandbox/faults';
import { approveDeploymentUpdate, nodeTaskQueue, workflowIds } from '../../src/contracts';
import { tsxCommand } from '../../src/cli/processes';
import type { RouterHandle } from '../../src/router';
import type { recoverNode } from '../../workflows/recovery';
import {
  FAST_RECOVERY,
  openTestEnv,
  startTestRouter,
  startTestSandbox,
  testAddress,
  uniqueId,
  waitForDeployment,
  waitForPoller,
  type TestEnv,
  type TestSandbox,
} from '../helpers/env';
import { routedAlias, startHeldDeployment } from './fixtures/deployments';

let env: TestEnv;
const cleanup: (() => Promise<void>)[] = [];

beforeAll(async () => {
  env = await openTestEnv();
});
afterAll(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => undefined);
  await env?.close();
});

interface ControlProcess {
  child: ChildProcess;
  identity: string;
}

/** One control worker process on `queue`, as an operator runs it; its identity names its pid. */
function spawnControl(queue: string, configPath: string): ControlProcess {
  const cmd = tsxCommand('workers/control.ts', ['--task-queue', queue]);
  const child = spawn(cmd.command, cmd.args, {
    env: { ...process.env, TEMPORAL_ADDRESS: testAddress(), GPUOPS_CONFIG: configPath, GPUOPS_LOG_LEVEL: 'WARN' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  cleanup.push(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return { child, identity: `gpuops-control@${os.hostname()}:${child.pid}` };
}

async function waitForPollers(client: Client, queue: string, n: number, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await client.workflowService.describeTaskQueue({
      namespace: 'default',
      taskQueue: { name: queue },
      taskQueueType: 1, // TASK_QUEUE_TYPE_WORKFLOW
    });
    if ((r.pollers ?? []).length >= n) return;
    if (Date.now() > deadline) throw new Error(`${n} control workers did not poll ${queue} within ${timeoutMs} ms`);
    await new Promise((res) => setTimeout(res, 250));
  }
}

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

async function history(workflowId: string): Promise<HistoryEvent[]> {
  return (await env.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
}

/** The worker that completed the workflow's latest task: it holds the workflow in its cache (sticky queue). */
async function holder(workflowId: string): Promise<string | undefined> {
  const done = (await history(workflowId)).filter((e) => e.workflowTaskCompletedEventAttributes);
  return done[done.length - 1]?.workflowTaskCompletedEventAttributes?.identity ?? undefined;
}

/** Every worker identity that completed a workflow task or an activity of this workflow. */
async function identities(workflowId: string): Promise<Set<string>> {
  const ids = (await history(workflowId)).flatMap((e) => [
    e.workflowTaskCompletedEventAttributes?.identity,
    e.activityTaskStartedEventAttributes?.identity,
  ]);
  return new Set(ids.filter((i): i is string => !!i));
}

/** Scheduled activities of these types, as `type input` strings (the same action twice would appear twice). */
async function scheduled(workflowId: string, types: string[]): Promise<string[]> {
  return (await history(workflowId))
    .map((e) => e.activityTaskScheduledEventAttributes)
    .filter((a): a is NonNullable<typeof a> => !!a && types.includes(a.activityType?.name ?? ''))
    .map(
      (a) =>
        `${a.activityType?.name} ${JSON.stringify((a.input?.payloads ?? []).map((p) => defaultPayloadConverter.fromPayload(p)))}`,
    );
}

async function killHolder(workflowId: string, workers: ControlProcess[]): Promise<ControlProcess> {
  const id = await holder(workflowId);
  const victim = workers.find((w) => w.identity === id);
  if (!victim) throw new Error(`no control process has identity ${id}`);
  await new Promise<void>((resolve) => {
    victim.child.once('exit', () => resolve());
    victim.child.kill('SIGKILL');
  });
  return victim;
}

async function sandbox(opts: Parameters<typeof startTestSandbox>[0]): Promise<TestSandbox> {
  const s = await startTestSandbox(opts);
  cleanup.push(() => s.stop());
  await waitForPoller(env.client, nodeTaskQueue(s.nodeId));
  return s;
}

test('SIGKILL of the control worker holding a recovery mid-reboot: the other worker finishes it, the VM is rebooted once', async () => {
  const s = await sandbox({ proxmox: true, bootSeconds: 4 });
  const queue = uniqueId('gpuops-control-pair');
  const workers = [spawnControl(queue, s.loaded.path), spawnControl(queue, s.loaded.path)];
  await waitForPollers(env.client, queue, 2);
  injectFault(s.sim.store, 'xid-79');
  const bootBefore = s.sim.status().vm.bootId;
  const h = await env.client.workflow.start<typeof recoverNode>('recoverNode', {
    taskQueue: queue,
    workflowId: workflowIds.recover(s.nodeId),
    args: [{ node: s.nodeId, reason: 'test', trigger: { source: 'cli', detail: 'jest' }, ...FAST_RECOVERY }],
  });
  // The reboot is under way; the workflow now waits for the node to come back.
  await s.sim.waitFor((st) => st.vm.bootId === bootBefore + 1 || st.vm.phase !== 'up', 60_000, 'the reboot');
  const victim = await killHolder(h.workflowId, workers);
  const survivor = workers.find((w) => w !== victim);
  const incident = await h.result();
  expect(incident.outcome).toBe('recovered');
  expect(incident.rungs.map((r) => r.rung)).toEqual(['restart-vm']);
  expect(s.sim.status().vm.bootId).toBe(bootBefore + 1);
  expect(incident.rungs[0]?.actions.filter((a) => /reboot VM/.test(a))).toHaveLength(1);
  expect((await scheduled(h.workflowId, ['vmPower'])).filter((a) => /reboot/.test(a))).toHaveLength(1);
  // The survivor did the rest: it completed the workflow's last task.
  expect(await holder(h.workflowId)).toBe(survivor?.identity);
  expect(await identities(h.workflowId)).toContain(victim.identity);
}, 150_000);

test('SIGKILL of the control worker holding a deployment that waits for approval: the other takes the approve and promotes, each action once', async () => {
  const { router, config: routerConfig } = await startTestRouter();
  cleanup.push(() => (router as RouterHandle).close());
  const s = await sandbox({ extra: routerConfig });
  const alias = routedAlias(router, s);
  const queue = uniqueId('gpuops-control-pair');
  const workers = [spawnControl(queue, s.loaded.path), spawnControl(queue, s.loaded.path)];
  await waitForPollers(env.client, queue, 2);
  const h = await startHeldDeployment(env.client, queue, s, alias);
  await waitForDeployment(h, (x) => x.stage === 'awaiting-approval', 90_000);
  const victim = await killHolder(h.workflowId, workers);
  const survivor = workers.find((w) => w !== victim);
  // The update reaches the workflow through the surviving worker (after the dead one's sticky queue times out).
  await h.executeUpdate(approveDeploymentUpdate, { args: [{ by: 'alice' }] });
  const record = await h.result();
  expect(record.outcome).toBe('promoted');
  expect(record.approvedBy).toBe('alice');
  expect(router.table.current.routes[alias]?.variants).toEqual([
    expect.objectContaining({ name: 'stable', model: 'qwen2.5:0.5b-lax', weight: 100 }),
  ]);
  const actions = await scheduled(h.workflowId, [
    'pullModel',
    'changeRoute',
    'setWeights',
    'unloadModel',
    'deleteModel',
  ]);
  expect(actions.filter((a) => a.startsWith('pullModel '))).toHaveLength(1);
  expect(actions.filter((a) => a.startsWith('unloadModel '))).toHaveLength(1);
  expect(actions.length).toBeGreaterThan(2);
  expect(new Set(actions).size).toBe(actions.length);
  expect(await holder(h.workflowId)).toBe(survivor?.identity);
  expect(await identities(h.workflowId)).toContain(victim.identity);
}, 180_000);
