/**
 * recoverNode's reset-gpu and restart-vm rungs when things go wrong around them, on a real Temporal dev server with
 * sandbox nodes: a cancel in the middle of a GPU reset, a node worker killed in the middle of an engine command, and
 * a hung guest that ignores its reboot (and does not come back after its hard reset).
 */
import type { WorkflowHandle } from '@temporalio/client';
import { injectFault } from '../src/sandbox/faults';
import { workflowIds, type IncidentRecord, type RecoverNodeInput } from '../src/contracts';
import type { recoverNode } from '../workflows/recovery';
import { FAST_RECOVERY, controlWorker, recordHistory, useSandboxEnv, type TestSandbox } from './helpers/env';

const ctx = useSandboxEnv();

function startRecovery(s: TestSandbox, extra: Partial<RecoverNodeInput> = {}) {
  return ctx.env.client.workflow.start<typeof recoverNode>('recoverNode', {
    taskQueue: ctx.env.controlQueue,
    workflowId: workflowIds.recover(s.nodeId),
    args: [{ node: s.nodeId, reason: 'test', trigger: { source: 'cli', detail: 'jest' }, ...FAST_RECOVERY, ...extra }],
  });
}

/** Run recoverNode on `s` to its end under a control worker of its own. */
async function recoverToEnd(s: TestSandbox, extra: Partial<RecoverNodeInput> = {}): Promise<IncidentRecord> {
  const w = await controlWorker(ctx.env, s.loaded);
  return w.runUntil(async () => (await startRecovery(s, extra)).result());
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Wait until `activity` is pending on the workflow (and, with `started`, picked up by a worker). */
async function untilPending(h: WorkflowHandle, activity: string, started: boolean, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const d = await h.describe();
    const a = d.raw.pendingActivities?.find((x) => x.activityType?.name === activity);
    if (a && (!started || a.state === 2)) return a;
    if (d.status.name !== 'RUNNING') throw new Error(`${h.workflowId} ended (${d.status.name}) before ${activity}`);
    if (Date.now() > deadline) throw new Error(`${activity} never ${started ? 'started' : 'scheduled'}`);
    await sleep(100);
  }
}

/** The workflow's result; when it takes longer than `ms`, the workflow is terminated and the test fails naming `what`. */
async function resultWithin(h: WorkflowHandle<typeof recoverNode>, ms: number, what: string): Promise<IncidentRecord> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), ms);
  });
  const result = h.result();
  try {
    const r = await Promise.race([result, late]);
    if (r !== 'late') return r;
    await h.terminate(`${what} took too long`).catch(() => undefined);
    await result.catch(() => undefined);
    throw new Error(`${what} took longer than ${ms} ms`);
  } finally {
    clearTimeout(timer);
  }
}

const containerStatus = (s: TestSandbox, container = 'ollama'): string | undefined =>
  s.sim.store.read().containers[container]?.status;

test('ECC errors → the GPU is reset with its engine stopped around it, and the node is verified healthy', async () => {
  const s = await ctx.sandbox();
  injectFault(s.sim.store, 'ecc');
  const incident = await recoverToEnd(s);
  expect(incident.outcome).toBe('recovered');
  expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([['reset-gpu', 'healthy']]);
  expect(incident.rungs[0]?.actions.slice(0, 3)).toEqual([
    'docker stop ollama',
    'nvidia-smi --gpu-reset -i 0: ok',
    'docker start ollama',
  ]);
  expect(containerStatus(s)).toBe('running');
  recordHistory(ctx.env, workflowIds.recover(s.nodeId), 'recover-node-ecc-gpu-reset');
}, 90_000);

test('a recoverNode cancelled during its GPU reset still starts the engines it stopped for the reset', async () => {
  const s = await ctx.sandbox();
  injectFault(s.sim.store, 'ecc');
  const w = await controlWorker(ctx.env, s.loaded);
  const outcome = await w.runUntil(async () => {
    const h = await startRecovery(s);
    await untilPending(h, 'stopContainer', false);
    // Slow the simulated world down so that the reset (200 ms × timeScale) is still running when the cancel lands.
    s.sim.store.update((st) => {
      st.sim.timeScale = 25;
    });
    try {
      await untilPending(h, 'resetGpu', true);
      expect(containerStatus(s)).toBe('exited');
      await h.cancel();
      return await resultWithin(h, 60_000, 'the cancelled recovery').then(
        (r) => `completed: ${r.outcome}`,
        (err: Error) => `${err.name}: ${(err.cause as Error | undefined)?.name ?? ''}`,
      );
    } finally {
      s.sim.store.update((st) => {
        st.sim.timeScale = 1;
      });
    }
  });
  expect(outcome).toBe('WorkflowFailedError: CancelledFailure');
  expect(containerStatus(s)).toBe('running');
  recordHistory(ctx.env, workflowIds.recover(s.nodeId), 'recover-node-gpu-reset-cancelled');
}, 120_000);

test('a node worker killed during an engine restart is noticed by its heartbeat timeout, and the restart is retried', async () => {
  const s = await ctx.sandbox();
  injectFault(s.sim.store, 'engine-hang');
  const w = await controlWorker(ctx.env, s.loaded);
  // A hung engine ignores SIGTERM: docker waits out the whole stop grace, so the restart runs for ~8 s.
  const incident: IncidentRecord = await w.runUntil(async () => {
    const h = await startRecovery(s, { containerStopTimeout: '8s' });
    await untilPending(h, 'restartContainer', true);
    await s.sim.killWorker('SIGKILL');
    const killedAt = Date.now();
    await sleep(500);
    await s.sim.startWorker();
    // Without a heartbeat timeout the dead attempt would hold the rung until its 3 min startToClose.
    const r = await resultWithin(h, 60_000, 'recovery after the node worker was killed');
    expect(Date.now() - killedAt).toBeLessThan(60_000);
    const history = await h.fetchHistory();
    const restarts = (history.events ?? []).filter(
      (e) => e.activityTaskStartedEventAttributes && e.eventId && restartScheduled(history.events ?? [], e),
    );
    expect(restarts.map((e) => e.activityTaskStartedEventAttributes?.attempt)).toEqual([2]);
    expect(restarts[0]?.activityTaskStartedEventAttributes?.lastFailure?.message).toMatch(/heartbeat/i);
    return r;
  });
  expect(incident.outcome).toBe('recovered');
  expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([['restart-container', 'healthy']]);
}, 120_000);

type HistoryEvent = NonNullable<Awaited<ReturnType<WorkflowHandle['fetchHistory']>>['events']>[number];

/** Whether an ActivityTaskStarted event belongs to a restartContainer activity. */
function restartScheduled(events: HistoryEvent[], started: HistoryEvent): boolean {
  const id = Number(started.activityTaskStartedEventAttributes?.scheduledEventId ?? 0);
  const scheduled = events.find((e) => Number(e.eventId) === id);
  return scheduled?.activityTaskScheduledEventAttributes?.activityType?.name === 'restartContainer';
}

/** A hung guest whose ACPI reboot times out after 2 s (Proxmox: "VM quit/powerdown failed - got timeout"). */
async function hungGuest(bootMs?: number): Promise<TestSandbox> {
  const s = await ctx.sandbox({ proxmox: true, bootSeconds: 1 });
  s.sim.store.update((st) => {
    st.vm.acpiTimeoutMs = 2000;
    if (bootMs !== undefined) st.vm.bootMs = bootMs;
  });
  injectFault(s.sim.store, 'node-down');
  return s;
}

const resets = (incident: IncidentRecord): string[] =>
  incident.rungs.flatMap((r) => r.actions).filter((a) => /^Proxmox reset VM/.test(a));

test('a hung guest that ignores its reboot gets a hard reset and recovers', async () => {
  const s = await hungGuest();
  const bootBefore = s.sim.status().vm.bootId;
  const incident = await recoverToEnd(s);
  expect(incident.outcome).toBe('recovered');
  expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([['restart-vm', 'healthy']]);
  const actions = incident.rungs[0]?.actions ?? [];
  expect(actions[0]).toMatch(/^Proxmox reboot VM \d+ on pve-test: UPID:/);
  expect(actions[1]).toMatch(/^task stopped \(VM quit\/powerdown failed - got timeout\)$/);
  expect(resets(incident)).toHaveLength(1);
  expect(s.sim.status().vm.bootId).toBe(bootBefore + 1);
}, 120_000);

test('a hung guest still unreachable after its hard reset is not reset again: the ladder escalates', async () => {
  // The reset works, but the guest takes a minute to boot: longer than the rung waits for it.
  const s = await hungGuest(60_000);
  const incident = await recoverToEnd(s, { bootTimeout: '5s' });
  expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([
    ['restart-vm', 'still-faulty'],
    ['escalate', 'skipped'],
  ]);
  expect(resets(incident)).toHaveLength(1);
  expect(incident.outcome).toBe('escalated');
  recordHistory(ctx.env, workflowIds.recover(s.nodeId), 'recover-node-hung-guest-one-reset');
}, 120_000);
