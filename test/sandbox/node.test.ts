/**
 * The supervisor makes processes follow the state: a reboot stops and restarts the worker, a hang freezes it, and
 * the simulated world survives the supervisor itself restarting.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { NodeConfig } from '../../src/config/schema';
import { injectFault } from '../../src/sandbox/faults';
import { SandboxNode, startSandboxProxmox, type WorkerCommand } from '../../src/sandbox/node';
import { nodeConfig, post, runShim, sleep, tempDir } from './helpers';

jest.setTimeout(30_000);

const BOOT_SECONDS = 0.5;
const SLACK_MS = 1_500;

let dir: string;
let cleanup: () => void;
let node: NodeConfig;
let events: string;
let nodes: SandboxNode[];

/**
 * A stand-in node worker: records its start (pid, PATH's first entry, the state file it was given) and SIGTERM in
 * an events file, then idles forever.
 */
function worker(eventsFile: string): WorkerCommand {
  const script = [
    "const fs = require('fs');",
    `const f = ${JSON.stringify(eventsFile)};`,
    "fs.appendFileSync(f, `start ${process.pid} ${process.env.PATH.split(':')[0]} ${process.env.GPUOPS_SANDBOX_STATE}\\n`);",
    "process.on('SIGTERM', () => { fs.appendFileSync(f, `term ${process.pid}\\n`); process.exit(0); });",
    'setInterval(() => {}, 1000);',
  ].join('\n');
  return { command: process.execPath, args: ['-e', script] };
}

function readEvents(): string[] {
  try {
    return readFileSync(events, 'utf8').trim().split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

async function startNode(extra: Partial<ConstructorParameters<typeof SandboxNode>[0]> = {}): Promise<SandboxNode> {
  const sn = new SandboxNode({
    node,
    stateDir: dir,
    bootSeconds: BOOT_SECONDS,
    timeScale: 0.05,
    workerCommand: worker(events),
    ...extra,
  });
  nodes.push(sn);
  await sn.start();
  return sn;
}

beforeEach(async () => {
  ({ dir, cleanup } = tempDir());
  node = await nodeConfig('sup-node');
  events = path.join(dir, 'events.log');
  writeFileSync(events, '');
  nodes = [];
});

afterEach(async () => {
  for (const n of nodes) await n.stop();
  cleanup();
});

test('the worker runs with the shims first on PATH and GPUOPS_SANDBOX_STATE pointing at the node state', async () => {
  const sn = await startNode();
  await sn.waitFor(() => readEvents().length > 0, 5_000, 'worker start');
  const [, pid, firstPath, stateFile] = readEvents()[0]!.split(' ');
  expect(Number(pid)).toBe(sn.status().worker.pid);
  expect(firstPath).toBe(sn.paths.shimDir);
  expect(stateFile).toBe(sn.paths.stateFile);
});

test('a reboot through the Proxmox API stops the worker with SIGTERM and starts a new one within bootSeconds + slack', async () => {
  const sn = await startNode();
  // Wait for the worker to be up (its SIGTERM handler installed), not just spawned.
  await sn.waitFor(() => readEvents().length > 0, 5_000, 'worker start');
  const firstPid = sn.status().worker.pid;
  const pve = await startSandboxProxmox([sn], { tokenId: 'root@pam!gpuops', tokenSecret: 'secret' });
  try {
    const t0 = Date.now();
    const res = await fetch(`${pve.url}/api2/json/nodes/pve/qemu/101/status/reboot`, {
      method: 'POST',
      headers: { Authorization: 'PVEAPIToken=root@pam!gpuops=secret' },
    });
    expect(res.status).toBe(200);
    await sn.waitFor((s) => !s.worker.running, 5_000, 'worker to stop');
    const s = await sn.waitFor(
      (x) => x.worker.running && x.worker.pid !== firstPid,
      BOOT_SECONDS * 1000 + SLACK_MS,
      'new worker',
    );
    const elapsed = Date.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(BOOT_SECONDS * 1000);
    expect(elapsed).toBeLessThan(BOOT_SECONDS * 1000 + SLACK_MS);
    expect(s.vm.bootId).toBe(2);
    expect(readEvents()).toContain(`term ${firstPid}`);
    expect(s.engines[0]!.listening).toBe(true);
  } finally {
    await pve.close();
  }
});

test('a reset kills the worker without SIGTERM (power is cut), then boots it again', async () => {
  const sn = await startNode();
  await sn.waitFor((s) => s.worker.running, 5_000, 'worker');
  const firstPid = sn.status().worker.pid;
  sn.reset();
  await sn.waitFor((s) => s.worker.running && s.worker.pid !== firstPid, BOOT_SECONDS * 1000 + SLACK_MS, 'new worker');
  expect(readEvents()).not.toContain(`term ${firstPid}`);
});

test('engines refuse connections while the VM boots and answer once it is up', async () => {
  const sn = await startNode();
  const url = sn.engineUrl('ollama');
  sn.reboot();
  await sn.waitFor((s) => s.vm.phase !== 'up' && !s.engines[0]!.listening, 5_000, 'engine down');
  await expect(fetch(`${url}/api/version`)).rejects.toThrow();
  await sn.waitFor((s) => s.vm.phase === 'up' && s.engines[0]!.listening, BOOT_SECONDS * 1000 + SLACK_MS, 'engine up');
  await sleep(50);
  expect((await fetch(`${url}/api/version`)).status).toBe(200);
});

test('node-down freezes the worker and the engine; a reset boots a fresh worker', async () => {
  const sn = await startNode();
  await sn.waitFor((s) => s.worker.running, 5_000, 'worker');
  const firstPid = sn.status().worker.pid;
  injectFault(sn.store, 'node-down');
  await sn.waitFor((s) => s.worker.frozen, 2_000, 'frozen worker');
  const answer = await Promise.race([
    fetch(`${sn.engineUrl('ollama')}/api/version`).then(
      () => 'answered',
      () => 'reset',
    ),
    sleep(400).then(() => 'silent'),
  ]);
  expect(answer).toBe('silent');
  sn.reset();
  const s = await sn.waitFor(
    (x) => x.worker.running && x.worker.pid !== firstPid,
    BOOT_SECONDS * 1000 + SLACK_MS,
    'new worker',
  );
  expect(s.worker.frozen).toBe(false);
  expect(s.vm.hung).toBe(false);
});

test('killWorker keeps the worker down until startWorker; a crash is restarted on its own', async () => {
  const sn = await startNode({ workerRestartDelayMs: 100 });
  await sn.waitFor((s) => s.worker.running, 5_000, 'worker');
  await sn.killWorker('SIGKILL');
  await sleep(400);
  expect(sn.status().worker.running).toBe(false);
  await sn.startWorker();
  const s = await sn.waitFor((x) => x.worker.running, 2_000, 'worker again');
  process.kill(s.worker.pid!, 'SIGKILL'); // a crash, not our doing
  await sn.waitFor((x) => x.worker.running && x.worker.pid !== s.worker.pid, 3_000, 'restart after crash');
  expect(sn.status().worker.starts).toBe(3);
});

test('the simulated world survives a supervisor restart', async () => {
  const first = await startNode();
  const url = first.engineUrl('ollama');
  await post(`${url}/api/pull`, { model: 'qwen2.5:0.5b-good', stream: false });
  await runShim('docker', ['stop', 'ollama'], first.shimEnv());
  injectFault(first.store, 'xid-79');
  const bootId = first.status().vm.bootId;
  await first.stop();

  const second = await startNode();
  const state = second.store.read();
  expect(state.engines.ollama!.models).toContain('qwen2.5:0.5b-good');
  expect(state.containers.ollama!.status).toBe('exited');
  expect(state.faults.map((f) => f.kind)).toEqual(['xid-79']);
  expect(state.vm.bootId).toBe(bootId);
  // The stopped container stays stopped: its port is not opened by the new supervisor.
  expect(second.status().engines[0]!.listening).toBe(false);
  // A VM reboot clears the lost GPU and the boot unit brings the (not manually stopped) engines back... but this
  // one was stopped by hand, so it stays down.
  second.reset();
  await second.waitFor((s) => s.vm.phase === 'up', BOOT_SECONDS * 1000 + SLACK_MS, 'boot');
  expect(second.store.read().faults).toEqual([]);
  expect(second.status().engines[0]!.containerStatus).toBe('exited');
});
