/**
 * The simulated Proxmox API authenticates tokens, reports VM status and runs power actions as UPID tasks, with
 * Proxmox's semantics for a hung guest.
 */
/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are parsed JSON, probed field by field */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { injectFault } from '../../src/sandbox/faults';
import { SandboxNode, startSandboxProxmox } from '../../src/sandbox/node';
import { startProxmoxServer, type ProxmoxServerHandle } from '../../src/sandbox/proxmox-server';
import { nodeConfig, seedStore, sleep, tempDir } from './helpers';

jest.setTimeout(30_000);

const TOKEN_ID = 'root@pam!gpuops';
const SECRET = '3f9b1c62-8a7e-4c5d-9f0e-2b6a4d8c1e7f';
const UPID = /^UPID:pve:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:qm(reboot|reset|start|stop|shutdown):101:root@pam!gpuops:$/;

let cleanup: () => void;
let dir: string;
let sn: SandboxNode;
let pve: ProxmoxServerHandle;
const auth = { Authorization: `PVEAPIToken=${TOKEN_ID}=${SECRET}` };

beforeEach(async () => {
  ({ dir, cleanup } = tempDir());
  sn = new SandboxNode({ node: await nodeConfig('pve-node'), stateDir: dir, bootSeconds: 0.4, timeScale: 0.05 });
  await sn.start();
  pve = await startSandboxProxmox([sn], { tokenId: TOKEN_ID, tokenSecret: SECRET });
});

afterEach(async () => {
  await pve.close();
  await sn.stop();
  cleanup();
});

async function api(method: string, p: string, body?: string): Promise<{ status: number; reason: string; json: any }> {
  const res = await fetch(`${pve.url}/api2/json${p}`, {
    method,
    headers: { ...auth, ...(body ? { 'Content-Type': 'application/x-www-form-urlencoded' } : {}) },
    ...(body ? { body } : {}),
  });
  return { status: res.status, reason: res.statusText, json: await res.json() };
}

async function waitTask(upid: string, timeoutMs = 10_000): Promise<{ states: string[]; final: Record<string, any> }> {
  const states: string[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await api('GET', `/nodes/pve/tasks/${encodeURIComponent(upid)}/status`);
    states.push(r.json.data.status as string);
    if (r.json.data.status === 'stopped') return { states, final: r.json.data as Record<string, any> };
    if (Date.now() > deadline) throw new Error(`task ${upid} still running`);
    await sleep(25);
  }
}

test('requests without a token get "401 No ticket"; a wrong secret or token id is refused', async () => {
  const none = await fetch(`${pve.url}/api2/json/version`);
  expect(none.status).toBe(401);
  expect(none.statusText).toBe('No ticket');
  expect(await none.json()).toMatchObject({ data: null });
  const wrong = await fetch(`${pve.url}/api2/json/version`, {
    headers: { Authorization: `PVEAPIToken=${TOKEN_ID}=not-the-secret` },
  });
  expect(wrong.status).toBe(401);
  expect(wrong.statusText).toBe('invalid token value!');
  const other = await fetch(`${pve.url}/api2/json/version`, {
    headers: { Authorization: `PVEAPIToken=root@pam!other=${SECRET}` },
  });
  expect(other.status).toBe(401);
  expect(other.statusText).toBe("no such token 'other' for user 'root@pam'");
  const ok = await api('GET', '/version');
  expect(ok.json.data).toMatchObject({ version: expect.stringMatching(/^8\./), release: expect.any(String) });
});

test('status/current reports a running VM with Proxmox fields', async () => {
  const r = await api('GET', '/nodes/pve/qemu/101/status/current');
  expect(r.status).toBe(200);
  expect(r.json.data).toMatchObject({
    vmid: 101,
    status: 'running',
    qmpstatus: 'running',
    name: 'pve-node',
    cpus: 8,
    ha: { managed: 0 },
  });
  expect(r.json.data.uptime).toBeGreaterThanOrEqual(0);
  expect(r.json.data.pid).toBeGreaterThan(0);
  const missing = await api('GET', '/nodes/pve/qemu/999/status/current');
  expect(missing.status).toBe(500);
  expect(missing.reason).toBe("Configuration file 'nodes/pve/qemu-server/999.conf' does not exist");
});

test('reboot returns a UPID whose task goes running → stopped with exitstatus OK, and the VM boots again', async () => {
  const bootBefore = sn.status().vm.bootId;
  const r = await api('POST', '/nodes/pve/qemu/101/status/reboot');
  expect(r.json.data).toMatch(UPID);
  const { states, final } = await waitTask(r.json.data as string);
  expect(states[0]).toBe('running');
  expect(final).toMatchObject({
    status: 'stopped',
    exitstatus: 'OK',
    type: 'qmreboot',
    id: '101',
    user: TOKEN_ID,
    node: 'pve',
  });
  expect(sn.status().vm.bootId).toBe(bootBefore + 1);
  await sn.waitFor((s) => s.vm.phase === 'up', 5_000, 'boot');
});

test('stop then start: status follows, and start on a running VM fails the task', async () => {
  const stop = await api('POST', '/nodes/pve/qemu/101/status/stop');
  expect((await waitTask(stop.json.data as string)).final.exitstatus).toBe('OK');
  expect((await api('GET', '/nodes/pve/qemu/101/status/current')).json.data).toMatchObject({
    status: 'stopped',
    qmpstatus: 'stopped',
    uptime: 0,
  });
  const start = await api('POST', '/nodes/pve/qemu/101/status/start');
  expect((await waitTask(start.json.data as string)).final.exitstatus).toBe('OK');
  const again = await api('POST', '/nodes/pve/qemu/101/status/start');
  expect((await waitTask(again.json.data as string)).final.exitstatus).toBe('VM 101 already running');
});

test('a hung guest (node-down) still reads running; reboot times out, reset brings it back', async () => {
  injectFault(sn.store, 'node-down');
  expect((await api('GET', '/nodes/pve/qemu/101/status/current')).json.data.status).toBe('running');
  const t0 = Date.now();
  const reboot = await api('POST', '/nodes/pve/qemu/101/status/reboot', 'timeout=1');
  const { final } = await waitTask(reboot.json.data as string);
  expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
  expect(final.exitstatus).toBe('VM quit/powerdown failed - got timeout');
  expect(sn.status().vm.hung).toBe(true);
  const reset = await api('POST', '/nodes/pve/qemu/101/status/reset');
  expect(reset.json.data).toMatch(UPID);
  expect((await waitTask(reset.json.data as string)).final.exitstatus).toBe('OK');
  await sn.waitFor((s) => s.vm.phase === 'up' && !s.vm.hung, 5_000, 'boot after reset');
});

test('an invalid timeout parameter is a 400 with Proxmox parameter errors', async () => {
  const r = await api('POST', '/nodes/pve/qemu/101/status/shutdown', 'timeout=soon');
  expect(r.status).toBe(400);
  expect(r.reason).toBe('Parameter verification failed.');
  expect(r.json.errors.timeout).toContain("type check ('integer') failed");
});

test('without a secret given, the token secret file is created once and reused', async () => {
  const t = tempDir();
  try {
    const file = path.join(t.dir, 'pve-token');
    const store = seedStore(t.dir, await nodeConfig('scan-node', [{}], 1, 202));
    const a = await startProxmoxServer({ tokenId: TOKEN_ID, tokenSecretFile: file, stateDir: t.dir });
    expect(existsSync(file)).toBe(true);
    expect(readFileSync(file, 'utf8').trim()).toBe(a.tokenSecret);
    const res = await fetch(`${a.url}/api2/json/nodes/pve/qemu/202/status/current`, {
      headers: { Authorization: `PVEAPIToken=${TOKEN_ID}=${a.tokenSecret}` },
    });
    expect(((await res.json()) as { data: { vmid: number } }).data.vmid).toBe(202);
    await a.close();
    const b = await startProxmoxServer({ tokenId: TOKEN_ID, tokenSecretFile: file, stateDir: t.dir });
    expect(b.tokenSecret).toBe(a.tokenSecret);
    await b.close();
    expect(store.read().vm.vmid).toBe(202);
  } finally {
    t.cleanup();
  }
});
