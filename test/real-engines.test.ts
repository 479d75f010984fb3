/**
 * gpuops against real engines: llama.cpp `llama-server` and Ollama built by `npm run engines`, serving tiny generated
 * GGUF models, on a sandbox node whose GPUs and hypervisor stay simulated. The engines run as keeper-run processes
 * (`runtime: process`) and, where a Docker engine runs, in real containers (`runtime: docker`, the real docker CLI).
 * Faults are real: a hang is SIGSTOP / `docker pause`, an exit is SIGKILL / `docker kill`.
 */
import path from 'node:path';
import { clearFaults, injectFault } from '../src/sandbox/faults';
import type { HealthReport } from '../src/domain/classify';
import { getWatchStatusQuery, workflowIds } from '../src/contracts';
import type { inspectNode } from '../workflows/inspect-node';
import type { recoverNode, watchNode } from '../workflows/recovery';
import { FAST_RECOVERY, controlWorker, uniqueId, useSandboxEnv, type TestSandbox } from './helpers/env';
import {
  engineTools,
  llamaEngine,
  ollamaEngine,
  realDockerBin,
  realTest,
  removeTempDirs,
  tempDir,
} from './helpers/real-engines';

const ctx = useSandboxEnv();
afterAll(removeTempDirs);

async function realSandbox(
  build: (dir: string) => Promise<(Record<string, unknown> & { name: string })[]>,
): Promise<TestSandbox> {
  const dir = tempDir('node');
  const s = await ctx.sandbox({
    hardware: { gpus: [{ index: 0, model: 'NVIDIA RTX A4000', memoryMiB: 16376 }], engines: await build(dir) },
    tools: { docker: realDockerBin(), processDir: path.join(dir, 'processes') },
  });
  await s.sim.waitFor(() => true, 1000).catch(() => undefined);
  return s;
}

function inspect(s: TestSandbox): Promise<HealthReport> {
  return ctx.env.client.workflow.execute<typeof inspectNode>('inspectNode', {
    taskQueue: ctx.env.controlQueue,
    workflowId: uniqueId('inspect'),
    args: [{ node: s.nodeId }],
  });
}

/** The process's status once it reads `want`, or the last one read when `ms` ran out. */
async function statusWithin(
  s: { sim: { real: { processes: { inspectOne(n: string): Promise<{ status: string }> } } } },
  name: string,
  want: string,
  ms: number,
): Promise<string> {
  const end = Date.now() + ms;
  for (;;) {
    const { status } = await s.sim.real.processes.inspectOne(name);
    if (status === want || Date.now() > end) return status;
    await new Promise((res) => setTimeout(res, 100));
  }
}
/** Inspect until the node is healthy (real engines take a moment to load their model after a start). */
async function untilHealthy(s: TestSandbox, timeoutMs = 60_000): Promise<HealthReport> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await inspect(s);
    if (r.healthy) return r;
    if (Date.now() > end) throw new Error(`not healthy: ${JSON.stringify(r.problems)}`);
    await new Promise((res) => setTimeout(res, 500));
  }
}

/** Run `fn` with a fast watcher on the node, terminated afterwards whatever happens. */
async function withWatcher(
  s: TestSandbox,
  fn: (h: Awaited<ReturnType<typeof startWatcher>>) => Promise<void>,
): Promise<void> {
  const h = await startWatcher(s);
  try {
    await fn(h);
  } finally {
    await h.terminate('test done').catch(() => undefined);
  }
}

function startWatcher(s: TestSandbox) {
  return ctx.env.client.workflow.start<typeof watchNode>('watchNode', {
    taskQueue: ctx.env.controlQueue,
    workflowId: workflowIds.watch(s.nodeId),
    args: [
      {
        node: s.nodeId,
        probeInterval: '500ms',
        failureThreshold: 2,
        pickupTimeout: '2s',
        // Round deadline probeTimeout − 2 s = 4 s for the loaded shims; a hang still costs a round its 1 s generation.
        probeTimeout: '6s',
        generateTimeout: '1s',
        recovery: { ...FAST_RECOVERY, verifyTimeout: '60s' },
      },
    ],
  });
}

/** Wait until the watcher has acted on a fault and say what it did. */
async function watcherAction(h: Awaited<ReturnType<typeof startWatcher>>, timeoutMs = 90_000): Promise<string> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const st = await h.query(getWatchStatusQuery);
    if (st.lastAction && /recovered|escalated/.test(st.lastAction.detail)) return st.lastAction.detail;
    if (Date.now() > end) throw new Error(`watcher did not act: ${JSON.stringify(st)}`);
    await new Promise((res) => setTimeout(res, 250));
  }
}

async function lastIncident(s: TestSandbox) {
  return ctx.env.client.workflow.getHandle<typeof recoverNode>(workflowIds.recover(s.nodeId)).result();
}

describe('runtime process: real llama-server and real Ollama as keeper-run processes', () => {
  let s: TestSandbox;
  const it = realTest(['llamaServer', 'ollama']);

  beforeAll(async () => {
    const t = engineTools();
    if (!t.llamaServer || !t.ollama || !t.models.v1) return;
    s = await realSandbox(async (dir) => [
      await llamaEngine({ runtime: 'process', model: t.models.v1 as string }),
      await ollamaEngine({
        runtime: 'process',
        modelsDir: path.join(dir, 'ollama-models'),
        seed: [{ name: 'gpuops-tiny:v1', gguf: t.models.v1 as string }],
      }),
    ]);
  }, 120_000);

  it('inspectNode sees both real engines healthy, each answering a real test generation', async () => {
    const w = await controlWorker(ctx.env, s.loaded);
    const report = await w.runUntil(untilHealthy(s));
    const byName = Object.fromEntries(report.observation.engines.map((e) => [e.name, e]));
    expect(byName.llama).toMatchObject({ type: 'llamacpp', reachable: true, healthy: true });
    expect(byName.llama?.generation?.ok).toBe(true);
    expect(byName.ollama).toMatchObject({ type: 'ollama', reachable: true, healthy: true });
    expect(byName.ollama?.generation?.ok).toBe(true);
    expect(byName.ollama?.models).toContain('gpuops-tiny:v1');
    expect(report.observation.containers.map((c) => [c.name, c.status])).toEqual([
      ['llama', 'running'],
      ['ollama', 'running'],
    ]);
  }, 120_000);

  it('a SIGSTOPped llama-server (port still open) is detected as hung and restarted by the watcher', async () => {
    const w = await controlWorker(ctx.env, s.loaded);
    await w.runUntil(async () => {
      await untilHealthy(s);
      const before = await s.sim.real.processes.command('llama');
      await withWatcher(s, async (h) => {
        expect(await s.sim.real.inject('engine-hang', 'llama')).toMatch(/^kill -STOP \d+ \(llama\)$/);
        // SIGSTOP reaches the process group asynchronously: the kernel shows it stopped a moment later.
        expect(await statusWithin(s, 'llama', 'paused', 5_000)).toBe('paused');
        const detail = await watcherAction(h);
        expect(detail).toMatch(/^recovered after restart-container/);
        const incident = await lastIncident(s);
        expect(incident.initial?.problems.map((p) => [p.kind, p.subject])).toContainEqual(['engine-hung', 'llama']);
        expect(incident.rungs[0]?.actions).toContain('restart process llama');
        const after = await s.sim.real.processes.command('llama');
        expect(after?.running).toBe(true);
        expect(after?.id).not.toBe(before?.id);
      });
    });
  }, 150_000);

  it('a SIGKILLed Ollama is seen exited and brought back by recovery, its model still there', async () => {
    const w = await controlWorker(ctx.env, s.loaded);
    await w.runUntil(async () => {
      await untilHealthy(s);
      await withWatcher(s, async (h) => {
        await s.sim.real.inject('container-exit', 'ollama');
        const detail = await watcherAction(h);
        expect(detail).toMatch(/^recovered after restart-container/);
        const incident = await lastIncident(s);
        expect(incident.initial?.problems.map((p) => p.kind)).toContain('container-exited');
        expect(incident.rungs[0]?.actions).toContain('restart process ollama');
        const final = await untilHealthy(s);
        expect(final.observation.engines.find((e) => e.name === 'ollama')?.models).toContain('gpuops-tiny:v1');
      });
    });
  }, 150_000);
});

describe('runtime docker: real llama-server and Ollama in real containers on the real Docker engine', () => {
  let s: TestSandbox;
  const it = realTest(['llamaServer', 'ollama', 'docker']);
  const tag = uniqueId('c');

  beforeAll(async () => {
    const t = engineTools();
    if (!t.images.llamaServer || !t.images.ollama || !t.models.v1) return;
    s = await realSandbox(async () => [
      await llamaEngine({ runtime: 'docker', model: t.models.v1 as string, container: `gpuops-test-llama-${tag}` }),
      // A 64k context: llama-server preallocates ~34 MiB of KV cache, enough working set to starve for a real OOM.
      await llamaEngine({
        name: 'llama-big',
        runtime: 'docker',
        model: t.models.v1 as string,
        container: `gpuops-test-big-${tag}`,
        ctx: 65536,
      }),
      await ollamaEngine({
        runtime: 'docker',
        modelsDir: '/root/.ollama/models',
        container: `gpuops-test-ollama-${tag}`,
        seed: [{ name: 'gpuops-tiny:v1', gguf: t.models.v1 as string }],
      }),
    ]);
  }, 120_000);

  it('a paused llama-server container is detected as hung and recovered by a real docker restart', async () => {
    const w = await controlWorker(ctx.env, s.loaded);
    await w.runUntil(async () => {
      const healthy = await untilHealthy(s);
      expect(healthy.observation.containers.map((c) => c.status)).toEqual(['running', 'running', 'running']);
      await withWatcher(s, async (h) => {
        expect(await s.sim.real.inject('engine-hang', 'llama')).toBe(`docker pause gpuops-test-llama-${tag}`);
        const detail = await watcherAction(h);
        expect(detail).toMatch(/^recovered after restart-container/);
        const incident = await lastIncident(s);
        const llama = `gpuops-test-llama-${tag}`;
        expect(incident.initial?.problems.map((p) => [p.kind, p.subject])).toContainEqual(['engine-hung', 'llama']);
        expect(incident.rungs[0]?.actions).toContain(`docker restart ${llama}`);
        expect(await s.sim.real.docker.inspectOne(llama)).toMatchObject({ status: 'running', running: true });
      });
    });
  }, 150_000);

  it('a killed Ollama container is started again by recovery', async () => {
    const w = await controlWorker(ctx.env, s.loaded);
    await w.runUntil(async () => {
      await untilHealthy(s);
      await withWatcher(s, async (h) => {
        expect(await s.sim.real.inject('container-exit', 'ollama')).toBe(`docker kill gpuops-test-ollama-${tag}`);
        const detail = await watcherAction(h);
        expect(detail).toMatch(/^recovered after restart-container/);
        const incident = await lastIncident(s);
        expect(incident.initial?.problems.map((p) => p.kind)).toContain('container-exited');
        const final = await untilHealthy(s);
        expect(final.observation.engines.find((e) => e.name === 'ollama')?.models).toContain('gpuops-tiny:v1');
      });
    });
  }, 150_000);

  it('a container restarted under too small a memory limit is OOM-killed by the kernel, and seen as such', async () => {
    const w = await controlWorker(ctx.env, s.loaded);
    const big = `gpuops-test-big-${tag}`;
    await w.runUntil(async () => {
      await untilHealthy(s);
      expect(await s.sim.real.inject('oom-kill', 'llama-big')).toMatch(
        new RegExp(`^docker update --memory \\d+ ${big}`),
      );
      const state = await s.sim.real.docker.inspectOne(big);
      expect(state).toMatchObject({ status: 'exited', oomKilled: true, exitCode: 137, running: false });
      const report = await inspect(s);
      expect(report.problems.map((p) => [p.kind, p.subject])).toContainEqual(['container-oom-killed', big]);
      expect(report.recommendedRung).toBe('restart-container');
      // What an operator does once the limit is fixed: the container is recreated from its config, and serves.
      expect(await s.sim.real.restoreDefinitions()).toEqual(['llama-big']);
      await untilHealthy(s);
    });
  }, 150_000);

  it('a hung simulated guest freezes its real engines with it, and they thaw when it comes back', async () => {
    const llama = `gpuops-test-llama-${tag}`;
    injectFault(s.sim.store, 'node-down');
    try {
      await s.sim.waitFor(() => true, 1000).catch(() => undefined);
      for (let i = 0; i < 100 && (await s.sim.real.docker.inspectOne(llama)).status !== 'paused'; i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      expect((await s.sim.real.docker.inspectOne(llama)).status).toBe('paused');
    } finally {
      clearFaults(s.sim.store);
    }
    for (let i = 0; i < 100 && (await s.sim.real.docker.inspectOne(llama)).status !== 'running'; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect((await s.sim.real.docker.inspectOne(llama)).status).toBe('running');
  }, 60_000);
});
