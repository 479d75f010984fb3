/**
 * inspectNode on a real Temporal dev server, a real control worker, and a sandbox node whose real node worker
 * (workers/node.ts) runs as a child process with the sandbox shims first on its PATH.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { clearFaults, injectFault } from '../src/sandbox/faults';
import * as core from '../src/sandbox/shims/lib/core';
import { nodeTaskQueue } from '../src/contracts';
import type { HealthReport } from '../src/domain/classify';
import type { inspectNode } from '../workflows/inspect-node';
import { controlWorker, uniqueId, useSandboxEnv, waitForPoller } from './helpers/env';
import { writeTestSecret } from './helpers/secrets';

const ctx = useSandboxEnv({ sandbox: {} });

function run(input: Record<string, unknown>): Promise<HealthReport> {
  return ctx.env.client.workflow.execute('inspectNode', {
    taskQueue: ctx.env.controlQueue,
    workflowId: uniqueId('inspect'),
    args: [input],
  });
}

test('reports a healthy sandbox node: engine answers a real generation, container running, GPU read from nvidia-smi', async () => {
  const worker = await controlWorker(ctx.env, ctx.sbx.loaded);
  const report = await worker.runUntil(run({ node: ctx.sbx.nodeId, expectedGpus: 1 }));
  expect(report.healthy).toBe(true);
  expect(report.recommendedRung).toBe('none');
  expect(report.problems).toEqual([]);
  const o = report.observation;
  expect(o.reachable).toBe(true);
  expect(o.engines).toHaveLength(1);
  expect(o.engines[0]).toMatchObject({ name: 'ollama', type: 'ollama', reachable: true, healthy: true });
  expect(o.engines[0]?.generation?.ok).toBe(true);
  expect(o.containers[0]).toMatchObject({ name: 'ollama', status: 'running', running: true, oomKilled: false });
  expect(o.gpus[0]).toMatchObject({ index: 0, name: 'NVIDIA RTX A4000', memoryTotalMiB: 16376, lost: false });
  expect(o.gpuError).toBeNull();
});

test('an engine behind an API key (apiKeyFile) is probed with it, a real generation included: the key is read on the node, never sent through Temporal', async () => {
  // A registered test secret: the run's secret scan fails if the key shows up in history, the database or a log.
  const keyFile = path.join(mkdtempSync(path.join(os.tmpdir(), 'gpuops-engine-key-')), 'vllm.key');
  writeTestSecret(keyFile, 'engine-api-key');
  const sbx = await ctx.sandbox({
    hardware: {
      gpus: [{ index: 0, model: 'NVIDIA RTX A4000', memoryMiB: 16376 }],
      engines: [{ name: 'vllm', type: 'vllm', container: 'vllm', gpus: [0], apiKeyFile: keyFile }],
    },
  });
  const worker = await controlWorker(ctx.env, sbx.loaded);
  const report = await worker.runUntil(run({ node: sbx.nodeId, expectedGpus: 1 }));
  expect(report.problems).toEqual([]);
  expect(report.observation.engines[0]).toMatchObject({ name: 'vllm', reachable: true, healthy: true });
  expect(report.observation.engines[0]?.generation?.ok).toBe(true);
  // The simulated vLLM refuses a request without the key (as vLLM --api-key does).
  const url = sbx.loaded.config.nodes[0]?.engines[0]?.url ?? '';
  expect((await fetch(`${url}/v1/models`)).status).toBe(401);
});

test('classifies Xid 79 (GPU fell off the bus) as needing a VM restart', async () => {
  injectFault(ctx.sbx.sim.store, 'xid-79');
  try {
    const worker = await controlWorker(ctx.env, ctx.sbx.loaded);
    const report = await worker.runUntil(run({ node: ctx.sbx.nodeId, expectedGpus: 1 }));
    expect(report.healthy).toBe(false);
    expect(report.recommendedRung).toBe('restart-vm');
    expect(report.observation.xids.map((x) => x.xid)).toContain(79);
    expect(report.problems.map((p) => p.kind)).toEqual(expect.arrayContaining(['gpu-xid', 'gpu-lost']));
    expect(report.observation.gpuError).toMatch(/GPU is lost/);
  } finally {
    ctx.sbx.sim.store.update((s) => {
      s.faults = [];
    });
    await ctx.sbx.sim.reset();
    await ctx.sbx.sim.waitFor((s) => s.vm.phase === 'up' && s.worker.running, 30_000, 'VM back up after reset');
  }
});

test('classifies a hung engine (health answers, generation does not) as needing a container restart', async () => {
  injectFault(ctx.sbx.sim.store, 'engine-hang');
  try {
    const worker = await controlWorker(ctx.env, ctx.sbx.loaded);
    const report = await worker.runUntil(run({ node: ctx.sbx.nodeId, probeTimeout: '4s' }));
    expect(report.recommendedRung).toBe('restart-container');
    expect(report.problems).toEqual([
      expect.objectContaining({ kind: 'engine-hung', subject: 'ollama', rung: 'restart-container' }),
    ]);
  } finally {
    ctx.sbx.sim.store.update((s) => {
      for (const c of Object.values(s.containers)) c.faults.hang = false;
      s.faults = s.faults.filter((f) => f.kind !== 'engine-hang');
    });
  }
});

test('survives the node worker being killed with SIGKILL mid-activity: the probe is retried on the restarted worker', async () => {
  // A hung engine keeps probeEngines running long enough to kill the worker in the middle of it.
  injectFault(ctx.sbx.sim.store, 'engine-hang');
  const worker = await controlWorker(ctx.env, ctx.sbx.loaded);
  try {
    await worker.runUntil(async () => {
      const handle = await ctx.env.client.workflow.start<typeof inspectNode>('inspectNode', {
        taskQueue: ctx.env.controlQueue,
        workflowId: uniqueId('inspect-kill'),
        args: [{ node: ctx.sbx.nodeId, probeTimeout: '4s' }],
      });
      // Wait until probeEngines has been picked up by the node worker.
      const deadline = Date.now() + 20_000;
      for (;;) {
        const d = await handle.describe();
        const started = d.raw.pendingActivities?.some(
          (a) => a.activityType?.name === 'probeEngines' && a.state === 2 /* STARTED */,
        );
        if (started) break;
        if (Date.now() > deadline) throw new Error('probeEngines never started');
        await new Promise((r) => setTimeout(r, 100));
      }
      const pidBefore = ctx.sbx.sim.status().worker.pid;
      await ctx.sbx.sim.killWorker('SIGKILL');
      expect(ctx.sbx.sim.status().worker.running).toBe(false);
      await ctx.sbx.sim.startWorker();
      expect(ctx.sbx.sim.status().worker.pid).not.toBe(pidBefore);

      const report = await handle.result();
      expect(report.observation.reachable).toBe(true);
      expect(report.problems.map((p) => p.kind)).toContain('engine-hung');
      // The history proves the activity ran again after the kill: its final attempt is at least the second.
      const history = await handle.fetchHistory();
      const attempts = (history.events ?? [])
        .filter((e) => e.activityTaskStartedEventAttributes)
        .map((e) => e.activityTaskStartedEventAttributes?.attempt ?? 1);
      expect(Math.max(...attempts)).toBeGreaterThanOrEqual(2);
    });
  } finally {
    ctx.sbx.sim.store.update((s) => {
      for (const c of Object.values(s.containers)) c.faults.hang = false;
      s.faults = s.faults.filter((f) => f.kind !== 'engine-hang');
    });
  }
}, 90_000);

test('reports the node unreachable when no node worker picks up the probes in time', async () => {
  await ctx.sbx.sim.killWorker('SIGKILL');
  try {
    const worker = await controlWorker(ctx.env, ctx.sbx.loaded);
    const report = await worker.runUntil(run({ node: ctx.sbx.nodeId, pickupTimeout: '2s' }));
    expect(report.observation.reachable).toBe(false);
    expect(report.problems).toEqual([expect.objectContaining({ kind: 'node-unreachable', rung: 'restart-vm' })]);
  } finally {
    await ctx.sbx.sim.startWorker();
    await waitForPoller(ctx.env.client, nodeTaskQueue(ctx.sbx.nodeId));
  }
});

test('fails at once with a field-named, non-retryable error on bad input', async () => {
  const worker = await controlWorker(ctx.env, ctx.sbx.loaded);
  const err = await worker.runUntil(run({ node: 'Not A Node', probeTimeout: 'soon' }).catch((e: unknown) => e));
  expect(err).toBeInstanceOf(WorkflowFailedError);
  const cause = (err as WorkflowFailedError).cause as Error & { type?: string; nonRetryable?: boolean };
  expect(cause.type).toBe('ValidationError');
  expect(cause.nonRetryable).toBe(true);
  expect(cause.message).toMatch(/node: must be a node id/);
  expect(cause.message).toMatch(/probeTimeout: must be a duration/);
});

describe("the driver's verdict (GPU recovery action) from the simulated nvidia-smi", () => {
  /** Log an Xid on GPU 0 as the driver does; the lines go again in `forget`. */
  const logXid = (xid: number, text: string): void =>
    ctx.sbx.sim.store.update((s, now) => {
      const g = s.gpus[0]!;
      core.appendKernel(s, now, 'err', `NVRM: Xid (PCI:${core.xidPci(g)}): ${xid}, pid=4242, name=ollama, ${text}`);
    });
  const forget = (): void => {
    clearFaults(ctx.sbx.sim.store, ['gpu-recovery-reset']);
    ctx.sbx.sim.store.update((s) => {
      s.kernelLog = s.kernelLog.filter((l) => !l.m.includes('pid=4242'));
    });
  };
  const inspect = async (): Promise<HealthReport> =>
    (await controlWorker(ctx.env, ctx.sbx.loaded)).runUntil(run({ node: ctx.sbx.nodeId, expectedGpus: 1 }));

  test('a Reset verdict with no Xid in the kernel log is a problem calling for a GPU reset', async () => {
    injectFault(ctx.sbx.sim.store, 'gpu-recovery-reset');
    try {
      const report = await inspect();
      expect(report.observation.gpus[0]?.recoveryAction).toBe('reset');
      expect(report.observation.xids).toEqual([]);
      expect(report.recommendedRung).toBe('reset-gpu');
      expect(report.problems).toEqual([
        {
          kind: 'gpu-recovery-action',
          subject: 'gpu0',
          detail: `the driver's recovery action for NVIDIA RTX A4000 (00000000:01:00.0) is "Reset"`,
          rung: 'reset-gpu',
          severity: 'critical',
        },
      ]);
    } finally {
      forget();
    }
  }, 60_000);

  test('Xid 13 (an application fault) with the driver saying Reset on its GPU calls for a GPU reset', async () => {
    logXid(13, 'Graphics SM Warp Exception on (GPC 0, TPC 1, SM 0): Out Of Range Address');
    injectFault(ctx.sbx.sim.store, 'gpu-recovery-reset');
    try {
      const report = await inspect();
      expect(report.recommendedRung).toBe('reset-gpu');
      const xid = report.problems.find((p) => p.kind === 'gpu-xid');
      expect(xid).toMatchObject({ subject: '0000:01:00', rung: 'reset-gpu' });
      expect(xid?.detail).toContain('driver says Reset: reset-gpu (the Xid table would say restart-container)');
    } finally {
      forget();
    }
  }, 60_000);

  test('Xid 79 keeps its VM restart while the driver says None: the kernel log is its only witness', async () => {
    logXid(79, 'GPU has fallen off the bus.');
    try {
      const report = await inspect();
      expect(report.observation.gpus[0]?.recoveryAction).toBe('none');
      expect(report.recommendedRung).toBe('restart-vm');
      expect(report.problems.map((p) => [p.kind, p.rung])).toEqual([['gpu-xid', 'restart-vm']]);
    } finally {
      forget();
    }
  }, 60_000);
});
