import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  parseQmStatus,
  parseUpid,
  ProxmoxApi,
  ProxmoxApiError,
  ProxmoxTaskTimeoutError,
  QmCli,
  taskSucceeded,
} from '../../src/hosts/proxmox';
import { fakeTool, fixture, sendJson, startServer, type TestServer } from './fakes';

const SECRET = '5c1f8a2e-93b7-4d06-a1e4-7f20c9b3d8aa';
const TOKEN_ID = 'root@pam!gpuops';
const REBOOT_UPID = 'UPID:pve1:000B1C2D:01A2B3C4:67A09A1E:qmreboot:101:root@pam!gpuops:';

function secretFile(content = `${SECRET}\n`): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-pve-'));
  const f = path.join(dir, 'token');
  writeFileSync(f, content);
  return f;
}

describe('parseUpid', () => {
  it('splits a UPID and decodes its hexadecimal fields', () => {
    expect(parseUpid(REBOOT_UPID)).toEqual({
      node: 'pve1',
      pid: 728109,
      pstart: 27440068,
      starttime: 1738578462,
      type: 'qmreboot',
      id: '101',
      user: 'root@pam!gpuops',
    });
  });

  it('rejects something that is not a UPID', () => {
    expect(() => parseUpid('UPID:pve1:task')).toThrow(/not a Proxmox UPID/);
  });
});

describe('taskSucceeded', () => {
  it('counts OK and WARNINGS as success, anything else as failure', () => {
    expect(taskSucceeded('OK')).toBe(true);
    expect(taskSucceeded('WARNINGS: 2')).toBe(true);
    expect(taskSucceeded('start failed: QEMU exited with code 1')).toBe(false);
    expect(taskSucceeded(null)).toBe(false);
  });
});

describe('ProxmoxApi against a fake PVE', () => {
  let server: TestServer;
  let taskPolls = 0;
  let vmRunning = true;
  beforeAll(async () => {
    server = await startServer((req, res) => {
      if (req.headers.authorization !== `PVEAPIToken=${TOKEN_ID}=${SECRET}`) {
        res.statusMessage = 'authentication failure';
        return sendJson(res, 401, { data: null });
      }
      const url = req.url;
      if (req.method === 'GET' && url === '/api2/json/nodes/pve1/qemu/101/status/current') {
        return sendJson(
          res,
          200,
          fixture(vmRunning ? 'proxmox/status-current-running.json' : 'proxmox/status-current-stopped.json'),
        );
      }
      if (req.method === 'POST' && url === '/api2/json/nodes/pve1/qemu/101/status/reboot') {
        return sendJson(res, 200, fixture('proxmox/power-reboot.json'));
      }
      if (req.method === 'POST' && url === '/api2/json/nodes/pve1/qemu/101/status/shutdown') {
        return sendJson(res, 200, { data: 'UPID:pve1:000B1C30:01A2B3D0:67A09A20:qmshutdown:101:root@pam!gpuops:' });
      }
      if (req.method === 'GET' && url === `/api2/json/nodes/pve1/tasks/${encodeURIComponent(REBOOT_UPID)}/status`) {
        taskPolls++;
        return sendJson(res, 200, fixture(taskPolls < 3 ? 'proxmox/task-running.json' : 'proxmox/task-ok.json'));
      }
      if (req.method === 'GET' && url.startsWith('/api2/json/nodes/pve1/tasks/') && url.includes('qmshutdown')) {
        return sendJson(res, 200, fixture('proxmox/task-running.json'));
      }
      if (url.startsWith('/api2/json/nodes/pve1/qemu/999/')) {
        res.statusMessage = "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist";
        return sendJson(res, 500, { data: null });
      }
      return sendJson(res, 501, { data: null });
    });
  });
  afterAll(() => server.close());

  const api = (over: Partial<ConstructorParameters<typeof ProxmoxApi>[0]> = {}): ProxmoxApi =>
    new ProxmoxApi({ url: server.url, pveNode: 'pve1', tokenId: TOKEN_ID, tokenSecretFile: secretFile(), ...over });

  it('sends "PVEAPIToken=USER@REALM!TOKENID=SECRET" and reads status/current', async () => {
    const c = api();
    vmRunning = true;
    expect(await c.vmStatus(101)).toEqual({
      vmid: 101,
      status: 'running',
      qmpstatus: 'running',
      uptime: 183422,
      name: 'gpu-node-a4000',
      lock: null,
    });
    vmRunning = false;
    expect(await c.vmStatus(101)).toMatchObject({ status: 'stopped', uptime: 0 });
    expect(server.requests.at(-1)?.headers.authorization).toBe(`PVEAPIToken=root@pam!gpuops=${SECRET}`);
    c.close();
  });

  it('posts a power action and returns the UPID, with form parameters for shutdown', async () => {
    const c = api();
    expect(await c.power(101, 'reboot')).toBe(REBOOT_UPID);
    const upid = await c.power(101, 'shutdown', { timeoutSec: 90, forceStop: true });
    expect(parseUpid(upid).type).toBe('qmshutdown');
    const sent = server.requests.at(-1);
    expect(sent?.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(new URLSearchParams(sent?.body).get('timeout')).toBe('90');
    expect(new URLSearchParams(sent?.body).get('forceStop')).toBe('1');
    c.close();
  });

  it('polls a task until it stops, calling onPoll each time', async () => {
    taskPolls = 0;
    const c = api();
    const polls: string[] = [];
    const final = await c.waitTask(REBOOT_UPID, { pollMs: 10, timeoutMs: 5000, onPoll: (s) => polls.push(s.status) });
    expect(final).toEqual({ status: 'stopped', exitstatus: 'OK', type: 'qmreboot', id: '101' });
    expect(polls).toEqual(['running', 'running', 'stopped']);
    c.close();
  });

  it('gives up waiting with ProxmoxTaskTimeoutError carrying the last status', async () => {
    const c = api();
    const upid = 'UPID:pve1:000B1C30:01A2B3D0:67A09A20:qmshutdown:101:root@pam!gpuops:';
    const err = await c.waitTask(upid, { pollMs: 20, timeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxmoxTaskTimeoutError);
    expect((err as ProxmoxTaskTimeoutError).last?.status).toBe('running');
    c.close();
  });

  it("reports Proxmox's reason from the status line, and never the token secret", async () => {
    const bad = api({ tokenSecretFile: secretFile('wrong-secret-0000') });
    const err = await bad.vmStatus(101).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxmoxApiError);
    expect((err as ProxmoxApiError).status).toBe(401);
    expect((err as Error).message).toBe(
      'Proxmox GET /nodes/pve1/qemu/101/status/current answered HTTP 401: authentication failure',
    );
    expect((err as Error).message).not.toContain('wrong-secret');
    expect(JSON.stringify(err)).not.toContain('wrong-secret');
    bad.close();

    const c = api();
    await expect(c.vmStatus(999)).rejects.toThrow(
      /HTTP 500: Configuration file 'nodes\/pve1\/qemu-server\/999.conf' does not exist/,
    );
    c.close();
  });

  it('reads the secret lazily, so a missing file fails the call, not the construction', async () => {
    const c = api({ tokenSecretFile: '/nonexistent/token' });
    await expect(c.vmStatus(101)).rejects.toThrow(/ENOENT/);
  });

  it('rejects bad input before calling Proxmox', async () => {
    const c = api();
    await expect(c.vmStatus(5)).rejects.toThrow(RangeError);
    await expect(c.power(101, 'hibernate' as never)).rejects.toThrow(/unknown VM power action/);
  });
});

describe('QmCli against a fake qm', () => {
  it('parses `qm status`', async () => {
    expect(parseQmStatus(fixture('qm/status-running.txt'))).toBe('running');
    const qm = fakeTool('qm', [
      { args: ['status', '101'], stdout: fixture('qm/status-stopped.txt') },
      { args: ['status', '999'], stderr: fixture('qm/status-no-such-vm.txt'), exit: 2 },
    ]);
    const cli = new QmCli({ bin: qm.bin });
    expect(await cli.status(101)).toBe('stopped');
    await expect(cli.status(999)).rejects.toThrow(/qm status 999` exited 2: Configuration file/);
  });

  it('treats "already running" on start as success and passes the shutdown timeout', async () => {
    const qm = fakeTool('qm', [
      { args: ['start', '101'], stderr: fixture('qm/start-already-running.txt'), exit: 255 },
      { args: ['shutdown', '101'] },
      { args: ['reset', '101'], stderr: 'VM 101 not running\n', exit: 255 },
    ]);
    const cli = new QmCli({ bin: qm.bin });
    expect(await cli.power(101, 'start')).toMatchObject({ ok: true, alreadyInState: true });
    expect(await cli.power(101, 'shutdown', { timeoutSec: 120 })).toMatchObject({ ok: true, alreadyInState: false });
    await expect(cli.power(101, 'reset')).rejects.toThrow(/not running/);
    expect(qm.calls()).toEqual([
      ['start', '101'],
      ['shutdown', '101', '--timeout', '120'],
      ['reset', '101'],
    ]);
  });
});

describe('ProxmoxApi against real captured answers', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startServer((req, res) => {
      if (req.url === '/api2/json/nodes/pve-root/qemu/8001/status/current') {
        return sendJson(res, 200, JSON.parse(fixture('proxmox/real/status-current-stopped-template.json')));
      }
      // A nonexistent vmid is a 500 with the reason in the body, as real PVE answers.
      res.statusMessage = "Configuration file 'nodes/pve-root/qemu-server/999.conf' does not exist";
      return sendJson(res, 500, JSON.parse(fixture('proxmox/real/status-current-missing-vmid.json')));
    });
  });
  afterAll(() => server.close());

  const api = (): ProxmoxApi =>
    new ProxmoxApi({ url: server.url, pveNode: 'pve-root', tokenId: TOKEN_ID, tokenSecretFile: secretFile() });

  it("reads a stopped template's status (no pid, no running-* fields, template only when true)", async () => {
    expect(await api().vmStatus(8001)).toEqual({
      vmid: 8001,
      status: 'stopped',
      qmpstatus: 'stopped',
      uptime: 0,
      name: 'tpl-homecloud-base',
      lock: null,
    });
  });

  it("names the real reason of a nonexistent vmid's 500", async () => {
    const err = await api()
      .vmStatus(999)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxmoxApiError);
    expect((err as Error).message).toMatch(/500.*999\.conf' does not exist/);
  });
});
