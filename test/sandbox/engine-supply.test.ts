/**
 * The engine supply's looking half, on temporary caches: it finds what is there, names each missing piece in one
 * line, and a supply run on a machine without the tools fails in one line per step. Nothing here builds anything.
 */
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  EngineSupplyError,
  ENGINE_VERSIONS,
  ensureEngines,
  findEngineTools,
  parseLdd,
  supplyPaths,
  TEST_MODELS,
  toolsDir,
  type EngineManifest,
} from '../../src/sandbox/engine-supply';
import { tempDir } from './helpers';

let dir: string;
let cleanup: () => void;

beforeEach(() => {
  ({ dir, cleanup } = tempDir('gpuops-supply-'));
});
afterEach(() => cleanup());

test('the cache is $GPUOPS_TOOLS_DIR, else $XDG_CACHE_HOME/gpuops, else ~/.cache/gpuops', () => {
  expect(toolsDir({ GPUOPS_TOOLS_DIR: '/opt/t', XDG_CACHE_HOME: '/x' })).toBe('/opt/t');
  expect(toolsDir({ XDG_CACHE_HOME: '/x' })).toBe('/x/gpuops');
  expect(toolsDir({})).toBe(path.join(os.homedir(), '.cache', 'gpuops'));
});

test('an empty cache reports every piece missing, one line each, naming the command that supplies it', () => {
  const tools = findEngineTools({ dir, images: false });
  expect(tools.llamaServer).toBeUndefined();
  expect(tools.ollama).toBeUndefined();
  expect(tools.registry).toBeUndefined();
  expect(tools.models).toEqual({});
  expect(tools.missing).toHaveLength(6);
  for (const line of tools.missing) {
    expect(line).not.toContain('\n');
    expect(line).toContain('npm run engines');
  }
  expect(tools.missing[0]).toMatch(/^llama-server: not built \(.*bin\/llama-server is missing\)/);
});

test('finds built binaries and models, and reports a model whose size differs from the manifest', () => {
  const p = supplyPaths(dir);
  mkdirSync(p.bin, { recursive: true });
  mkdirSync(p.models, { recursive: true });
  for (const bin of [p.llamaServer, p.ollama, p.registry]) {
    writeFileSync(bin, '#!/bin/sh\n');
    chmodSync(bin, 0o755);
  }
  for (const m of Object.values(TEST_MODELS)) writeFileSync(path.join(p.models, m.file), 'GGUF');
  const manifest: EngineManifest = {
    schema: 1,
    toolsDir: dir,
    updatedAt: new Date().toISOString(),
    versions: ENGINE_VERSIONS,
    binaries: {},
    models: {
      large: {
        path: path.join(p.models, TEST_MODELS.large.file),
        name: TEST_MODELS.large.name,
        seed: 3,
        bytes: 200,
        sha256: '0'.repeat(64),
        nVocab: 1,
        nEmbd: 64,
        nLayer: 2,
        nFf: 128,
        answer: 'x',
        generatorSha256: '0'.repeat(64),
        targetMb: 200,
        modelfile: '',
      },
    },
    images: {},
    stepSeconds: {},
  };
  writeFileSync(p.manifest, JSON.stringify(manifest));

  const tools = findEngineTools({ dir, images: false });
  expect(tools).toMatchObject({ llamaServer: p.llamaServer, ollama: p.ollama, registry: p.registry });
  expect(tools.models.v1).toBe(path.join(p.models, 'gpuops-tiny-v1.gguf'));
  expect(tools.models.v2).toBe(path.join(p.models, 'gpuops-tiny-v2.gguf'));
  expect(tools.models.large).toBeUndefined();
  expect(tools.missing).toEqual([expect.stringMatching(/^model large: .* is 4 bytes, the manifest says 200;/)]);
  expect(tools.manifest?.models.large?.answer).toBe('x');
});

test('a binary that is not executable does not count as built', () => {
  const p = supplyPaths(dir);
  mkdirSync(p.bin, { recursive: true });
  writeFileSync(p.ollama, 'not a program');
  expect(findEngineTools({ dir, images: false }).ollama).toBeUndefined();
});

test('without the build tools, a required supply run fails with one line per step and no stack trace', async () => {
  const savedPath = process.env.PATH;
  process.env.PATH = path.join(dir, 'empty-path');
  const lines: string[] = [];
  try {
    const err = await ensureEngines({ dir, require: true, images: false, log: (l) => lines.push(l) }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(EngineSupplyError);
    const problems = (err as EngineSupplyError).problems;
    expect(problems).toContain(
      'llama.cpp source: python3 not found on PATH; install it: apt-get install python3 python3-pip',
    );
    expect(problems).toContain(
      'ollama: go not found on PATH; install it: install Go 1.24 or newer (apt-get install golang-go, or the tarball from go.dev)',
    );
    for (const line of problems) {
      expect(line).not.toContain('\n');
      expect(line).not.toMatch(/\bat .*\.ts:\d+/);
    }
    expect(lines.filter((l) => l.startsWith('engines: FAILED'))).not.toHaveLength(0);
  } finally {
    process.env.PATH = savedPath;
  }
  // The run wrote its manifest and gave the lock back.
  expect(findEngineTools({ dir, images: false }).manifest?.versions).toEqual(ENGINE_VERSIONS);
  expect(existsSync(supplyPaths(dir).lock)).toBe(false);
});

test('ldd output becomes the absolute paths of the libraries and the loader; a missing library is an error', () => {
  const out = [
    '\tlinux-vdso.so.1 (0x00007ffd)',
    '\tlibgomp.so.1 => /lib/x86_64-linux-gnu/libgomp.so.1 (0x00007f37)',
    '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f37)',
    '\t/lib64/ld-linux-x86-64.so.2 (0x00007f37)',
  ].join('\n');
  expect(parseLdd(out)).toEqual([
    '/lib/x86_64-linux-gnu/libgomp.so.1',
    '/lib/x86_64-linux-gnu/libc.so.6',
    '/lib64/ld-linux-x86-64.so.2',
  ]);
  expect(() => parseLdd('\tlibcuda.so.1 => not found')).toThrow(
    'a shared library is missing: libcuda.so.1 => not found',
  );
});
