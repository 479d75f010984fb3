/**
 * `gpuops up`'s child processes: their output is logged line by line with the process name in front, however the
 * bytes happen to arrive in pipe chunks.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ManagedProcess } from '../src/cli/processes';

/** Run a Node script as a managed process until it exits; the lines it logged, without the exit notice. */
async function logsOf(script: string): Promise<string[]> {
  const lines: string[] = [];
  let exited!: () => void;
  const done = new Promise<void>((resolve) => (exited = resolve));
  const proc = new ManagedProcess({
    name: 'child',
    command: process.execPath,
    args: ['-e', script],
    restartDelayMs: 60_000,
    log: (line) => {
      if (/^\[child\] exited \(/.test(line)) exited();
      else lines.push(line);
    },
  });
  proc.start();
  await done;
  // The exit can be reported before the pipes' last bytes are read: give them a moment.
  await sleep(200);
  await proc.stop(1000);
  return lines;
}

test('a line that arrives in two chunks is logged once, whole', async () => {
  // The pause makes the two writes separate pipe chunks.
  const lines = await logsOf(
    "process.stdout.write('model pull 4'); setTimeout(() => process.stdout.write('2% done\\nnext line\\n'), 300);",
  );
  expect(lines).toEqual(['[child] model pull 42% done', '[child] next line']);
});

test('a multi-byte character split between chunks is kept, and a last line without newline is logged', async () => {
  const lines = await logsOf(
    "const b = Buffer.from('température 71°C\\n', 'utf8'); const cut = b.indexOf(0xb0) ; " +
      'process.stderr.write(b.subarray(0, cut)); ' +
      "setTimeout(() => { process.stderr.write(b.subarray(cut)); process.stderr.write('no newline at the end'); }, 300);",
  );
  expect(lines).toEqual(['[child] température 71°C', '[child] no newline at the end']);
});
