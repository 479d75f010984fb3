import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
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

test('a SIGKILLed engine is exited 137; start brings it back with a new pid; restart is not counted as its own', async () => {
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
  // Restarts by gpuops are not the engine's own: docker and systemd count only automatic ones, and so does this.
  expect(await rt.inspectOne('llama')).toMatchObject({ status: 'running', restartCount: 0 });
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
  // Like `docker create`: defined, never started since, so a standby half reads as a clean stop.
  expect(await rt.inspectOne('llama')).toMatchObject({ status: 'created', running: false, exitCode: 0 });
  expect((await rt.command('llama'))?.cmd.at(-1)).toBe('a.gguf');
});

test('an unknown name is missing, and lifecycle calls on it throw NoSuchContainerError', async () => {
  expect(await rt.inspectOne('nope')).toMatchObject({ exists: false, status: 'missing' });
  await expect(rt.start('nope')).rejects.toBeInstanceOf(NoSuchContainerError);
  await expect(rt.start('broken')).rejects.toThrow(/could not start.*nonexistent/);
  expect((await rt.inspectOne('broken')).exitCode).toBe(127);
});

test('a PID the kernel gave to another process after the keeper died is not taken for the engine', async () => {
  started.push('llama');
  await rt.start('llama');
  const state = path.join(dir, 'llama.state.json');
  const rec = JSON.parse(await readFile(state, 'utf8')) as { pid: number; keeperPid: number };
  // The keeper and its engine die without a word (SIGKILL to both); the state file still says running.
  process.kill(rec.keeperPid, 'SIGKILL');
  process.kill(-rec.pid, 'SIGKILL');
  // Something else now holds "the" PID: this test process stands in for it.
  await writeFile(state, JSON.stringify({ ...rec, pid: process.pid }));
  expect(await rt.inspectOne('llama')).toMatchObject({ status: 'exited', running: false, exitCode: 137 });
  await rt.stop('llama', { timeoutSec: 1 }); // must not signal this process
  await rt.start('llama');
  const again = await rt.command('llama');
  expect(again?.running).toBe(true);
  expect(Number(again?.id)).not.toBe(process.pid);
});

test('stop ends the engine and the children it started (its whole process group)', async () => {
  const child = new ProcessRuntime({
    dir,
    specs: {
      parent: {
        command: process.execPath,
        args: [
          '-e',
          "const c = require('node:child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], " +
            "{ stdio: 'ignore' }); console.log('child ' + c.pid); process.on('SIGTERM', () => process.exit(0)); " +
            'setInterval(() => {}, 1000);',
        ],
      },
    },
  });
  await child.start('parent');
  await until(async () => (await child.logs('parent')).some((l) => l.startsWith('child ')));
  const pid = Number((await child.logs('parent')).find((l) => l.startsWith('child '))?.slice(6));
  expect(() => process.kill(pid, 0)).not.toThrow();
  await child.stop('parent', { timeoutSec: 2 });
  await until(async () => {
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  });
});
