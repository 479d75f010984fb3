/**
 * deployModel on vLLM: the canary runs in the engine's canary slot (the other half of a blue/green pair), on a real
 * Temporal dev server, a sandbox node whose real node worker drives the docker shim, and a real router.
 */
import { approveDeploymentUpdate, workflowIds, type DeploymentStatus } from '../src/contracts';
import type { deployModel } from '../workflows/deploy';
import { controlWorker, recordHistory, uniqueId, useSandboxEnv, waitForDeployment } from './helpers/env';

const STABLE = 'Qwen/Qwen2.5-0.5B-Instruct';
const GOOD = 'gpuops-sandbox/Qwen2.5-0.5B-Instruct-good';
const BAD = 'gpuops-sandbox/Qwen2.5-0.5B-Instruct-bad';
const COMMIT = '7ae557604adf67be50417f59c2c2f167def9a775';

const ctx = useSandboxEnv({
  router: true,
  sandbox: {
    hardware: {
      gpus: [
        { index: 0, model: 'NVIDIA GeForce RTX 3090', memoryMiB: 24576 },
        { index: 1, model: 'NVIDIA GeForce RTX 3090', memoryMiB: 24576 },
      ],
      engines: [
        { name: 'vllm-blue', type: 'vllm', container: 'vllm-blue', gpus: [0], canarySlot: 'vllm-green' },
        { name: 'vllm-green', type: 'vllm', container: 'vllm-green', gpus: [1] },
      ],
    },
  },
});

const url = (engine: string): string =>
  ctx.sbx.loaded.config.nodes[0]?.engines.find((e) => e.name === engine)?.url ?? '';
const variants = (alias: string) => ctx.router.table.current.routes[alias]?.variants ?? [];
const containerStatus = (name: string): string | undefined => ctx.sbx.sim.store.read().containers[name]?.status;

function newAlias(): string {
  const alias = uniqueId('vchat');
  ctx.router.table.replace({
    routes: {
      ...ctx.router.table.current.routes,
      [alias]: {
        variants: [{ name: 'stable', engine: url('vllm-blue'), engineType: 'vllm', model: STABLE, weight: 100 }],
      },
    },
    drained: [],
  });
  return alias;
}

const policy = { canarySteps: [50], stepDuration: '2s', analysisInterval: '1s', minSamples: 10, rollbackWindow: '1s' };

async function deploy(alias: string, model: string): Promise<DeploymentStatus> {
  const control = await controlWorker(ctx.env, ctx.sbx.loaded);
  return control.runUntil(async () => {
    const h = await ctx.env.client.workflow.start<typeof deployModel>('deployModel', {
      taskQueue: ctx.env.controlQueue,
      workflowId: workflowIds.deploy(ctx.sbx.nodeId, alias),
      workflowIdConflictPolicy: 'FAIL',
      args: [
        { node: ctx.sbx.nodeId, alias, engine: 'vllm-blue', model, revision: COMMIT, policy, requestedBy: 'jest' },
      ],
    });
    // No license in an HF repo's metadata as the engine reports it: medium risk, a human approves.
    const st = await waitForDeployment(
      h,
      (x) => x.stage === 'awaiting-approval' || x.outcome !== 'in-progress',
      90_000,
    );
    if (st.stage === 'awaiting-approval') await h.executeUpdate(approveDeploymentUpdate, { args: [{ by: 'alice' }] });
    return h.result();
  });
}

test('vLLM: a good version loads in the canary slot, passes the canary and is promoted; the old half goes to standby', async () => {
  const alias = newAlias();
  const record = await deploy(alias, GOOD);
  recordHistory(ctx.env, workflowIds.deploy(ctx.sbx.nodeId, alias), 'deploy-model-route-ops-slot-promoted');
  expect(record.outcome).toBe('promoted');
  expect(record.canary).toEqual({ engine: 'vllm-green', url: url('vllm-green'), model: GOOD });
  expect(record.digest).toBe(COMMIT);
  // What the engine cannot tell (no license in the metadata, no model size from vLLM) is medium: a human approved.
  expect(record.risk?.findings.map((f) => f.detail)).toEqual([
    'the model metadata carries no license',
    'memory need or GPU memory unknown',
  ]);
  expect(record.approvedBy).toBe('alice');
  expect(record.timings.stages.map((x) => x.stage)).toEqual([
    'preflight',
    'loading-canary-slot',
    'preflight',
    'validating',
    'assessing-risk',
    'awaiting-approval',
    'canary',
    'promoting',
    'rollback-window',
    'promoted',
  ]);
  expect(record.analyses[0]?.analysis.verdict).toBe('pass');
  expect(variants(alias)).toEqual([
    expect.objectContaining({
      name: 'stable',
      engine: url('vllm-green'),
      engineType: 'vllm',
      model: GOOD,
      weight: 100,
    }),
  ]);
  expect(record.cleanup).toEqual([
    { step: 'route: remove the previous variant', ok: true, detail: 'removed' },
    { step: `unload ${STABLE} from vllm-blue`, ok: true, detail: 'vllm-blue stopped (standby slot)' },
  ]);
  expect(containerStatus('vllm-blue')).toBe('exited');
  expect(containerStatus('vllm-green')).toBe('running');
}, 120_000);

test('vLLM: a bad version in the (now blue) slot breaches the canary and is rolled back: route back, slot stopped', async () => {
  // After the first test green serves; this alias's stable points at green, so blue is the slot.
  const alias = uniqueId('vchat');
  ctx.router.table.replace({
    routes: {
      ...ctx.router.table.current.routes,
      [alias]: {
        variants: [{ name: 'stable', engine: url('vllm-green'), engineType: 'vllm', model: GOOD, weight: 100 }],
      },
    },
    drained: [],
  });
  const record = await deploy(alias, BAD);
  expect(record.outcome).toBe('rolled-back');
  expect(record.canary?.engine).toBe('vllm-blue');
  expect(record.rollback?.reason).toMatch(/^risk tier high: pii probe pii-ssn failed: complied: leaked/);
  expect(record.undo.slice(-2)).toEqual([
    { step: 'stop the canary slot vllm-blue', ok: true, detail: 'standby' },
    // No watcher runs in this test: there was no window to open or end.
    {
      step: "end the watcher's maintenance window on vllm-blue",
      ok: true,
      detail: `no watch:${ctx.sbx.nodeId} running`,
    },
  ]);
  expect(variants(alias)).toEqual([
    expect.objectContaining({ name: 'stable', engine: url('vllm-green'), model: GOOD }),
  ]);
  expect(containerStatus('vllm-blue')).toBe('exited');
  expect(containerStatus('vllm-green')).toBe('running');
}, 120_000);
