/** `gpuops hooks` as an operator runs it: a real process that serves until SIGTERM. */
import { execFile, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { alert, deliver, fixture, payload } from './harness';

const GPUOPS = path.resolve(__dirname, '..', '..', 'bin', 'gpuops');

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

test('`gpuops hooks` serves /healthz, refuses an unauthenticated alert, and exits 0 on SIGTERM', async () => {
  const fx = fixture(1);
  const port = await freePort();
  const child = spawn(GPUOPS, ['-c', fx.loaded.path, 'hooks', '--listen', `127.0.0.1:${port}`], {
    env: { ...process.env, TEMPORAL_ADDRESS: process.env.TEMPORAL_TEST_ADDRESS },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const outputContains = async (text: string): Promise<void> => {
    const deadline = Date.now() + 20_000;
    while (!out.includes(text) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(out).toContain(text);
  };
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    await outputContains('listening on');
    expect(out).toContain(`listening on http://127.0.0.1:${port}/hooks/alertmanager (auth: bearer, hmac)`);
    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    expect(health.status).toBe(200);
    const url = `http://127.0.0.1:${port}`;
    const r = await deliver(url, payload([alert({ labels: { gpuops_node: fx.nodes[0] ?? '' } })]), {});
    expect(r.status).toBe(401);
    // The log line goes to stderr, which may arrive after the response.
    await outputContains('hooks: refused 127.0.0.1: no credentials');
    expect(out).not.toContain('test-bearer-token');
  } finally {
    child.kill('SIGTERM');
  }
  expect(await exited).toBe(0);
});

test('`gpuops hooks` exits 2 and names the section when the config has no hooks section', async () => {
  const fx = fixture(1);
  const bare = path.join(fx.dir, 'no-hooks.yaml');
  writeFileSync(bare, stringify({ nodes: [{ id: fx.nodes[0] }] }));
  const r = await promisify(execFile)(GPUOPS, ['-c', bare, 'hooks'], { timeout: 30_000 }).then(
    () => ({ code: 0, stderr: '' }),
    (err: { code?: number; stderr?: string }) => ({ code: err.code, stderr: err.stderr ?? '' }),
  );
  expect(r.code).toBe(2);
  expect(r.stderr).toContain('hooks: is required to run `gpuops hooks`');
});
