/**
 * Every activity that calls the Proxmox API builds its client from gpuops.yaml the same way (proxmoxApiFromConfig):
 * the token secret file and CA bundle relative to the config file, TLS verified unless insecureSkipVerify. Checked
 * against an HTTPS fake PVE with a self-signed certificate, for the VM power activities and the VM config export.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createProxmoxActivities } from '../../activities/proxmox';
import { createVmConfigActivities } from '../../activities/vm-config';
import { resolveFrom } from '../../src/config/load';
import { proxmoxApiFromConfig, proxmoxApiPool, type ProxmoxApiHypervisor } from '../../src/hosts/proxmox';
import { FIXTURES, fixture } from './fakes';

const SECRET = '7d3f1e0a-52c4-4b8e-9a61-0c2d4e6f8a1b';
const TOKEN_ID = 'root@pam!gpuops';
const TLS = path.join(FIXTURES, 'proxmox', 'tls');

let server: https.Server;
let url: string;
let configDir: string;
const configPath = (): string => path.join(configDir, 'gpuops.yaml');

beforeAll(async () => {
  server = https.createServer(
    { cert: readFileSync(path.join(TLS, 'cert.pem')), key: readFileSync(path.join(TLS, 'key.pem')) },
    (req, res) => {
      const send = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      if (req.headers.authorization !== `PVEAPIToken=${TOKEN_ID}=${SECRET}`) return send(401, { data: null });
      if (req.url === '/api2/json/nodes/pve/qemu/101/status/current') {
        return send(200, JSON.parse(fixture('proxmox/status-current-running.json')));
      }
      if (req.url === '/api2/json/nodes/pve/qemu/101/config') return send(200, { data: { cores: 8, name: 'gpu1' } });
      return send(404, { data: null });
    },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // A config directory as an operator lays it out: secrets beside gpuops.yaml, named relative to it.
  configDir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-pve-config-'));
  mkdirSync(path.join(configDir, 'secrets'));
  writeFileSync(path.join(configDir, 'secrets', 'pve-token'), `${SECRET}\n`);
  copyFileSync(path.join(TLS, 'cert.pem'), path.join(configDir, 'secrets', 'pve-ca.pem'));
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  rmSync(configDir, { recursive: true, force: true });
});

function hypervisor(over: Partial<ProxmoxApiHypervisor> = {}): ProxmoxApiHypervisor {
  return {
    id: 'pve',
    type: 'proxmox-api',
    url,
    pveNode: 'pve',
    tokenId: TOKEN_ID,
    tokenSecretFile: 'secrets/pve-token',
    caFile: 'secrets/pve-ca.pem',
    insecureSkipVerify: false,
    ...over,
  };
}

/** The two activity families that call the API, each reduced to "read VM 101 through hypervisor h". */
const callers: [string, (h: ProxmoxApiHypervisor) => Promise<unknown>][] = [
  [
    'vmStatus (VM power)',
    (h) =>
      createProxmoxActivities({ hypervisors: [h], resolvePath: (p) => resolveFrom(configPath(), p) }).vmStatus({
        hypervisor: h.id,
        vmid: 101,
      }),
  ],
  [
    'exportVmConfig (vm-config backups)',
    (h) =>
      createVmConfigActivities({ hypervisors: [h], resolvePath: (p) => resolveFrom(configPath(), p) }).exportVmConfig({
        hypervisor: h.id,
        vmid: 101,
      }),
  ],
];

describe.each(callers)('%s', (_name, call) => {
  test('reads the token secret and the CA bundle relative to the config file, verifying TLS', async () => {
    await expect(call(hypervisor())).resolves.toBeDefined();
  });

  test('refuses the self-signed certificate without caFile, and accepts it with insecureSkipVerify', async () => {
    await expect(call(hypervisor({ caFile: undefined }))).rejects.toThrow(/self[- ]signed certificate/);
    await expect(call(hypervisor({ caFile: undefined, insecureSkipVerify: true }))).resolves.toBeDefined();
  });
});

test('the pool makes one client per hypervisor and reuses it; an injected factory replaces the default', () => {
  const made: string[] = [];
  const pool = proxmoxApiPool({
    apiFor: (h) => {
      made.push(h.id);
      return proxmoxApiFromConfig(h);
    },
  });
  const a = pool(hypervisor());
  expect(pool(hypervisor())).toBe(a);
  expect(pool(hypervisor({ id: 'pve2' }))).not.toBe(a);
  expect(made).toEqual(['pve', 'pve2']);
});
