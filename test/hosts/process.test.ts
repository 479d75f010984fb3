import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ProcessRuntime } from '../../src/hosts/process';
import { NoSuchContainerError } from '../../src/hosts/runtime';

// A stand-in engine (node -e; node itself takes the `--`): prints its arguments, then stays up until signalled (exit 3 on SIGTERM, like an engine that
// reports a non-zero status when told to stop mid-request).
const ENGINE = [
  '-e',
  "console.log('engine up ' + process.argv.slice(1).join(' ')); console.error('CUDA out of memory (logged)');" +
    "process.on('SIGTERM', () => process.exit(3)); setInterval(() => {}, 1000);",
];

let dir: string;
let rt: ProcessRuntime;
const started: string[] = [];

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'gpuops-proc-'));
  rt = new ProcessRuntime({
    dir,
    specs: {
      llama: { command: process.execPath, args: [...ENGINE, '--', '-m', 'a.gguf'] },
      broken: { command: '/nonexistent/engine', args: [] },
    },
  });
});

afterEach(async () => {
  for (const n of started.splice(0)) await rt.stop(n, { timeoutSec: 1 }).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

async function until(check: () => Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(50);
  }
}

test('starts an engine under the keeper, reports it running, and reads its log', async () => {
  expect((await rt.inspectOne('llama')).status).toBe('created');
  started.push('llama');
  await rt.start('llama');
  const s = await rt.inspectOne('llama');
  expect(s).toMatchObject({ exists: true, status: 'running', running: true, restartCount: 0 });
  await until(async () => (await rt.logs('llama')).some((l) => l.startsWith('engine up')));
  expect((await rt.logs('llama')).find((l) => l.startsWith('engine up'))).toBe('engine up -m a.gguf');
  const [withSignals] = await rt.inspect(['llama'], { logSignals: { tail: 50 } });
  expect(withSignals?.logSignals).toEqual(['CUDA out of memory (logged)']);
});

test('a SIGSTOPped engine reads as paused; stop still ends it and records its exit code', async () => {
  started.push('llama');
  await rt.start('llama');
  const pid = Number((await rt.command('llama'))?.id);
  await until(async () => (await rt.logs('llama')).some((l) => l.startsWith('engine up')));
  process.kill(pid, 'SIGSTOP');
  await until(async () => (await rt.inspectOne('llama')).status === 'paused');
  expect((await rt.inspectOne('llama')).running).toBe(true);
  await rt.stop('llama', { timeoutSec: 5 });
  expect(await rt.inspectOne('llama')).toMatchObject({ status: 'exited', running: false, exitCode: 3 });
});

test('a SIGKILLed engine is exited 137; restart brings it back with a new pid and counts the restart', async () => {
  started.push('llama');
  await rt.start('llama');
  const pid = Number((await rt.command('llama'))?.id);
  process.kill(pid, 'SIGKILL');
  await until(async () => (await rt.inspectOne('llama')).status === 'exited');
  expect((await rt.inspectOne('llama')).exitCode).toBe(137);
  await rt.start('llama');
  const again = await rt.command('llama');
  expect(again?.running).toBe(true);
  expect(Number(again?.id)).not.toBe(pid);
  await rt.restart('llama', { timeoutSec: 2 });
  expect(await rt.inspectOne('llama')).toMatchObject({ status: 'running', restartCount: 1 });
});

test('recreate runs the engine with a rewritten command line that survives restarts, and can leave it stopped', async () => {
  started.push('llama');
  await rt.start('llama');
  const r = await rt.recreate('llama', (cmd) => cmd.map((a) => (a === 'a.gguf' ? 'b.gguf' : a)));
  expect(r.previousCmd.at(-1)).toBe('a.gguf');
  expect(r.cmd.at(-1)).toBe('b.gguf');
  await rt.restart('llama', { timeoutSec: 2 });
  expect((await rt.command('llama'))?.cmd.at(-1)).toBe('b.gguf');
  await until(async () => (await rt.logs('llama')).includes('engine up -m b.gguf'));
  await rt.recreate('llama', (cmd) => cmd.map((a) => (a === 'b.gguf' ? 'a.gguf' : a)), { start: false });
  expect((await rt.inspectOne('llama')).running).toBe(false);
  expect((await rt.command('llama'))?.cmd.at(-1)).toBe('a.gguf');
});

test('an unknown name is missing, and lifecycle calls on it throw NoSuchContainerError', async () => {
  expect(await rt.inspectOne('nope')).toMatchObject({ exists: false, status: 'missing' });
  await expect(rt.start('nope')).rejects.toBeInstanceOf(NoSuchContainerError);
  await expect(rt.start('broken')).rejects.toThrow(/could not start.*nonexistent/);
  expect((await rt.inspectOne('broken')).exitCode).toBe(127);
});
