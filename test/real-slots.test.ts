/**
 * deployModel on real llama.cpp `llama-server`: the canary slot is the other half of a blue/green pair, recreated by
 * gpuops with the new GGUF — from `docker inspect` of the real container (image, host network, ctx.env, command kept)
 * under the docker runtime, from the keeper's spec under the process runtime — then validated, canaried through the
 * real router on real streamed traffic and promoted; the old half goes to standby.
 */
import path from 'node:path';
import { approveDeploymentUpdate, workflowIds } from '../src/contracts';
import type { deployModel } from '../workflows/deploy';
import { controlWorker, uniqueId, useSandboxEnv, waitForDeployment, type TestSandbox } from './helpers/env';
import { engineTools, llamaEngine, realDockerBin, realTest, removeTempDirs, tempDir } from './helpers/real-engines';

const ctx = useSandboxEnv({ router: true });
afterAll(removeTempDirs);

const policy = {
  golden: [{ id: 'answers', prompt: 'Tell me a story.', check: { kind: 'regex' as const, pattern: '\\S' } }],
  canarySteps: [50],
  stepDuration: '3s',
  analysisInterval: '1s',
  minSamples: 5,
  validationTtftP95Ms: 5000,
  validationMinTokensPerSecond: 1,
  // Both halves share 2 cores: only a gross difference is a breach (see test/real-deploy.test.ts).
  maxTtftP95Ratio: 20,
  minTokensPerSecondRatio: 0.02,
  allowedSources: [],
  rollbackWindow: '1s',
};

async function slotPair(runtime: 'docker' | 'process'): Promise<TestSandbox> {
  const t = engineTools();
  const tag = uniqueId('s');
  const dir = tempDir('slots');
  const s = await ctx.sandbox({
    hardware: {
      gpus: [{ index: 0, model: 'NVIDIA RTX A4000', memoryMiB: 16376 }],
      engines: [
        await llamaEngine({
          name: 'llama-blue',
          runtime,
          model: t.models.v1 as string,
          container: `gpuops-test-blue-${tag}`,
          extra: { canarySlot: 'llama-green' },
        }),
        await llamaEngine({
          name: 'llama-green',
          runtime,
          model: t.models.v1 as string,
          container: `gpuops-test-green-${tag}`,
        }),
      ],
    },
    tools: { docker: realDockerBin(), processDir: path.join(dir, 'processes') },
  });
  return s;
}

async function deploySlot(s: TestSandbox, alias: string, model: string) {
  const blue = s.loaded.config.nodes[0]?.engines.find((e) => e.name === 'llama-blue');
  ctx.router.table.replace({
    routes: {
      ...ctx.router.table.current.routes,
      [alias]: {
        variants: [
          {
            name: 'stable',
            engine: blue?.url ?? '',
            engineType: 'llamacpp',
            model: 'gpuops-tiny-v1.gguf',
            weight: 100,
          },
        ],
      },
    },
    drained: [],
  });
  const w = await controlWorker(ctx.env, s.loaded);
  return w.runUntil(async () => {
    const h = await ctx.env.client.workflow.start<typeof deployModel>('deployModel', {
      taskQueue: ctx.env.controlQueue,
      workflowId: workflowIds.deploy(s.nodeId, alias),
      args: [{ node: s.nodeId, alias, engine: 'llama-blue', model, policy, safetyProbes: false, requestedBy: 'jest' }],
    });
    const st = await waitForDeployment(h, (x) => x.stage === 'awaiting-approval' || x.stage === 'canary', 120_000);
    if (st.stage === 'awaiting-approval') await h.executeUpdate(approveDeploymentUpdate, { args: [{ by: 'alice' }] });
    return h.result();
  });
}

/** Flag/value pairs of a command line. */
const pairs = (cmd: string[]): string[][] => cmd.flatMap((a, i) => (a.startsWith('-') ? [[a, cmd[i + 1] ?? '']] : []));
const withoutModelFlags = (cmd: string[]): string[][] => pairs(cmd).filter(([f]) => f !== '-m' && f !== '--alias');

const stable = (alias: string) => ctx.router.table.current.routes[alias]?.variants.find((v) => v.name === 'stable');

describe('runtime docker', () => {
  const it = realTest(['llamaServer', 'docker']);
  it('the slot container is recreated from docker inspect with the new GGUF, canaried and promoted', async () => {
    const s = await slotPair('docker');
    const green = s.loaded.config.nodes[0]?.engines.find((e) => e.name === 'llama-green');
    const before = await s.sim.real.docker.inspectEntry(green?.container ?? '');
    const record = await deploySlot(s, uniqueId('tiny'), 'gpuops-tiny-v2.gguf');
    expect(record.outcome).toBe('promoted');
    expect(record.canary).toMatchObject({ engine: 'llama-green', model: 'gpuops-tiny-v2.gguf' });
    const after = await s.sim.real.docker.inspectEntry(green?.container ?? '');
    const cfg = (e: Record<string, unknown> | undefined) => (e?.Config ?? {}) as Record<string, unknown>;
    const host = (e: Record<string, unknown> | undefined) => (e?.HostConfig ?? {}) as Record<string, unknown>;
    expect(after?.Id).not.toBe(before?.Id);
    expect(cfg(after).Image).toBe(cfg(before).Image);
    expect(host(after).NetworkMode).toBe('host');
    expect(cfg(after).Env).toEqual(cfg(before).Env);
    // Only the model flags changed: -m and --alias name v2, every other flag as it was.
    expect(withoutModelFlags(cfg(after).Cmd as string[])).toEqual(withoutModelFlags(cfg(before).Cmd as string[]));
    expect(pairs(cfg(after).Cmd as string[])).toEqual(
      expect.arrayContaining([
        ['-m', '/models/gpuops-tiny-v2.gguf'],
        ['--alias', 'gpuops-tiny-v2.gguf'],
      ]),
    );
    expect(stable(Object.keys(ctx.router.table.current.routes).at(-1) ?? '')).toMatchObject({
      engine: green?.url,
      model: 'gpuops-tiny-v2.gguf',
    });
    // The old half is standby: stopped cleanly, not a fault.
    expect(
      (await s.sim.real.docker.inspectOne(`${s.loaded.config.nodes[0]?.engines[0]?.container ?? ''}`)).status,
    ).toBe('exited');
  }, 240_000);
});

describe('runtime process', () => {
  const it = realTest(['llamaServer']);
  it('the slot process is run again by its keeper with the new GGUF, canaried and promoted', async () => {
    const s = await slotPair('process');
    const t = engineTools();
    const record = await deploySlot(s, uniqueId('tiny'), 'gpuops-tiny-v2.gguf');
    expect(record.outcome).toBe('promoted');
    expect(record.canary).toMatchObject({ engine: 'llama-green', model: 'gpuops-tiny-v2.gguf' });
    const green = s.loaded.config.nodes[0]?.engines.find((e) => e.name === 'llama-green');
    const cmd = await s.sim.real.processes.command(green?.container ?? '');
    expect(cmd?.running).toBe(true);
    expect(pairs(cmd?.cmd ?? [])).toEqual(
      expect.arrayContaining([
        ['-m', path.join(path.dirname(t.models.v1 as string), 'gpuops-tiny-v2.gguf')],
        ['--alias', 'gpuops-tiny-v2.gguf'],
      ]),
    );
    const blue = s.loaded.config.nodes[0]?.engines.find((e) => e.name === 'llama-blue');
    expect((await s.sim.real.processes.inspectOne(blue?.container ?? '')).status).toBe('exited');
  }, 240_000);
});
