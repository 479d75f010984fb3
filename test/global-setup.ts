/**
 * One real Temporal dev server per test run (the `temporal` CLI, headless, on a free port), run by a child
 * process. Test files read its address from TEMPORAL_TEST_ADDRESS (and, on the mTLS production target, the client
 * certificates' directory from TEMPORAL_TEST_TLS_DIR).
 *
 * The server's directory is the run directory (GPUOPS_TEST_RUN_DIR): its SQLite file, the secret registry
 * (test/helpers/secrets.ts), and — TMPDIR points into it — every temp directory the tests and the processes they
 * start make, with the logs, reports, route and state files in them; test/global-teardown.ts scans it all for the
 * run's secrets.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RUN_DIR_ENV } from './helpers/secrets';

declare global {
  var __gpuopsTemporal: ChildProcess | undefined;
}

export default async function globalSetup(): Promise<void> {
  const root = path.resolve(__dirname, '..');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-test-'));
  const child = spawn(
    path.join(root, 'node_modules', '.bin', 'tsx'),
    [path.join(root, 'scripts', 'test-temporal-server.ts'), dir],
    {
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  globalThis.__gpuopsTemporal = child;
  const [address, tlsDir] = await new Promise<[string, string | undefined]>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
      const m = /READY (\S+)(?: TLS (\S+))?\n/.exec(out);
      if (m?.[1]) resolve([m[1], m[2]]);
    });
    child.once('exit', (code) => reject(new Error(`Temporal dev server for tests exited with code ${code}`)));
  });
  process.env.TEMPORAL_TEST_ADDRESS = address;
  // The production target runs mTLS: test/helpers/env.ts testTarget() gives clients its client certificate.
  if (tlsDir) process.env.TEMPORAL_TEST_TLS_DIR = tlsDir;
  process.env.TEMPORAL_TEST_DIR = dir;
  routeTempDirs(dir);
}

/**
 * Point TMPDIR (hence os.tmpdir() here, in every test worker and in every child process) at `<dir>/tmp`, so nothing
 * a test writes escapes the scan. tsx's compile cache, which lives in the temp dir, stays shared across runs through
 * a symlink (the scan does not follow links; the cache holds compiled source, no secrets).
 */
function routeTempDirs(dir: string): void {
  const outer = os.tmpdir();
  const tmp = path.join(dir, 'tmp');
  mkdirSync(tmp);
  const tsxCache = `tsx-${process.geteuid?.() ?? os.userInfo().username}`;
  mkdirSync(path.join(outer, tsxCache), { recursive: true });
  if (!existsSync(path.join(tmp, tsxCache))) symlinkSync(path.join(outer, tsxCache), path.join(tmp, tsxCache));
  process.env.GPUOPS_TEST_OUTER_TMPDIR = outer;
  process.env[RUN_DIR_ENV] = dir;
  process.env.TMPDIR = tmp;
}
