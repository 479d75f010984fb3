/**
 * Logs a test run keeps on disk, under `$GPUOPS_TEST_RUN_DIR/logs`, so the secret scan (test/global-teardown.ts)
 * reads what gpuops logged as well as what it stored: the Temporal runtime's log of every in-process worker, the
 * routers, hooks receivers and codec servers tests start. Without a run directory (a unit run with a no-op global
 * setup) nothing is written. Each file is capped, so a chatty test cannot fill the disk.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { RUN_DIR_ENV } from './secrets';

/** Most bytes one log file takes; past it a last line says so and the rest is dropped. */
export const RUN_LOG_MAX_BYTES = 32 * 1024 * 1024;

/** The file `name`'s lines go to in this jest worker (one per process: workers never share a file), or undefined. */
export function runLogFile(name: string): string | undefined {
  const dir = process.env[RUN_DIR_ENV];
  if (!dir) return undefined;
  mkdirSync(path.join(dir, 'logs'), { recursive: true });
  return path.join(dir, 'logs', `${name}-${process.pid}.log`);
}

const written = new Map<string, number>();

/** A line sink for `log` options (router, hooks receiver, codec server): appends to the run's `name` log. */
export function runLog(name: string): (line: string) => void {
  const file = runLogFile(name);
  return (line) => {
    if (!file) return;
    const n = written.get(file) ?? 0;
    if (n >= RUN_LOG_MAX_BYTES) return;
    const full = n + line.length + 1 > RUN_LOG_MAX_BYTES;
    written.set(file, full ? RUN_LOG_MAX_BYTES : n + line.length + 1);
    appendFileSync(file, full ? '(log cap reached; the rest is dropped)\n' : `${line}\n`);
  };
}

/** Copy everything a child process prints (stdout and stderr) to the run's `name` log, besides what the test reads. */
export function logOutputOf(
  child: { stdout?: NodeJS.ReadableStream | null; stderr?: NodeJS.ReadableStream | null },
  name: string,
): void {
  const log = runLog(name);
  for (const stream of [child.stdout, child.stderr])
    stream?.on('data', (b: Buffer | string) => log(b.toString().trimEnd()));
}
