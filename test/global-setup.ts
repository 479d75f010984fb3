/**
 * One real Temporal dev server per test run (the `temporal` CLI, headless, on a free port), run by a child
 * process. Test files read its address from TEMPORAL_TEST_ADDRESS (and, on the mTLS production target, the client
 * certificates' directory from TEMPORAL_TEST_TLS_DIR).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

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
}
