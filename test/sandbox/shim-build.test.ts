/**
 * The shims are bundled into plain executables that start without a TypeScript loader, rebuilt when a source is
 * newer than the build, and replaced whole: concurrent builds never expose a half-written shim.
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { buildShims, SHIMS, shimsUpToDate } from '../../src/sandbox/shim-build';
import { nodeConfig, seedStore, tempDir } from './helpers';

jest.setTimeout(120_000);

let dir: string;
let cleanup: () => void;

beforeEach(() => {
  ({ dir, cleanup } = tempDir('gpuops-shim-build-'));
});
afterEach(() => cleanup());

test('each shim is one executable file that runs as plain node, and a fresh build is up to date', async () => {
  const out = path.join(dir, 'bin');
  expect(shimsUpToDate(out)).toBe(false);
  buildShims(out);
  expect(shimsUpToDate(out)).toBe(true);
  for (const name of SHIMS) {
    const file = path.join(out, name);
    expect(readFileSync(file, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
    expect(statSync(file).mode & 0o111).toBe(0o111);
    // Bundled: nothing is required from the repository at run time.
    expect(readFileSync(file, 'utf8')).not.toMatch(/require\("\.\.?\//);
  }
  const store = seedStore(dir, await nodeConfig('build-node'));
  // No NODE_OPTIONS: jest's transform hooks must not be what makes it run.
  const env = { PATH: process.env.PATH ?? '', GPUOPS_SANDBOX_STATE: store.file };
  const r = spawnSync(path.join(out, 'nvidia-smi'), ['-L'], { env, encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.stdout).toMatch(/^GPU 0: NVIDIA RTX A4000 \(UUID: GPU-[0-9a-f-]+\)\n$/);
});

test('a build older than a source, a missing shim or an unreadable stamp is stale', () => {
  const out = path.join(dir, 'bin');
  buildShims(out);
  const stampFile = path.join(out, '.inputs.json');
  const stamp = JSON.parse(readFileSync(stampFile, 'utf8')) as { startedAt: number; inputs: string[] };
  expect(stamp.inputs).toEqual(
    expect.arrayContaining(['src/sandbox/shims/docker.ts', 'src/sandbox/shims/lib/core.ts']),
  );
  // Types only: the state module (and the config schema behind it) is not in any bundle.
  expect(stamp.inputs).not.toContain('src/sandbox/state.ts');
  writeFileSync(stampFile, JSON.stringify({ ...stamp, startedAt: 0 }));
  expect(shimsUpToDate(out)).toBe(false);
  writeFileSync(stampFile, JSON.stringify(stamp));
  expect(shimsUpToDate(out)).toBe(true);
  rmSync(path.join(out, 'qm'));
  expect(shimsUpToDate(out)).toBe(false);
  buildShims(out);
  writeFileSync(stampFile, '{');
  expect(shimsUpToDate(out)).toBe(false);
});

test('shims run while other processes rebuild them never see a half-written file', async () => {
  const out = path.join(dir, 'bin');
  buildShims(out);
  const store = seedStore(dir, await nodeConfig('race-node'));
  const builder = (): Promise<number | null> =>
    new Promise((resolve) => {
      const child = spawn(
        process.execPath,
        [
          '--require',
          require.resolve('tsx/cjs'),
          '-e',
          `const b = require(${JSON.stringify(require.resolve('../../src/sandbox/shim-build'))});
           for (let i = 0; i < 3; i++) b.buildShims(${JSON.stringify(out)});`,
        ],
        { stdio: 'inherit' },
      );
      child.on('exit', resolve);
    });
  let building = true;
  const builds = Promise.all([builder(), builder()]).finally(() => {
    building = false;
  });
  const env = { PATH: process.env.PATH ?? '', GPUOPS_SANDBOX_STATE: store.file };
  let runs = 0;
  while (building || runs === 0) {
    const r = spawnSync(path.join(out, 'docker'), ['inspect', '-f', '{{.State.Status}}', 'ollama'], {
      env,
      encoding: 'utf8',
    });
    expect({ code: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({
      code: 0,
      stdout: 'running\n',
      stderr: '',
    });
    runs += 1;
    await new Promise((resolve) => setImmediate(resolve));
  }
  expect(await builds).toEqual([0, 0]);
  expect(shimsUpToDate(out)).toBe(true);
});
