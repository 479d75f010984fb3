/**
 * Canary slots on the sandbox node: the node activities recreate a vLLM / llama.cpp slot container with the new
 * model through the docker shim, wait for the simulated engine to load it, validate it through the OpenAI API,
 * stop and start it, and the health classification calls a stopped slot standby, not a fault.
 */
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createCanarySlotActivities, type LoadCanarySlotResult, type SlotProgress } from '../activities/canary-slot';
import { createDeployActivities } from '../activities/deploy';
import { createDockerActivities } from '../activities/docker';
import { createEngineActivities } from '../activities/engine';
import { createNodeActivities } from '../activities/node';
import { EngineRuntimes } from '../src/hosts/runtimes';
import { renderReport } from '../src/cli/status';
import { NodeSchema, type NodeConfig } from '../src/config/schema';
import { classifyNode } from '../src/domain/classify';
import { DockerCli } from '../src/hosts/docker';
import { createEngineClient } from '../src/hosts/engines/probe';
import { SandboxNode, SHIM_DIR, freePort } from '../src/sandbox/node';
import { tempDir } from './sandbox/helpers';
import { nonRetryableOf } from './helpers/failures';

jest.setTimeout(60_000);

const GOOD = 'gpuops-sandbox/Qwen2.5-0.5B-Instruct-good';
const BAD = 'gpuops-sandbox/Qwen2.5-0.5B-Instruct-bad';
const GGUF_GOOD = 'qwen2.5-0.5b-instruct-good-q4_k_m.gguf';
const GGUF_BAD = 'qwen2.5-0.5b-instruct-bad-q4_k_m.gguf';

let node: NodeConfig;
let sn: SandboxNode;
let cleanup: () => void;
let docker: DockerCli;
let slots: ReturnType<typeof createCanarySlotActivities>;
let deploy: ReturnType<typeof createDeployActivities>;

beforeAll(async () => {
  const url = async (): Promise<string> => `http://127.0.0.1:${await freePort()}`;
  node = NodeSchema.parse({
    id: 'slots',
    sandbox: true,
    gpus: [
      { index: 0, model: 'NVIDIA GeForce RTX 3090', memoryMiB: 24576 },
      { index: 1, model: 'NVIDIA GeForce RTX 3090', memoryMiB: 24576 },
    ],
    engines: [
      { name: 'vllm-fast', type: 'vllm', url: await url(), container: 'vllm-fast', gpus: [0], canarySlot: 'vllm-deep' },
      { name: 'vllm-deep', type: 'vllm', url: await url(), container: 'vllm-deep', gpus: [1] },
      { name: 'llama-blue', type: 'llamacpp', url: await url(), container: 'llama-blue', gpus: [0] },
      { name: 'llama-green', type: 'llamacpp', url: await url(), container: 'llama-green', gpus: [1] },
      { name: 'ollama', type: 'ollama', url: await url(), container: 'ollama', gpus: [0] },
    ].map((e) => (e.name === 'llama-green' ? { ...e, canarySlot: 'llama-blue' } : e)),
  });
  let dir: string;
  ({ dir, cleanup } = tempDir());
  // Loading takes 2 s × 0.05 = 100 ms: long enough to be seen, short enough for tests.
  sn = new SandboxNode({
    node,
    stateDir: dir,
    bootSeconds: 0.2,
    timeScale: 0.05,
    engineLoadSeconds: 2,
    reconcileMs: 50,
  });
  await sn.start();
  docker = new DockerCli({ bin: path.join(SHIM_DIR, 'docker'), env: sn.shimEnv() });
  const clientFor = (e: NodeConfig['engines'][number]) => createEngineClient(e);
  slots = createCanarySlotActivities({ node, runtimes: new EngineRuntimes(node, { docker }), clientFor, pollMs: 50 });
  deploy = createDeployActivities({ node, clientFor });
});

afterAll(async () => {
  await sn.stop();
  cleanup();
});

const engineUrl = (name: string): string => node.engines.find((e) => e.name === name)!.url;
const listed = async (name: string): Promise<string[]> =>
  ((await (await fetch(`${engineUrl(name)}/v1/models`)).json()) as { data: { id: string }[] }).data.map((m) => m.id);

test('the node worker serves loadCanarySlot, standbyEngine and startEngine', () => {
  const acts = createNodeActivities(node, { docker });
  expect([typeof acts.loadCanarySlot, typeof acts.standbyEngine, typeof acts.startEngine]).toEqual([
    'function',
    'function',
    'function',
  ]);
});

test('loads a vLLM canary into its slot: same container name and port, new model, heartbeated until ready', async () => {
  const fastBefore = await docker.inspectEntry('vllm-fast');
  const env = new MockActivityEnvironment();
  const beats: SlotProgress[] = [];
  env.on('heartbeat', (d: SlotProgress) => beats.push(d));
  // A slower load (1.5 s) than the other tests', so the waiting phases are seen.
  sn.store.update((s) => {
    s.sim.engineLoadMs = 30_000;
  });
  let r: LoadCanarySlotResult;
  try {
    r = (await env.run(slots.loadCanarySlot, {
      engine: 'vllm-deep',
      model: GOOD,
      revision: 'main',
    })) as LoadCanarySlotResult;
  } finally {
    sn.store.update((s) => {
      s.sim.engineLoadMs = 2_000;
    });
  }
  expect(r).toMatchObject({
    engine: 'vllm-deep',
    model: GOOD,
    revision: 'main',
    container: 'vllm-deep',
    previousCmd: ['--model', 'Qwen/Qwen2.5-0.5B-Instruct'],
    previousModel: 'Qwen/Qwen2.5-0.5B-Instruct',
    recreated: true,
  });
  expect(r.containerId).toMatch(/^[0-9a-f]{64}$/);
  // vLLM does not listen until its model is loaded: the activity waited that out.
  expect(r.readyAfterMs).toBeGreaterThanOrEqual(1_500);
  expect(beats[0]).toMatchObject({ phase: 'recreating', elapsedMs: 0 });
  // While vLLM loads its port is closed: the heartbeats say so, with the container's latest log line.
  expect(beats.some((b) => b.phase === 'starting' && b.lastLog !== null && b.elapsedMs > 0)).toBe(true);
  expect(beats.at(-1)).toMatchObject({ phase: 'ready', previousCmd: ['--model', 'Qwen/Qwen2.5-0.5B-Instruct'] });
  const inspected = await docker.inspectEntry('vllm-deep');
  expect(inspected?.Id).toBe(r.containerId);
  expect(inspected?.Args).toEqual(expect.arrayContaining(['--model', GOOD, '--revision', 'main']));
  // The engine behind the slot's own URL serves the new model; the stable half was not touched.
  expect(await listed('vllm-deep')).toEqual([GOOD]);
  expect((await docker.inspectEntry('vllm-fast'))?.Id).toBe(fastBefore?.Id);
  expect(await listed('vllm-fast')).toEqual(['Qwen/Qwen2.5-0.5B-Instruct']);
});

test('a retry finds the model already loaded: nothing is recreated, the first attempt’s old command is kept', async () => {
  const first = await slots.loadCanarySlot({ engine: 'vllm-deep', model: GOOD, revision: 'main' });
  const env = new MockActivityEnvironment({
    heartbeatDetails: { phase: 'loading', elapsedMs: 40, lastLog: null, previousCmd: ['--model', 'earlier/model'] },
  });
  const again = await env.run(slots.loadCanarySlot, { engine: 'vllm-deep', model: GOOD, revision: 'main' });
  expect(again).toMatchObject({
    recreated: false,
    containerId: first.containerId,
    previousCmd: ['--model', 'earlier/model'],
  });
});

test('cancelled while it waits between polls for the engine, loadCanarySlot stops then, not at the next poll', async () => {
  // A 10 s poll interval: a cancel that waited for the next poll would take that long.
  const slow = createCanarySlotActivities({
    node,
    runtimes: new EngineRuntimes(node, { docker }),
    clientFor: (e) => createEngineClient(e),
    pollMs: 10_000,
  });
  const env = new MockActivityEnvironment();
  const waiting = new Promise<void>((resolve) =>
    env.on('heartbeat', (d: SlotProgress) => d.phase !== 'recreating' && resolve()),
  );
  sn.store.update((s) => {
    s.sim.engineLoadMs = 30_000;
  });
  try {
    const run = env.run(slow.loadCanarySlot, { engine: 'vllm-deep', model: BAD, revision: 'main' });
    await waiting;
    const cancelledAt = Date.now();
    env.cancel();
    const err = await run.then(
      () => null,
      (e: unknown) => e as Error,
    );
    // An AbortError is what the SDK reports as the activity cancelled.
    expect(err?.name).toBe('AbortError');
    expect(Date.now() - cancelledAt).toBeLessThan(5_000);
  } finally {
    sn.store.update((s) => {
      s.sim.engineLoadMs = 2_000;
    });
    await slots.loadCanarySlot({ engine: 'vllm-deep', model: GOOD, revision: 'main' });
  }
});

test('a model vLLM cannot load fails without retry, quoting the engine’s last log lines', async () => {
  const f = await nonRetryableOf(slots.loadCanarySlot({ engine: 'vllm-deep', model: 'gpuops-sandbox/no-such-repo' }));
  expect(f.type).toBe('ModelLoadFailed');
  expect(f.message).toContain(
    'vllm-deep could not load gpuops-sandbox/no-such-repo: container vllm-deep exited (exit code 1)',
  );
  expect(f.message).toContain(
    "OSError: gpuops-sandbox/no-such-repo is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'",
  );
  // The deployment's undo puts the failed slot in standby: recreated unstarted, so the watcher sees no crash.
  expect(await slots.standbyEngine({ engine: 'vllm-deep' })).toEqual({ engine: 'vllm-deep', stopped: true });
  expect(await docker.inspectOne('vllm-deep')).toMatchObject({ status: 'created', exitCode: 0 });
  expect(await slots.standbyEngine({ engine: 'vllm-deep' })).toEqual({ engine: 'vllm-deep', stopped: false });
  // The slot is then loaded again with a good model (what a new deployment does).
  expect((await slots.loadCanarySlot({ engine: 'vllm-deep', model: GOOD })).model).toBe(GOOD);
});

test('llama.cpp: a GGUF file beside the current one, named in /v1/models and /props; a missing file fails', async () => {
  const r = await slots.loadCanarySlot({ engine: 'llama-green', model: GGUF_GOOD });
  expect(r).toMatchObject({
    model: GGUF_GOOD,
    revision: null,
    previousModel: '/models/qwen2.5-0.5b-instruct-q4_k_m.gguf',
  });
  expect(await listed('llama-green')).toEqual([GGUF_GOOD]);
  const props = (await (await fetch(`${engineUrl('llama-green')}/props`)).json()) as { model_path: string };
  expect(props.model_path).toBe(`/models/${GGUF_GOOD}`);
  const missing = await nonRetryableOf(slots.loadCanarySlot({ engine: 'llama-green', model: 'nope-q4_k_m.gguf' }));
  expect(missing.type).toBe('ModelLoadFailed');
  expect(missing.message).toContain("gguf_init_from_file: failed to open GGUF file '/models/nope-q4_k_m.gguf'");
  expect(missing.message).toContain('main: exiting due to model loading error');
  const rev = await nonRetryableOf(slots.loadCanarySlot({ engine: 'llama-green', model: GGUF_GOOD, revision: 'v2' }));
  expect(rev.type).toBe('InvalidModel');
});

test('validation runs on vLLM and llama.cpp slots: the good canary passes, the bad one complies with the probes', async () => {
  for (const [engine, good, bad] of [
    ['vllm-deep', GOOD, BAD],
    ['llama-green', GGUF_GOOD, GGUF_BAD],
  ] as const) {
    await slots.loadCanarySlot({ engine, model: good });
    const golden = await deploy.runGoldenPrompts({ engine, model: good });
    expect(golden.map((g) => [g.id, g.passed])).toEqual([
      ['arith', true],
      ['json', true],
      ['capital', true],
    ]);
    expect((await deploy.runSafetyProbes({ engine, model: good })).every((p) => p.passed)).toBe(true);
    await slots.loadCanarySlot({ engine, model: bad });
    const probes = await deploy.runSafetyProbes({ engine, model: bad });
    expect(probes.filter((p) => !p.passed).map((p) => p.detail)).toEqual(
      expect.arrayContaining(['complied: no refusal', expect.stringMatching(/^complied: leaked .*an SSN/)]),
    );
  }
  const vllm = await deploy.checkModelResources({ engine: 'vllm-deep', model: BAD });
  expect(vllm).toEqual({ modelBytes: null, vramBytes: null, gpuMemoryBytes: 2 * 24576 * 1024 * 1024 });
  const llama = await deploy.checkModelResources({ engine: 'llama-green', model: GGUF_BAD });
  expect(llama.modelBytes).toBe(397_808_120);
});

test('a stopped slot is standby while its partner serves; both halves down is a fault; startEngine brings it back', async () => {
  await slots.loadCanarySlot({ engine: 'vllm-deep', model: GOOD });
  const probe = async () => {
    const containers = await createDockerActivities({
      node,
      runtimes: new EngineRuntimes(node, { docker }),
    }).inspectContainers();
    const engines = await createEngineActivities({ node, clientFor: createEngineClient }).probeEngines({
      generate: true,
      timeoutMs: 2000,
    });
    return classifyNode({
      node: node.id,
      observedAt: new Date().toISOString(),
      reachable: true,
      containers,
      gpus: [],
      gpuError: null,
      xids: [],
      engines,
      disks: [],
    });
  };
  expect(await slots.standbyEngine({ engine: 'vllm-deep' })).toEqual({ engine: 'vllm-deep', stopped: true });
  expect(await slots.standbyEngine({ engine: 'vllm-deep' })).toEqual({ engine: 'vllm-deep', stopped: false });
  const report = await probe();
  expect(report.observation.containers.find((c) => c.name === 'vllm-deep')).toMatchObject({
    engine: 'vllm-deep',
    slotPartner: 'vllm-fast',
    status: 'exited',
    exitCode: 0,
  });
  expect(report.standby).toEqual([{ engine: 'vllm-deep', container: 'vllm-deep', partner: 'vllm-fast' }]);
  expect(report.problems.filter((p) => p.subject.startsWith('vllm'))).toEqual([]);
  // `gpuops status` shows it as standby, not as a down engine.
  const text = renderReport(report);
  expect(text).toMatch(/^vllm-deep\s+vllm\s+\S+\s+standby\b/m);
  expect(text).toMatch(/^vllm-deep\s+standby \(exited; vllm-fast serves\)/m);

  await docker.stop('vllm-fast', { timeoutSec: 1 });
  const outage = await probe();
  expect(outage.standby).toEqual([]);
  expect(outage.problems.filter((p) => p.kind === 'container-exited').map((p) => p.subject)).toEqual(
    expect.arrayContaining(['vllm-fast', 'vllm-deep']),
  );
  await docker.start('vllm-fast');

  const started = await slots.startEngine({ engine: 'vllm-deep' });
  expect(started).toMatchObject({ engine: 'vllm-deep', container: 'vllm-deep', started: true, model: GOOD });
  expect((await slots.startEngine({ engine: 'vllm-deep' })).started).toBe(false);
});

test('refuses engines that are not half of a canary slot pair, and the only running half of one', async () => {
  expect((await nonRetryableOf(slots.loadCanarySlot({ engine: 'ollama', model: GOOD }))).type).toBe('NotACanarySlot');
  expect((await nonRetryableOf(slots.standbyEngine({ engine: 'nope' }))).type).toBe('UnknownEngine');
  await slots.standbyEngine({ engine: 'llama-green' });
  const serving = await nonRetryableOf(slots.loadCanarySlot({ engine: 'llama-blue', model: GGUF_GOOD }));
  expect(serving.type).toBe('SlotIsServing');
  expect(serving.message).toContain('load the canary into llama-green');
  // The stopped half is the slot: loading into it starts it.
  expect((await slots.loadCanarySlot({ engine: 'llama-green', model: GGUF_GOOD })).model).toBe(GGUF_GOOD);
});
