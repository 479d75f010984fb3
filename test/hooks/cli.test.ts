/** `gpuops hooks` as an operator runs it: a real process that serves until SIGTERM. */
import { execFile, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { alert, deliver, fixture, payload } from './harness';
import { logOutputOf } from '../helpers/run-log';

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
  // Also kept in the run's logs, which the secret scan reads.
  logOutputOf(child, 'hooks-cli');
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

test('`gpuops hooks` stops cleanly on SIGTERM while its event loop is busy (node itself, no signal relay in between)', async () => {
  // A preload keeps the event loop busy 90 % of the time, as a loaded worker's is. The tsx CLI (which bin/gpuops
  // used to run) relays SIGTERM to its node child and SIGKILLs it when no answer comes within 30 ms: exit 143, no
  // graceful stop. bin/gpuops now execs node with tsx as a loader, so the signal reaches the process that handles it.
  const fx = fixture(1);
  const port = await freePort();
  const busy = path.join(fx.dir, 'busy-loop.mjs');
  // It starts once the receiver says it is listening, in the process that runs main.ts (not a tsx CLI parent).
  writeFileSync(
    busy,
    [
      "if (process.argv[1]?.endsWith('main.ts')) {",
      '  for (const stream of [process.stdout, process.stderr]) {',
      '    const write = stream.write.bind(stream);',
      '    stream.write = (chunk, ...rest) => {',
      "      if (String(chunk).includes('listening on') && !globalThis.busy)",
      '        globalThis.busy = setInterval(() => { const t = Date.now(); while (Date.now() - t < 150); }, 15).unref();',
      '      return write(chunk, ...rest);',
      '    };',
      '  }',
      '}',
      '',
    ].join('\n'),
  );
  const child = spawn(GPUOPS, ['-c', fx.loaded.path, 'hooks', '--listen', `127.0.0.1:${port}`], {
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: process.env.TEMPORAL_TEST_ADDRESS,
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import ${busy}`.trim(),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  // Also kept in the run's logs, which the secret scan reads.
  logOutputOf(child, 'hooks-cli');
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.once('exit', (code, signal) => resolve([code, signal])),
  );
  const deadline = Date.now() + 30_000;
  while (!out.includes('listening on') && child.exitCode === null && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 50));
  expect(out).toContain('listening on');
  // The pid spawn() got is the node process serving (bash exec'd it), not a relay in front of it.
  expect(readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0')).toContain(
    path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.ts'),
  );
  child.kill('SIGTERM');
  expect({ exit: await exited, out }).toEqual({ exit: [0, null], out: expect.stringContaining('listening on') });
}, 60_000);

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
