/**
 * recoverNode and watchNode on a real Temporal dev server with sandbox nodes: the real node worker runs as a child
 * process, VM reboots go through the simulated Proxmox API and really stop and restart that worker.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Worker } from '@temporalio/worker';
import { injectFault, clearFaults, type SandboxFaultKind } from '../src/sandbox/faults';
import { getWatchStatusQuery, hypervisorTaskQueue, setMaintenanceUpdate, workflowIds } from '../src/contracts';
import { ManagedProcess, tsxCommand } from '../src/cli/processes';
import type { recoverNode, watchNode } from '../workflows/recovery';
import { startRouter } from '../src/router';
import { startHooksServer } from '../src/hooks/server';
import { freePort } from '../src/sandbox/node';
import { writeTestSecret } from './helpers/secrets';
import { startWebhookReceiver } from './helpers/webhook';
import {
  FAST_RECOVERY,
  controlWorker,
  recordHistory,
  testAddress,
  uniqueId,
  useSandboxEnv,
  waitForPoller,
  type TestSandbox,
} from './helpers/env';

const routers: { close(): Promise<void> }[] = [];
const ctx = useSandboxEnv({
  async beforeStop() {
    for (const r of routers) await r.close();
  },
});

/** Timings that keep a test in seconds; production defaults are minutes. */
const fast = FAST_RECOVERY;

function startRecovery(s: TestSandbox, extra: Record<string, unknown> = {}) {
  return ctx.env.client.workflow.start<typeof recoverNode>('recoverNode', {
    taskQueue: ctx.env.controlQueue,
    workflowId: workflowIds.recover(s.nodeId),
    workflowIdConflictPolicy: 'USE_EXISTING',
    args: [{ node: s.nodeId, reason: 'test', trigger: { source: 'cli', detail: 'jest' }, ...fast, ...extra }],
  });
}

/** A watcher probing every 300 ms with fast recovery timings. */
function startWatcher(s: TestSandbox, failureThreshold: number) {
  return ctx.env.client.workflow.start<typeof watchNode>('watchNode', {
    taskQueue: ctx.env.controlQueue,
    workflowId: workflowIds.watch(s.nodeId),
    args: [
      {
        node: s.nodeId,
        probeInterval: '300ms',
        failureThreshold,
        pickupTimeout: '2s',
        // A round's deadline is probeTimeout − 2 s: 4 s leaves the loaded shims room (a probe cut by it makes the
        // round unknown, which keeps the failure count), while a hang still costs a round only its 1 s generation.
        probeTimeout: '6s',
        generateTimeout: '1s',
        recovery: fast,
      },
    ],
  });
}

async function withControl<T>(s: TestSandbox, fn: (w: Worker) => Promise<T>): Promise<T> {
  const w = await controlWorker(ctx.env, s.loaded);
  return w.runUntil(fn(w));
}

/** A fresh sandbox node with `fault` injected, and the incident record of one recoverNode run on it. */
async function recoverFrom(fault: SandboxFaultKind) {
  const s = await ctx.sandbox();
  injectFault(s.sim.store, fault);
  const incident = await withControl(s, async () => (await startRecovery(s)).result());
  return { s, incident };
}

test('engine hang → the container is restarted → the node is verified healthy', async () => {
  const { s, incident } = await recoverFrom('engine-hang');
  expect(incident.outcome).toBe('recovered');
  expect(incident.initial?.recommendedRung).toBe('restart-container');
  expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([['restart-container', 'healthy']]);
  expect(incident.rungs[0]?.actions).toContain('docker restart ollama');
  expect(incident.final?.healthy).toBe(true);
  expect(s.sim.status().faults).toEqual([]);
});

test("the driver's Reset verdict (no Xid) → straight to a GPU reset with the engine stopped around it → healthy", async () => {
  const { s, incident } = await recoverFrom('gpu-recovery-reset');
  expect(incident.outcome).toBe('recovered');
  expect(incident.initial?.recommendedRung).toBe('reset-gpu');
  expect(incident.initial?.problems.map((p) => p.kind)).toEqual(['gpu-recovery-action']);
  expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([['reset-gpu', 'healthy']]);
  expect(incident.rungs[0]?.actions.filter((a) => /^(docker|nvidia-smi) /.test(a))).toEqual([
    'docker stop ollama',
    'nvidia-smi --gpu-reset -i 0: ok',
    'docker start ollama',
  ]);
  expect(s.sim.status().faults).toEqual([]);
});

test('Xid 79 → the VM is rebooted through the Proxmox API; the node worker and engine stop, come back, and the same workflow finishes healthy', async () => {
  const s = await ctx.sandbox({ proxmox: true, bootSeconds: 1 });
  injectFault(s.sim.store, 'xid-79');
  const bootBefore = s.sim.status().vm.bootId;
  const startsBefore = s.sim.status().worker.starts;
  const incident = await withControl(s, async () => {
    const h = await startRecovery(s);
    const r = await h.result();
    // The run that asked for the reboot is the run that finished after it.
    expect((await h.describe()).runId).toBe(h.firstExecutionRunId);
    return r;
  });
  expect(incident.outcome).toBe('recovered');
  expect(incident.initial?.recommendedRung).toBe('restart-vm');
  expect(incident.evidence.xids.map((x) => x.xid)).toContain(79);
  expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([['restart-vm', 'healthy']]);
  expect(incident.rungs[0]?.actions.join('\n')).toMatch(/Proxmox reboot VM \d+ on pve-test: UPID:pve:/);
  expect(s.sim.status().vm.bootId).toBe(bootBefore + 1);
  expect(s.sim.status().worker.starts).toBeGreaterThan(startsBefore);
}, 120_000);

test('a fault no rung can fix ends in drain + notification, and the record says what was tried', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-hook-'));
  const hook = await startWebhookReceiver(dir);
  const received = hook.received;
  try {
    // No vm in the config: a GPU that fell off the bus cannot be fixed by gpuops, only escalated.
    const tokenFile = path.join(dir, 'router-token');
    writeTestSecret(tokenFile, 'router-admin-token');
    const routerPort = await freePort();
    const router = await startRouter({ port: routerPort, adminTokenFile: tokenFile });
    routers.push(router);
    const s = await ctx.sandbox({
      extra: {
        notifications: [hook.notifier('oncall')],
        router: { listen: `127.0.0.1:${routerPort}`, adminTokenFile: tokenFile },
      },
    });
    injectFault(s.sim.store, 'xid-79');
    const incident = await withControl(s, async () => (await startRecovery(s)).result());
    expect(incident.outcome).toBe('escalated');
    expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([
      ['restart-vm', 'skipped'],
      ['escalate', 'skipped'],
    ]);
    expect(incident.rungs[0]?.detail).toMatch(/no vm/);
    expect(incident.escalation?.notified).toEqual(['oncall']);
    const engineUrl = s.loaded.config.nodes[0]?.engines[0]?.url ?? '';
    expect(incident.escalation?.drained).toEqual([engineUrl]);
    expect(router.table.current.drained).toEqual([engineUrl]);
    expect(received).toHaveLength(1);
    expect(received[0]).toMatchObject({
      source: 'gpuops',
      severity: 'critical',
      fields: { node: s.nodeId, outcome: 'escalated' },
    });
    expect(JSON.stringify(received[0])).toContain('restart-vm: skipped');
    clearFaults(s.sim.store);
  } finally {
    await hook.close();
  }
}, 90_000);

test('the budget stops a fourth recovery within the hour and escalates instead', async () => {
  const s = await ctx.sandbox();
  const outcomes = await withControl(s, async () => {
    const out: string[] = [];
    for (let i = 0; i < 4; i++) {
      injectFault(s.sim.store, 'engine-hang');
      const incident = await (await startRecovery(s, { maxRecoveries: 3 })).result();
      out.push(`${incident.outcome}:${incident.budget.used}`);
      clearFaults(s.sim.store);
    }
    return out;
  });
  expect(outcomes).toEqual(['recovered:0', 'recovered:1', 'recovered:2', 'escalated:3']);
}, 120_000);

test('a healthy node is not touched: recoverNode records no-fault-found and does not spend the budget', async () => {
  const s = await ctx.sandbox();
  const incident = await withControl(s, async () => (await startRecovery(s)).result());
  expect(incident.outcome).toBe('no-fault-found');
  expect(incident.rungs).toEqual([]);
});

test('watchNode: a single failed probe never triggers recovery; persistent failures do', async () => {
  const s = await ctx.sandbox();
  await withControl(s, async () => {
    const h = await startWatcher(s, 3);
    // One blip: the engine hangs for a single probe, then recovers by itself.
    const waitProbes = async (n: number): Promise<void> => {
      const target = (await h.query(getWatchStatusQuery)).probes + n;
      while ((await h.query(getWatchStatusQuery)).probes < target) await new Promise((r) => setTimeout(r, 100));
    };
    await waitProbes(1);
    injectFault(s.sim.store, 'engine-hang');
    for (;;) {
      const st = await h.query(getWatchStatusQuery);
      if (st.consecutiveFailures >= 1) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    clearFaults(s.sim.store);
    await waitProbes(3);
    const st = await h.query(getWatchStatusQuery);
    expect(st.consecutiveFailures).toBe(0);
    expect(st.lastAction).toBeNull();
    await expect(ctx.env.client.workflow.getHandle(workflowIds.recover(s.nodeId)).describe()).rejects.toThrow(
      /not found/i,
    );

    // A fault that persists crosses the threshold and is recovered.
    injectFault(s.sim.store, 'engine-hang');
    for (;;) {
      const now = await h.query(getWatchStatusQuery);
      if (
        now.lastAction &&
        !/^fault/.test(now.lastAction.detail) &&
        /recovered|escalated/.test(now.lastAction.detail)
      ) {
        expect(now.lastAction.detail).toMatch(/^recovered after restart-container/);
        break;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    await h.terminate('test done');
  });
}, 90_000);

test('watchNode: a fault during maintenance is not recovered; bad maintenance input is refused with a reason', async () => {
  const s = await ctx.sandbox();
  await withControl(s, async () => {
    const h = await startWatcher(s, 2);
    await expect(
      h.executeUpdate(setMaintenanceUpdate, { args: [{ reason: 'x', engine: 'nope', duration: '5m' }] }),
    ).rejects.toMatchObject({ cause: { message: expect.stringMatching(/engine: must be one of ollama/) } });
    await expect(h.executeUpdate(setMaintenanceUpdate, { args: [{ reason: 'x' }] })).rejects.toMatchObject({
      cause: { message: expect.stringMatching(/must set exactly one of duration or until/) },
    });
    const windows = await h.executeUpdate(setMaintenanceUpdate, {
      args: [{ reason: 'driver upgrade', duration: '10m', by: 'jest' }],
    });
    expect(windows).toEqual([expect.objectContaining({ reason: 'driver upgrade', engine: null, by: 'jest' })]);
    injectFault(s.sim.store, 'container-exit');
    const startProbes = (await h.query(getWatchStatusQuery)).probes;
    while ((await h.query(getWatchStatusQuery)).probes < startProbes + 5) await new Promise((r) => setTimeout(r, 100));
    const st = await h.query(getWatchStatusQuery);
    expect(st.lastReport?.healthy).toBe(false);
    expect(st.consecutiveFailures).toBe(0);
    expect(st.lastAction).toBeNull();
    await expect(ctx.env.client.workflow.getHandle(workflowIds.recover(s.nodeId)).describe()).rejects.toThrow(
      /not found/i,
    );
    await h.terminate('test done');
    clearFaults(s.sim.store);
  });
}, 60_000);

test('killing the control worker mid-recovery and restarting it finishes the recovery without repeating the reboot', async () => {
  const s = await ctx.sandbox({ proxmox: true, bootSeconds: 4 });
  injectFault(s.sim.store, 'xid-79');
  const bootBefore = s.sim.status().vm.bootId;
  const queue = uniqueId('gpuops-control-kill');
  const cmd = tsxCommand('workers/control.ts', ['--task-queue', queue]);
  const spawnControl = (): ManagedProcess =>
    new ManagedProcess({
      name: 'control',
      ...cmd,
      env: { TEMPORAL_ADDRESS: testAddress(), GPUOPS_CONFIG: s.loaded.path },
      log: () => undefined,
      restartDelayMs: 60_000,
    });
  let control = spawnControl();
  control.start();
  const h = await ctx.env.client.workflow.start<typeof recoverNode>('recoverNode', {
    taskQueue: queue,
    workflowId: workflowIds.recover(s.nodeId),
    args: [{ node: s.nodeId, reason: 'test', trigger: { source: 'cli', detail: 'jest' }, ...fast }],
  });
  // Wait for the reboot to happen, then kill the control worker while the workflow waits for the node to return.
  await s.sim.waitFor((st) => st.vm.bootId === bootBefore + 1 || st.vm.phase !== 'up', 60_000, 'the reboot');
  await control.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 1000));
  control = spawnControl();
  control.start();
  try {
    const incident = await h.result();
    expect(incident.outcome).toBe('recovered');
    expect(incident.rungs.map((r) => r.rung)).toEqual(['restart-vm']);
    // One boot, from one reboot; on a failure the rung's actions say where a second one came from.
    const actions = incident.rungs[0]?.actions ?? [];
    expect({ boots: s.sim.status().vm.bootId - bootBefore, actions }).toEqual({ boots: 1, actions });
    expect(actions.filter((a) => /reboot VM/.test(a))).toHaveLength(1);
  } finally {
    await control.stop();
  }
}, 150_000);

test('Alertmanager → real recoverNode: an Xid 79 alert delivered three times reboots the VM once and recovers', async () => {
  const s = await ctx.sandbox({ proxmox: true, bootSeconds: 1 });
  const tokenFile = path.join(s.dir, 'hook-token');
  const token = writeTestSecret(tokenFile, 'hooks-token');
  const hooks = await startHooksServer({
    loaded: s.loaded,
    client: ctx.env.client,
    listen: '127.0.0.1:0',
    tokenFile,
    stateFile: path.join(s.dir, 'hooks-seen.json'),
    taskQueue: ctx.env.controlQueue,
  });
  try {
    injectFault(s.sim.store, 'xid-79');
    const bootBefore = s.sim.status().vm.bootId;
    const body = JSON.stringify({
      version: '4',
      groupKey: '{}:{alertname="GpuXidError"}',
      truncatedAlerts: 0,
      status: 'firing',
      receiver: 'gpuops',
      groupLabels: { alertname: 'GpuXidError' },
      commonLabels: { alertname: 'GpuXidError' },
      commonAnnotations: {},
      externalURL: 'http://alertmanager.lan:9093',
      alerts: [
        {
          status: 'firing',
          labels: { alertname: 'GpuXidError', gpuops_node: s.nodeId, severity: 'critical' },
          annotations: { summary: 'Xid 79: GPU has fallen off the bus' },
          startsAt: '2026-11-22T10:15:30.123Z',
          endsAt: '0001-01-01T00:00:00Z',
          generatorURL: 'http://prometheus.lan:9090/graph',
          fingerprint: 'a1b2c3d4e5f60718',
        },
      ],
    });
    const post = (auth: string | null) =>
      fetch(`${hooks.url}/hooks/alertmanager`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
        body,
      });
    expect((await post(null)).status).toBe(401);
    const incident = await withControl(s, async () => {
      for (let i = 0; i < 3; i++) expect((await post(`Bearer ${token}`)).status).toBe(200);
      return ctx.env.client.workflow.getHandle<typeof recoverNode>(workflowIds.recover(s.nodeId)).result();
    });
    expect(incident.trigger).toMatchObject({
      source: 'alertmanager',
      alertKey: 'a1b2c3d4e5f60718@2026-11-22T10:15:30.123Z',
    });
    expect(incident.outcome).toBe('recovered');
    expect(s.sim.status().vm.bootId).toBe(bootBefore + 1);
    const runs = await ctx.env.client.workflow.count(`WorkflowId = '${workflowIds.recover(s.nodeId)}'`);
    expect(runs.count).toBe(1);
  } finally {
    await hooks.close();
  }
}, 120_000);

test('Xid 79 on a VM behind a qm hypervisor: the reboot runs on the hypervisor worker, and the node recovers', async () => {
  const s = await ctx.sandbox({ qm: true, bootSeconds: 1 });
  const hv = s.loaded.config.hypervisors[0]?.id ?? '';
  await waitForPoller(ctx.env.client, hypervisorTaskQueue(hv));
  injectFault(s.sim.store, 'xid-79');
  const bootBefore = s.sim.status().vm.bootId;
  const incident = await withControl(s, async () => (await startRecovery(s)).result());
  expect(incident.outcome).toBe('recovered');
  expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([['restart-vm', 'healthy']]);
  expect(incident.rungs[0]?.actions[0]).toMatch(new RegExp(`^qm reboot \\d+ on ${hv}: ok`));
  expect(s.sim.status().vm.bootId).toBe(bootBefore + 1);
}, 120_000);

test('watchNode continues as new with its maintenance windows, and goes on probing after its worker is replaced', async () => {
  const s = await ctx.sandbox();
  const h = await ctx.env.client.workflow.start<typeof watchNode>('watchNode', {
    taskQueue: ctx.env.controlQueue,
    workflowId: workflowIds.watch(s.nodeId),
    args: [
      {
        node: s.nodeId,
        probeInterval: '200ms',
        probesPerRun: 3,
        pickupTimeout: '2s',
        probeTimeout: '6s',
        generate: false,
      },
    ],
  });
  const firstRun = h.firstExecutionRunId;
  await withControl(s, async () => {
    await h.executeUpdate(setMaintenanceUpdate, { args: [{ reason: 'carried', duration: '10m' }] });
    for (;;) {
      const d = await h.describe();
      if (d.runId !== firstRun) break;
      await new Promise((r) => setTimeout(r, 100));
    }
  });
  // The first run, which ends in continue-as-new (recorded once, with the code of its day; never re-recorded).
  recordHistory(ctx.env, workflowIds.watch(s.nodeId), 'watch-node-continued-as-new', firstRun);
  // A new control worker (the old one is gone) picks the watcher up where the history says it is.
  await withControl(s, async () => {
    const before = (await h.query(getWatchStatusQuery)).probes;
    for (;;) {
      const st = await h.query(getWatchStatusQuery);
      if (st.probes > before) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const st = await h.query(getWatchStatusQuery);
    expect(st.maintenance).toEqual([expect.objectContaining({ reason: 'carried' })]);
    expect((await h.describe()).runId).not.toBe(firstRun);
    await h.terminate('test done');
  });
}, 60_000);
