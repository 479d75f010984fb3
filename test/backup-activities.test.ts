/**
 * The control-side pieces of backups, against real servers: the VM config export through the (simulated) Proxmox
 * API, and notifications to generic webhook, Slack and Discord endpoints whose URLs are secrets.
 */
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { createNotifyActivities } from '../activities/notify';
import { createVmConfigActivities } from '../activities/vm-config';
import { SandboxNode, startSandboxProxmox } from '../src/sandbox/node';
import type { ProxmoxServerHandle } from '../src/sandbox/proxmox-server';
import { nodeConfig, tempDir } from './sandbox/helpers';

const TOKEN_ID = 'root@pam!gpuops';
const SECRET = '0b7c9a10-1d2e-4f3a-8b5c-6d7e8f9a0b1c';

test('exports a VM config from the Proxmox API as sorted key: value lines, and refuses a qm hypervisor', async () => {
  const { dir, cleanup } = tempDir();
  const sn = new SandboxNode({ node: await nodeConfig('vmcfg'), stateDir: dir, bootSeconds: 0.2, timeScale: 0.05 });
  await sn.start();
  let pve: ProxmoxServerHandle | undefined;
  try {
    pve = await startSandboxProxmox([sn], { tokenId: TOKEN_ID, tokenSecret: SECRET });
    const secretFile = path.join(dir, 'token');
    writeFileSync(secretFile, `${SECRET}\n`);
    const acts = createVmConfigActivities({
      hypervisors: [
        {
          id: 'pve',
          type: 'proxmox-api',
          url: pve.url,
          pveNode: 'pve',
          tokenId: TOKEN_ID,
          tokenSecretFile: secretFile,
          insecureSkipVerify: false,
        },
        { id: 'host-qm', type: 'qm', qm: 'qm' },
      ],
    });
    const out = await acts.exportVmConfig({ hypervisor: 'pve', vmid: 101 });
    expect(out.name).toBe('101.conf');
    const keys = out.text
      .trim()
      .split('\n')
      .map((l) => l.split(':')[0]);
    expect(keys).toEqual([...keys].sort());
    expect(out.text).toMatch(/^cores: \d+$/m);
    expect(out.text).toMatch(/^digest: [0-9a-f]{40}$/m);
    expect(out.text).not.toContain(SECRET);
    await expect(acts.exportVmConfig({ hypervisor: 'host-qm', vmid: 101 })).rejects.toMatchObject({
      type: 'WrongHypervisorType',
      nonRetryable: true,
    });
  } finally {
    await pve?.close();
    await sn.stop();
    cleanup();
  }
});

test('notifies webhook, Slack and Discord in their own shapes, and a failure names the notifier but never the URL', async () => {
  const { dir, cleanup } = tempDir();
  const got: { path: string; body: Record<string, unknown> }[] = [];
  const server = http.createServer((req, res) => {
    let b = '';
    req.on('data', (c: Buffer) => (b += c.toString()));
    req.on('end', () => {
      got.push({ path: req.url ?? '', body: JSON.parse(b) as Record<string, unknown> });
      res.statusCode = req.url?.includes('broken') ? 500 : 204;
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const file = (name: string, url: string): string => {
    const p = path.join(dir, name);
    writeFileSync(p, `${url}\n`);
    return p;
  };
  try {
    const acts = createNotifyActivities({
      notifiers: [
        { type: 'webhook', name: 'hook', urlFile: file('hook', `${base}/hook/s3cr3t`) },
        { type: 'slack', name: 'slack', urlFile: file('slack', `${base}/slack/T000/B000/XXXX`) },
        { type: 'discord', name: 'discord', urlFile: file('discord', `${base}/broken/discord-token`) },
      ],
    });
    const r = await acts.notify({
      title: 'backup x failed',
      text: 'details',
      severity: 'critical',
      fields: { plan: 'x' },
    });
    expect(r.sent.sort()).toEqual(['hook', 'slack']);
    expect(r.failed).toEqual([{ name: 'discord', error: 'HTTP 500' }]);
    expect(JSON.stringify(r)).not.toMatch(/s3cr3t|XXXX|discord-token/);
    const byPath = (p: string) => got.find((g) => g.path.startsWith(p))?.body;
    expect(byPath('/hook')).toMatchObject({ title: 'backup x failed', severity: 'critical', fields: { plan: 'x' } });
    expect(byPath('/slack')).toEqual({ text: '*[CRITICAL] backup x failed*\ndetails' });
    expect(byPath('/broken')).toEqual({ content: '**[CRITICAL] backup x failed**\ndetails' });

    const onlyBroken = createNotifyActivities({
      notifiers: [{ type: 'discord', name: 'discord', urlFile: file('d2', `${base}/broken/discord-token`) }],
    });
    await expect(onlyBroken.notify({ title: 't', text: 'x', severity: 'info' })).rejects.toThrow(
      /^every notifier failed: discord \(HTTP 500\)$/,
    );
    // A refused connection is named by the system error's code, not fetch's bare TypeError.
    const closed = http.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const closedPort = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const refused = createNotifyActivities({
      notifiers: [{ type: 'webhook', name: 'gone', urlFile: file('gone', `http://127.0.0.1:${closedPort}/t0ken`) }],
    });
    await expect(refused.notify({ title: 't', text: 'x', severity: 'info' })).rejects.toThrow(
      /^every notifier failed: gone \(ECONNREFUSED\)$/,
    );
  } finally {
    await new Promise((r) => server.close(r));
    cleanup();
  }
});
