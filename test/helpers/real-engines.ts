/**
 * Real engines for tests: what `npm run engines` supplied (llama-server, Ollama, the registry, tiny GGUF models,
 * Docker images), engine configs that run them on a sandbox node, and a clear skip when they are missing.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { stringify } from 'yaml';
import { findEngineTools, type EngineTools } from '../../src/sandbox/engine-supply';
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
  extra?: Record<string, unknown>;
}): Promise<Record<string, unknown> & { name: string; url: string }> {
  const t = engineTools();
  const port = await freePort();
  const name = opts.name ?? 'llama';
  // Inside the image the models live under /models; as a process, in the tool cache.
  const model = opts.runtime === 'docker' ? `/models/${path.basename(opts.model)}` : opts.model;
  const args = ['-m', model, '--host', '127.0.0.1', '--port', String(port), '-c', '512', '-t', '1', '-np', '1'];
  // The id /v1/models lists (and the router routes by): the file name, as a canary slot's recreate sets it too.
  args.push('--alias', path.basename(opts.model));
  return {
    name,
    type: 'llamacpp',
    runtime: opts.runtime,
    container: opts.container ?? name,
    url: `http://127.0.0.1:${port}`,
    gpus: [],
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

/** A real OCI registry (distribution v3) on a free port, storing under `dir`. */
export async function startRegistry(dir: string): Promise<{ host: string; stop(): Promise<void> }> {
  const bin = engineTools().registry;
  if (!bin) throw new Error('registry not supplied (npm run engines)');
  const port = await freePort();
  mkdirSync(dir, { recursive: true });
  const config = path.join(dir, 'config.yml');
  writeFileSync(
    config,
    stringify({
      version: 0.1,
      log: { level: 'warn' },
      storage: { filesystem: { rootdirectory: path.join(dir, 'data') }, delete: { enabled: true } },
      http: { addr: `127.0.0.1:${port}` },
    }),
  );
  const child = spawn(bin, ['serve', config], { stdio: 'ignore' });
  const host = `127.0.0.1:${port}`;
  await until(async () => (await fetch(`http://${host}/v2/`).catch(() => null))?.ok === true, 15_000, 'registry');
  return {
    host,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

async function until(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what} not ready within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Publish GGUFs to a registry the way an operator does: a scratch Ollama creates each model under the registry's
 * name and `ollama push --insecure`es it (POST /api/push). Returns each model's manifest digest as the registry
 * reports it (Docker-Content-Digest): what a deployment pins.
 */
export async function publishModels(
  registryHost: string,
  models: { name: string; gguf: string }[],
  dir: string,
): Promise<Record<string, string>> {
  const bin = engineTools().ollama;
  if (!bin) throw new Error('ollama not supplied (npm run engines)');
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const child = spawn(bin, ['serve'], {
    env: { ...process.env, OLLAMA_HOST: `127.0.0.1:${port}`, OLLAMA_MODELS: path.join(dir, 'publisher') },
    stdio: 'ignore',
  });
  try {
    await until(async () => (await fetch(`${base}/api/version`).catch(() => null))?.ok === true, 30_000, 'ollama');
    const digests: Record<string, string> = {};
    for (const m of models) {
      const data = readFileSync(m.gguf);
      const blob = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      const up = await fetch(`${base}/api/blobs/${blob}`, { method: 'POST', body: data });
      if (!up.ok) throw new Error(`blob upload: HTTP ${up.status}`);
      const full = `${registryHost}/library/${m.name}`;
      for (const [route, body] of [
        ['/api/create', { model: full, files: { 'model.gguf': blob }, stream: false }],
        ['/api/push', { model: full, insecure: true, stream: false }],
      ] as const) {
        const r = await fetch(`${base}${route}`, { method: 'POST', body: JSON.stringify(body) });
        if (!r.ok) throw new Error(`${route} ${full}: HTTP ${r.status} ${await r.text()}`);
      }
      const [repo, tag] = m.name.split(':');
      const head = await fetch(`http://${registryHost}/v2/library/${repo}/manifests/${tag ?? 'latest'}`, {
        method: 'HEAD',
        headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
      });
      const digest = head.headers.get('docker-content-digest');
      if (!head.ok || !digest) throw new Error(`registry has no manifest for ${full} (HTTP ${head.status})`);
      digests[m.name] = digest;
    }
    return digests;
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
}

/**
 * The registry as Ollama's own (registry.ollama.ai) behaves: a blob GET answers 307 to another host (its CDN), where
 * the blob is fetched in ranged parts. Ollama's downloader requires that redirect ("http: no Location header in
 * response" otherwise), while distribution's filesystem storage serves blobs in place; so this front redirects blob
 * GETs made to 127.0.0.1:PORT to localhost:PORT, and passes everything else to the real registry — at most
 * `bytesPerSec` when given (a pull slow enough to kill a worker mid-transfer).
 */
export async function registryFront(
  registryHost: string,
  opts: { bytesPerSec?: number } = {},
): Promise<{ host: string; close(): Promise<void> }> {
  const port = await freePort();
  const [rhost, rport] = registryHost.split(':');
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (req.method === 'GET' && /\/blobs\/sha256:/.test(url) && (req.headers.host ?? '').startsWith('127.0.0.1')) {
      res.writeHead(307, { location: `http://localhost:${port}${url}` }).end();
      return;
    }
    const up = http.request(
      {
        host: rhost,
        port: Number(rport),
        method: req.method,
        path: url,
        headers: { ...req.headers, host: registryHost },
      },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        if (!opts.bytesPerSec) {
          r.pipe(res);
          return;
        }
        const slice = Math.max(1024, Math.floor(opts.bytesPerSec / 20));
        r.on('data', (buf: Buffer) => {
          r.pause();
          void (async () => {
            for (let i = 0; i < buf.length && !res.destroyed; i += slice) {
              res.write(buf.subarray(i, i + slice));
              await new Promise((t) => setTimeout(t, 50));
            }
            r.resume();
          })();
        });
        r.on('end', () => res.end());
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  server.on('connection', (sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return {
    host: `127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const sock of sockets) sock.destroy();
        server.close(() => r());
      }),
  };
}
