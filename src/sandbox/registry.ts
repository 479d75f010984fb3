/**
 * A real OCI registry for the sandbox's real Ollama: distribution v3 (built by `npm run engines`) storing on disk,
 * a front that makes it behave as Ollama's own registry does for blob downloads, and a publisher that pushes GGUF
 * models into it the way an operator would (`ollama create` + `ollama push --insecure`, through a scratch Ollama).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { freePort } from '../net';

/** A running registry or front: `host` is host:port. */
export interface RegistryHandle {
  host: string;
  close(): Promise<void>;
}

async function until(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what} not ready within ${ms} ms`);
    await sleep(100);
  }
}

const answers = async (url: string): Promise<boolean> => (await fetch(url).catch(() => null))?.ok === true;

/** `registry serve` on 127.0.0.1:port with filesystem storage under `dir`. */
export async function startRegistryAt(bin: string, dir: string, port: number): Promise<RegistryHandle> {
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
  await until(() => answers(`http://${host}/v2/`), 15_000, `registry on ${host}`);
  return {
    host,
    async close() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

/**
 * The registry as Ollama's own (registry.ollama.ai) behaves: a blob GET answers 307 to another host (its CDN), where
 * the blob is fetched in ranged parts. Ollama's downloader requires that redirect ("http: no Location header in
 * response" otherwise), while distribution's filesystem storage serves blobs in place; so this front redirects blob
 * GETs made to 127.0.0.1:PORT to localhost:PORT, and passes everything else to the real registry — at most
 * `bytesPerSec` when given (a pull slow enough to kill a worker mid-transfer).
 */
export async function startRegistryFront(
  registryHost: string,
  opts: { port: number; bytesPerSec?: number },
): Promise<RegistryHandle> {
  const { port } = opts;
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
              await sleep(50);
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
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  return {
    host: `127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const sock of sockets) sock.destroy();
        server.close(() => r());
      }),
  };
}

/**
 * Create a model in a running Ollama from a GGUF file, over its own API (`ollama create` does the same): upload the
 * file as a blob, then create `name` from it. Returns the blob's digest.
 */
export async function createOllamaModel(baseUrl: string, name: string, gguf: string): Promise<string> {
  const data = readFileSync(gguf);
  const blob = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  const up = await fetch(`${baseUrl}/api/blobs/${blob}`, { method: 'POST', body: data });
  if (!up.ok) throw new Error(`blob upload of ${gguf}: HTTP ${up.status}`);
  const r = await fetch(`${baseUrl}/api/create`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: name, files: { 'model.gguf': blob }, stream: false }),
  });
  if (!r.ok) throw new Error(`create ${name}: HTTP ${r.status} ${await r.text()}`);
  return blob;
}

/**
 * Publish GGUFs to a registry as an operator does: a scratch Ollama (its own models dir under `dir`) creates each
 * model under the registry's name and pushes it with insecure: true. Returns each model's manifest digest as the
 * registry reports it (Docker-Content-Digest): what a deployment pins. Models already there are not pushed again.
 */
export async function publishToRegistry(
  ollamaBin: string,
  registryHost: string,
  models: { name: string; gguf: string }[],
  dir: string,
): Promise<Record<string, string>> {
  const manifestDigest = async (name: string): Promise<string | null> => {
    const [repo, tag] = name.split(':');
    const head = await fetch(`http://${registryHost}/v2/library/${repo}/manifests/${tag ?? 'latest'}`, {
      method: 'HEAD',
      headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
    });
    return head.ok ? head.headers.get('docker-content-digest') : null;
  };
  const digests: Record<string, string> = {};
  const todo: typeof models = [];
  for (const m of models) {
    const d = await manifestDigest(m.name);
    if (d) digests[m.name] = d;
    else todo.push(m);
  }
  if (todo.length === 0) return digests;
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const child = spawn(ollamaBin, ['serve'], {
    env: { ...process.env, OLLAMA_HOST: `127.0.0.1:${port}`, OLLAMA_MODELS: path.join(dir, 'publisher') },
    stdio: 'ignore',
  });
  try {
    await until(() => answers(`${base}/api/version`), 30_000, 'the publishing Ollama');
    for (const m of todo) {
      const full = `${registryHost}/library/${m.name}`;
      await createOllamaModel(base, full, m.gguf);
      const r = await fetch(`${base}/api/push`, {
        method: 'POST',
        body: JSON.stringify({ model: full, insecure: true, stream: false }),
      });
      if (!r.ok) throw new Error(`push ${full}: HTTP ${r.status} ${await r.text()}`);
      const d = await manifestDigest(m.name);
      if (!d) throw new Error(`registry has no manifest for ${full} after the push`);
      digests[m.name] = d;
    }
    return digests;
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
}
