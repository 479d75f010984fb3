/** Shared helpers for the router tests: programmable loopback upstreams, temp dirs, token files, a seeded PRNG. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { RouteTableInput } from '../../src/router';
import { mulberry32 } from '../../src/sandbox/prng';
import { registerSecret } from '../helpers/secrets';

export interface SeenRequest {
  method: string;
  path: string;
  body: string;
  headers: http.IncomingHttpHeaders;
}

export interface Fixture {
  url: string;
  /** Requests the upstream received, in order. */
  seen: SeenRequest[];
  /** Responses whose connection closed before the handler finished (the client — the router — went away). */
  aborted: number;
  close(): Promise<void>;
}

export type FixtureHandler = (req: SeenRequest, res: http.ServerResponse) => void | Promise<void>;

/** A node:http upstream whose every answer a test scripts. */
export async function startFixture(handler: FixtureHandler): Promise<Fixture> {
  const sockets = new Set<Socket>();
  const fx: Fixture = { url: '', seen: [], aborted: 0, close: () => Promise.resolve() };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const seen = {
        method: req.method ?? 'GET',
        path: req.url ?? '/',
        body: Buffer.concat(chunks).toString('utf8'),
        headers: req.headers,
      };
      fx.seen.push(seen);
      res.on('close', () => {
        if (!res.writableFinished) fx.aborted += 1;
      });
      Promise.resolve(handler(seen, res)).catch(() => res.destroy());
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  fx.url = `http://127.0.0.1:${addr && typeof addr === 'object' ? addr.port : 0}`;
  fx.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return fx;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Write `chunks` one by one with `gapMs` between them, then end; stops quietly if the client goes away. */
export async function writeChunks(res: http.ServerResponse, chunks: (string | Buffer)[], gapMs: number): Promise<void> {
  for (const [i, c] of chunks.entries()) {
    if (i > 0) await sleep(gapMs);
    if (res.destroyed) return;
    res.write(c);
  }
  res.end();
}

/** An OpenAI-style SSE answer of `n` tokens, with usage in a final chunk. */
export function sseTokens(model: string, n: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const chunk = {
      id: 'c1',
      object: 'chat.completion.chunk',
      model,
      choices: [{ index: 0, delta: { content: `t${i} ` } }],
    };
    out.push(`data: ${JSON.stringify(chunk)}\n\n`);
  }
  const usage = { prompt_tokens: 3, completion_tokens: n, total_tokens: n + 3 };
  out.push(`data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', model, choices: [], usage })}\n\n`);
  out.push('data: [DONE]\n\n');
  return out;
}

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'gpuops-router-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Write an admin token file; returns its path. */
export function tokenFile(dir: string, token = 's3cret-token'): string {
  const p = path.join(dir, 'admin.token');
  writeFileSync(p, `${token}\n`, { mode: 0o600 });
  registerSecret({ name: 'router-admin-token', value: token, file: p });
  return p;
}

/** Deterministic uniform [0, 1) generator (the sandbox's mulberry32). */
export const seeded = mulberry32;

/** A two-variant route for `alias` (stable and canary, OpenAI engines unless given). */
export function canaryRoute(
  stable: { engine: string; model: string; weight: number; engineType?: 'ollama' | 'vllm' | 'llamacpp' },
  canary: { engine: string; model: string; weight: number; engineType?: 'ollama' | 'vllm' | 'llamacpp' },
  stickyHeader?: string,
): RouteTableInput['routes'][string] {
  return {
    variants: [
      { name: 'stable', engineType: 'vllm', ...stable },
      { name: 'canary', engineType: 'vllm', ...canary },
    ],
    ...(stickyHeader ? { stickyHeader } : {}),
  };
}

/** POST JSON and return status, headers and body text. */
export async function postJson(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Headers; text: string }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}
