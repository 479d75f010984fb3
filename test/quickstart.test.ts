/**
 * The quick start, as a newcomer runs it: `npm start` on the default sandbox config (examples/sandbox.yaml,
 * moved to free ports and a temp dir so it cannot meet a running gpuops), which makes the restic password on its first
 * start and lists the backup commands under "Try"; then those commands, run as printed: a backup now, the status
 * against the RPO, and a restore of the latest snapshot; then Ctrl-C, which must stop everything it started.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parse, stringify } from 'yaml';
import { parseConfig } from '../src/config/load';
import { ensureSandboxBackupPasswords } from '../src/cli/up';
import { freePort } from '../src/net';

const run = promisify(execFile);
const ROOT = path.resolve(__dirname, '..');
const GPUOPS = path.join(ROOT, 'bin', 'gpuops');

/** examples/sandbox.yaml with every port free and every path in `dir`. */
async function sandboxConfigIn(dir: string): Promise<string> {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a document edited by shape, then validated below
  const doc = parse(readFileSync(path.join(ROOT, 'examples', 'sandbox.yaml'), 'utf8')) as Record<string, any>;
  const port = async (): Promise<number> => freePort();
  const at = (p: string): string => path.join(dir, p.replace(/^\.\.\/\.gpuops\//, ''));
  doc.temporal.dev = { port: await port(), uiPort: await port(), dbFile: at('../.gpuops/temporal.db') };
  for (const n of doc.nodes) {
    for (const e of n.engines) e.url = `http://127.0.0.1:${await port()}`;
    n.modelStores = n.modelStores.map(at);
  }
  const pvePort = await port();
  for (const h of doc.hypervisors) {
    if (h.url) h.url = `http://127.0.0.1:${pvePort}`;
    if (h.tokenSecretFile) h.tokenSecretFile = at(h.tokenSecretFile);
  }
  doc.sandbox = { ...doc.sandbox, stateDir: at(doc.sandbox.stateDir), proxmoxPort: pvePort, bootSeconds: 1 };
  doc.reportsDir = at(doc.reportsDir);
  doc.router = {
    listen: `127.0.0.1:${await port()}`,
    stateFile: at(doc.router.stateFile),
    adminTokenFile: at(doc.router.adminTokenFile),
  };
  doc.metrics = { control: `127.0.0.1:${await port()}` };
  for (const b of doc.backups) {
    b.repository = at(b.repository);
    b.passwordFile = at(b.passwordFile);
    b.paths = (b.paths ?? []).map(at);
  }
  const file = path.join(dir, 'gpuops.yaml');
  writeFileSync(file, stringify(doc));
  parseConfig(readFileSync(file, 'utf8'), file); // still a valid config
  return file;
}

/** Run the gpuops CLI as printed; its output is also kept in `cli.log` next to the config, for the secret scan. */
async function gpuops(cfg: string, args: string[]): Promise<{ code: number; out: string }> {
  const result = await run(GPUOPS, ['-c', cfg, ...args], {
    timeout: 120_000,
    env: { ...process.env, TEMPORAL_ADDRESS: '' },
  }).then(
    (r) => ({ code: 0, out: r.stdout + r.stderr }),
    (err: unknown) => {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
    },
  );
  appendFileSync(path.join(path.dirname(cfg), 'cli.log'), `$ gpuops ${args.join(' ')}\n${result.out}\n`);
  return result;
}

test('a sandbox plan gets a random restic password file on the first start, a real node’s plan never', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-pw-'));
  const text = stringify({
    nodes: [
      { id: 'sim', sandbox: true },
      { id: 'real', sandbox: false },
    ],
    backups: ['sim', 'real'].map((node) => ({
      id: `${node}-models`,
      node,
      what: 'model-store',
      paths: ['/srv/models'],
      repository: path.join(dir, 'repo'),
      passwordFile: path.join(dir, 'secrets', `${node}-pw`),
      schedule: { every: '1h' },
      rpo: '2h',
    })),
  });
  const loaded = { path: path.join(dir, 'gpuops.yaml'), config: parseConfig(text, 'test.yaml') };
  expect(ensureSandboxBackupPasswords(loaded)).toEqual([path.join(dir, 'secrets', 'sim-pw')]);
  const pw = readFileSync(path.join(dir, 'secrets', 'sim-pw'), 'utf8');
  expect(pw).toMatch(/^[A-Za-z0-9_-]{32}\n$/);
  expect(statSync(path.join(dir, 'secrets', 'sim-pw')).mode & 0o777).toBe(0o600);
  expect(existsSync(path.join(dir, 'secrets', 'real-pw'))).toBe(false);
  // The second start keeps it: the repository was initialised with it.
  expect(ensureSandboxBackupPasswords(loaded)).toEqual([]);
  expect(readFileSync(path.join(dir, 'secrets', 'sim-pw'), 'utf8')).toBe(pw);
});

describe('npm start, then the backup commands it prints', () => {
  let up: ChildProcess;
  let out = '';
  let cfg: string;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-quickstart-'));
    cfg = await sandboxConfigIn(dir);
    // `npm start` itself, in a process group of its own as a terminal runs it, so Ctrl-C can be sent the same way.
    up = spawn('npm', ['start'], {
      cwd: ROOT,
      env: { ...process.env, TEMPORAL_ADDRESS: '', GPUOPS_CONFIG: cfg },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    up.stdout?.on('data', (b: Buffer) => (out += b.toString()));
    up.stderr?.on('data', (b: Buffer) => (out += b.toString()));
    const deadline = Date.now() + 150_000;
    while (!out.includes('gpuops is up.')) {
      if (up.exitCode !== null) throw new Error(`gpuops up exited ${up.exitCode}:\n${out}`);
      if (Date.now() > deadline) throw new Error(`gpuops up not up after 150 s:\n${out}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }, 180_000);

  afterAll(() => {
    // Everything `npm start` printed is its log: keep it for the secret scan (test/global-teardown.ts).
    if (dir) writeFileSync(path.join(dir, 'up.log'), out);
    // Only when a test failed before Ctrl-C: nothing of the group may outlive the file.
    if (!up?.pid || up.exitCode !== null || up.signalCode !== null) return;
    try {
      process.kill(-up.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  });

  test('up made the password, synced both plans to Schedules and prints the backup commands under Try', () => {
    expect(out).toContain(`sandbox backups: made a restic password in ${path.join(dir, 'backups', 'restic-password')}`);
    expect(out).toMatch(/backup schedules: .*sandbox-1-models/);
    expect(out).toMatch(/backup schedules: .*sandbox-2-gpu-config/);
    for (const cmd of ['backup run sandbox-1-models', 'backup status', 'backup restore sandbox-1-models --target'])
      expect(out).toContain(`./bin/gpuops -c ${cfg} ${cmd}`);
  });

  test('backup run, status and restore work as printed, against the local restic repository', async () => {
    const first = await gpuops(cfg, ['backup', 'run', 'sandbox-1-models']);
    expect(first).toEqual({ code: 0, out: expect.stringMatching(/^sandbox-1-models: ok, snapshot [0-9a-f]{8}/) });
    const gpu = await gpuops(cfg, ['backup', 'run', 'sandbox-2-gpu-config']);
    expect(gpu).toEqual({ code: 0, out: expect.stringMatching(/^sandbox-2-gpu-config: ok, snapshot/) });

    const status = await gpuops(cfg, ['--json', 'backup', 'status']);
    expect(status.code).toBe(0);
    const plans = JSON.parse(status.out) as { plan: string; breached: boolean; snapshots: number }[];
    expect(plans.map((p) => [p.plan, p.breached, p.snapshots > 0])).toEqual([
      ['sandbox-1-models', false, true],
      ['sandbox-2-gpu-config', false, true],
    ]);

    const target = path.join(dir, 'restored');
    const restore = await gpuops(cfg, ['backup', 'restore', 'sandbox-1-models', '--target', target]);
    expect(restore).toEqual({
      code: 0,
      out: expect.stringMatching(/^restored sandbox-1-models [0-9a-f]+ to .*verified/),
    });
    expect(readdirSync(target, { recursive: true }).length).toBeGreaterThan(0);

    // gpuops up's in-process control worker serves metrics.control: the SDK's series and the backups it ran.
    const listen = (parse(readFileSync(cfg, 'utf8')) as { metrics: { control: string } }).metrics.control;
    expect(out).toContain(`control worker metrics on http://${listen}/metrics`);
    const metrics = await (await fetch(`http://${listen}/metrics`)).text();
    expect(metrics).toMatch(/^temporal_workflow_completed_total\{/m);
    for (const plan of ['sandbox-1-models', 'sandbox-2-gpu-config'])
      expect(metrics).toMatch(new RegExp(`^gpuops_backup_runs_total\\{[^}]*plan="${plan}"[^}]*\\} 1$`, 'm'));
  }, 240_000);

  test('Ctrl-C (SIGINT to the whole process group) stops everything in order: no process is left behind', async () => {
    const pid = up.pid ?? 0;
    const exited = new Promise<number | null>((resolve) => up.once('exit', (code) => resolve(code)));
    process.kill(-pid, 'SIGINT');
    await exited;
    // The last of the group (workers, the dev server, the hypervisor worker) may take a moment after npm.
    const deadline = Date.now() + 30_000;
    const alive = (): boolean => {
      try {
        process.kill(-pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    while (alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    expect({ groupAlive: alive(), stopped: /control worker stopped; shutting down/.test(out) }).toEqual({
      groupAlive: false,
      stopped: true,
    });
    expect(out).toMatch(/\d\d:\d\d:\d\d stopped\s*$/);
    // The dev server was in a group of its own (so Ctrl-C reaches the workers first): gpuops stopped it.
    const port = (parse(readFileSync(cfg, 'utf8')) as { temporal: { dev: { port: number } } }).temporal.dev.port;
    const open = await new Promise<boolean>((resolve) => {
      const sock = net.connect(port, '127.0.0.1');
      sock.once('connect', () => (sock.destroy(), resolve(true)));
      sock.once('error', () => resolve(false));
    });
    expect(open).toBe(false);
  }, 60_000);
});
