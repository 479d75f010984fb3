/**
 * Real engines for tests: what `npm run engines` supplied (llama-server, Ollama, the registry, tiny GGUF models,
 * Docker images), engine configs that run them on a sandbox node, and a clear skip when they are missing.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { findEngineTools, type EngineTools } from '../../src/sandbox/engine-supply';
import {
  publishToRegistry,
  startRegistryAt,
  startRegistryFront,
  type RegistryHandle,
} from '../../src/sandbox/registry';
import { freePort } from '../../src/net';

const tempDirs: string[] = [];
/** A scratch directory for one test's engines (models, state, logs), removed by {@link removeTempDirs}. */
export function tempDir(prefix: string): string {
  const d = mkdtempSync(path.join(os.tmpdir(), `gpuops-${prefix}-`));
  tempDirs.push(d);
  return d;
}
/** Remove this file's scratch directories (after its engines are stopped). */
export function removeTempDirs(): void {
  for (const d of tempDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

let cached: EngineTools | undefined;
/** The supplied engines (looked up once per test file). */
export function engineTools(): EngineTools {
  cached ??= findEngineTools();
  return cached;
}

/**
 * `test` when the named pieces are there, else `test.skip` with one line saying why. With
 * GPUOPS_REQUIRE_REAL_ENGINES=1 (CI) a missing piece fails the test instead of skipping it.
 */
export function realTest(needs: ('llamaServer' | 'ollama' | 'registry' | 'docker')[]): jest.It {
  const t = engineTools();
  const why: string[] = [];
  for (const n of needs) {
    if (n === 'docker') {
      if (!dockerEngine()) why.push('no Docker engine reachable (start dockerd; see README)');
      else if (!t.images.llamaServer || !t.images.ollama) why.push('engine images not built (npm run engines)');
    } else if (!t[n]) why.push(`${n} not supplied (npm run engines)`);
  }
  if (!t.models.v1 || !t.models.v2) why.push('tiny test models missing (npm run engines)');
  if (why.length === 0) return test;
  if (process.env.GPUOPS_REQUIRE_REAL_ENGINES === '1') {
    return ((name: string) =>
      test(name, () => {
        throw new Error(`real engines required but missing: ${why.join('; ')}`);
      })) as unknown as jest.It;
  }
  console.warn(`real-engine tests skipped: ${why.join('; ')}`);
  return test.skip;
}

let dockerUp: boolean | undefined;
/** Whether a real Docker engine answers (`docker info`). */
export function dockerEngine(): boolean {
  dockerUp ??= spawnSync(realDockerBin(), ['info', '--format', '{{.ServerVersion}}'], { timeout: 10_000 }).status === 0;
  return dockerUp;
}

/** The real docker CLI (the sandbox shim is never on a test process's own PATH). */
export function realDockerBin(): string {
  const r = spawnSync('sh', ['-c', 'command -v docker'], { encoding: 'utf8' });
  return r.stdout.trim() || 'docker';
}

/** A real llama-server engine config on a free port (runtime process or docker), serving `model`. */
export async function llamaEngine(opts: {
  name?: string;
  runtime: 'process' | 'docker';
  model: string;
  container?: string;
  /** Context size (-c): the KV cache llama-server preallocates for it is most of its memory. Default 512. */
  ctx?: number;
  extra?: Record<string, unknown>;
}): Promise<Record<string, unknown> & { name: string; url: string }> {
  const t = engineTools();
  const port = await freePort();
  const name = opts.name ?? 'llama';
  // Inside the image the models live under /models; as a process, in the tool cache.
  const model = opts.runtime === 'docker' ? `/models/${path.basename(opts.model)}` : opts.model;
  const args = ['-m', model, '--host', '127.0.0.1', '--port', String(port), '-c', String(opts.ctx ?? 512), '-t', '1'];
  args.push('-np', '1');
  // The id /v1/models lists (and the router routes by): the file name, as a canary slot's recreate sets it too.
  args.push('--alias', path.basename(opts.model));
  return {
    name,
    type: 'llamacpp',
    runtime: opts.runtime,
    container: opts.container ?? name,
    url: `http://127.0.0.1:${port}`,
    gpus: [],
    cpuOnly: true,
    ...(opts.runtime === 'process'
      ? { process: { command: t.llamaServer, args }, real: {} }
      : { real: { image: t.images.llamaServer, args } }),
    ...opts.extra,
  };
}

/** A real Ollama engine config on a free port with `models` created from the tiny GGUFs on first start. */
export async function ollamaEngine(opts: {
  runtime: 'process' | 'docker';
  modelsDir: string;
  seed: { name: string; gguf: string }[];
  container?: string;
  extra?: Record<string, unknown>;
}): Promise<Record<string, unknown> & { name: string; url: string }> {
  const t = engineTools();
  const port = await freePort();
  const env = { OLLAMA_HOST: `127.0.0.1:${port}`, OLLAMA_MODELS: opts.modelsDir, OLLAMA_NOPRUNE: '1' };
  return {
    name: 'ollama',
    type: 'ollama',
    runtime: opts.runtime,
    container: opts.container ?? 'ollama',
    url: `http://127.0.0.1:${port}`,
    gpus: [],
    cpuOnly: true,
    probeModel: opts.seed[0]?.name,
    ...(opts.runtime === 'process'
      ? { process: { command: t.ollama, args: ['serve'], env }, real: { seedModels: opts.seed } }
      : {
          real: {
            image: t.images.ollama,
            args: ['serve'],
            env: { ...env, OLLAMA_MODELS: '/root/.ollama/models' },
            seedModels: opts.seed,
          },
        }),
    ...opts.extra,
  };
}

/** A real OCI registry on a free port (the supplied distribution v3 binary). */
export async function startRegistry(dir: string): Promise<RegistryHandle> {
  const bin = engineTools().registry;
  if (!bin) throw new Error('registry not supplied (npm run engines)');
  return startRegistryAt(bin, dir, await freePort());
}

/** Publish GGUFs to a registry with a scratch copy of the supplied Ollama; returns each manifest digest. */
export async function publishModels(
  registryHost: string,
  models: { name: string; gguf: string }[],
  dir: string,
): Promise<Record<string, string>> {
  const bin = engineTools().ollama;
  if (!bin) throw new Error('ollama not supplied (npm run engines)');
  return publishToRegistry(bin, registryHost, models, dir);
}

/** A redirecting front of the registry (see src/sandbox/registry.ts) on a free port. */
export async function registryFront(
  registryHost: string,
  opts: { bytesPerSec?: number } = {},
): Promise<RegistryHandle> {
  return startRegistryFront(registryHost, { ...opts, port: await freePort() });
}
