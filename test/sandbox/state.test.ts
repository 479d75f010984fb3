/**
 * The state file is shared by several processes: updates are serialised by the lock, an abandoned lock is
 * recovered, and a fresh node is seeded from its config.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as core from '../../src/sandbox/shims/lib/core';
import { PREINSTALLED_OLLAMA_MODELS, SandboxStore, seedState } from '../../src/sandbox/state';
import { nodeConfig, tempDir } from './helpers';

jest.setTimeout(30_000);

/** Writers in other processes load the state's TypeScript module through tsx, as the shims' build bundles it. */
const TSX = ['--require', require.resolve('tsx/cjs')];
const corePath = require.resolve('../../src/sandbox/shims/lib/core');

let dir: string;
let cleanup: () => void;

beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

test('a fresh node is seeded from its config: containers per engine, GPUs, preinstalled models, the good/bad variants', async () => {
  const node = await nodeConfig(
    'seed-node',
    [
      { type: 'ollama', name: 'ollama' },
      { type: 'vllm', name: 'vllm', gpus: [1] },
    ],
    2,
    150,
  );
  const s = seedState(node, { bootSeconds: 2 });
  expect(Object.keys(s.containers)).toEqual(['ollama', 'vllm']);
  expect(s.containers.ollama).toMatchObject({ status: 'running', image: 'ollama/ollama:0.17.4' });
  expect(s.gpus.map((g) => [g.name, g.memoryTotalMiB, g.pciBusId])).toEqual([
    ['NVIDIA RTX A4000', 16376, '00000000:01:00.0'],
    ['NVIDIA RTX A4000', 16376, '00000000:02:00.0'],
  ]);
  // Recent enough (R565+) to report the GPU recovery action.
  expect(s.host.driverVersion).toMatch(/^570\./);
  expect(s.gpus.map((g) => g.recoveryAction)).toEqual(['none', 'none']);
  expect(s.engines.ollama!.models).toEqual([...PREINSTALLED_OLLAMA_MODELS]);
  expect(s.engines.vllm!.models).toEqual(['Qwen/Qwen2.5-0.5B-Instruct']);
  expect(s.vm).toMatchObject({ vmid: 150, status: 'running', phase: 'up', bootMs: 2000 });
  const good = s.library['qwen2.5:0.5b-good']!;
  const bad = s.library['qwen2.5:0.5b-bad']!;
  expect(bad.latency.ttftMs).toBe(3 * good.latency.ttftMs);
  expect(bad.latency.errorRate).toBe(0.2);
  expect([good.behaviour, bad.behaviour]).toEqual(['aligned', 'unaligned']);
  expect(s.kernelLog.some((l) => l.m.includes('NVRM: loading NVIDIA UNIX x86_64 Kernel Module'))).toBe(true);
});

test('concurrent writers in separate processes lose no update', async () => {
  const node = await nodeConfig('lock-node');
  const store = SandboxStore.forNode(dir, node.id);
  store.createIfAbsent(() => seedState(node));
  const script = `
    const core = require(${JSON.stringify(corePath)});
    for (let i = 0; i < 40; i++) core.updateState(${JSON.stringify(store.file)}, (s) => { s.host.nextPid += 1; });
  `;
  const before = store.read().host.nextPid;
  await Promise.all(
    Array.from(
      { length: 4 },
      () =>
        new Promise<void>((resolve, reject) => {
          const child = spawn(process.execPath, [...TSX, '-e', script], { stdio: 'inherit' });
          child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`writer exited ${String(code)}`))));
        }),
    ),
  );
  expect(store.read().host.nextPid).toBe(before + 160);
  // No temp files or lock left behind.
  expect(readdirSync(path.dirname(store.file)).filter((f) => f !== 'state.json')).toEqual([]);
});

test('a lock left by a dead process is recovered', async () => {
  const node = await nodeConfig('stale-node');
  const store = SandboxStore.forNode(dir, node.id);
  store.createIfAbsent(() => seedState(node));
  const lock = `${store.file}.lock`;
  mkdirSync(lock);
  // A pid that cannot be alive: the writer was SIGKILLed while holding the lock.
  writeFileSync(path.join(lock, 'owner'), `2147483646 ${Date.now()}`);
  const t0 = Date.now();
  store.update((s) => {
    s.vm.name = 'recovered';
  });
  expect(Date.now() - t0).toBeLessThan(2_000);
  expect(store.read().vm.name).toBe('recovered');
});

test('a lock held by a live process is waited for, not broken', async () => {
  const node = await nodeConfig('live-lock-node');
  const store = SandboxStore.forNode(dir, node.id);
  store.createIfAbsent(() => seedState(node));
  const held = core.acquireLock(store.file);
  let done = false;
  const writer = new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, [
      ...TSX,
      '-e',
      `require(${JSON.stringify(corePath)}).updateState(${JSON.stringify(store.file)}, (s) => { s.vm.name = 'second'; });`,
    ]);
    child.on('exit', (code) => {
      done = true;
      return code === 0 ? resolve() : reject(new Error(`writer exited ${String(code)}`));
    });
  });
  await new Promise((r) => setTimeout(r, 400));
  expect(done).toBe(false);
  core.releaseLock(held);
  await writer;
  expect(store.read().vm.name).toBe('second');
});
