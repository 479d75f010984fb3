/**
 * What the Temporal benches share: a private dev server with a client on it, in a temp dir of their own that goes
 * when they end, and the entry point that runs a bench file on its own (`npx tsx bench/<name>.ts`).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { privateDevServerOptions, startDevServer, type DevServer } from '../src/temporal/dev-server';
import { openTestEnv, type TestEnv } from '../test/helpers/env';

/** The bench's own dev server and a client on it. */
export interface BenchServer {
  /** The temp dir: the server's SQLite file and log, and room for the bench's own files. */
  dir: string;
  server: DevServer;
  /** The server's SQLite file: its path names the server's process (`pgrep -f`). */
  dbFile: string;
  env: TestEnv;
}

/**
 * Start a private headless dev server in a fresh `gpuops-bench-<name>-` temp dir, open a client on it, run `body`,
 * then close the client, stop the server and remove the dir, whether `body` succeeded or not.
 */
export async function withBenchServer(name: string, body: (s: BenchServer) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `gpuops-bench-${name}-`));
  try {
    const opts = await privateDevServerOptions(dir);
    const server = await startDevServer(opts);
    try {
      const env = await openTestEnv(server.address);
      try {
        await body({ dir, server, dbFile: opts.dbFile, env });
      } finally {
        await env.close();
      }
    } finally {
      await server.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Run `main` when `mod` is the file node was started with; a failure is printed and sets the exit code. */
export function runIfMain(mod: NodeModule, main: () => Promise<void>): void {
  if (require.main !== mod) return;
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}

/** The median of some timings (the mean of the middle two for an even count). */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error('median of no timings');
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
