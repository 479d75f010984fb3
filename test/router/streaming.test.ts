/**
 * Streams pass through the router unchanged and unbuffered, and a client that goes away takes the upstream request
 * with it. Byte equality is checked two ways: exactly, against an upstream replaying a recorded sandbox stream chunk
 * for chunk (so the engine's bytes are known); and structurally, direct vs routed against the live sandbox engine,
 * whose ids and timestamps differ per request by design.
 */
import { once } from 'node:events';
import http from 'node:http';
import { SandboxNode } from '../../src/sandbox/node';
import { startRouter, type RouterHandle } from '../../src/router';
import { nodeConfig } from '../sandbox/helpers';
import { startFixture, sleep, tempDir, writeChunks, type Fixture } from './helpers';

jest.setTimeout(30_000);

let sn: SandboxNode;
let cleanup: () => void;
let ollamaUrl: string;
let vllmUrl: string;

beforeAll(async () => {
  const t = tempDir();
  cleanup = t.cleanup;
  const node = await nodeConfig('router-node', [
    { type: 'ollama', name: 'ollama' },
    { type: 'vllm', name: 'vllm' },
  ]);
  sn = new SandboxNode({ node, stateDir: t.dir, bootSeconds: 0.1, timeScale: 0.1, engineLoadSeconds: 0.1 });
  await sn.start();
  await sn.waitFor((s) => s.engines.every((e) => e.listening), 10_000, 'engines to listen');
  ollamaUrl = sn.engineUrl('ollama');
  vllmUrl = sn.engineUrl('vllm');
});

afterAll(async () => {
  await sn.stop();
  cleanup();
});

/** Read a response body as the list of chunks the client received, with the time each arrived. */
async function readChunks(res: Response): Promise<{ chunks: Buffer[]; at: number[] }> {
  const chunks: Buffer[] = [];
  const at: number[] = [];
  const reader = res.body!.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(Buffer.from(value));
    at.push(performance.now());
  }
  return { chunks, at };
}

function post(url: string, body: unknown): Promise<Response> {
  return fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

/** Replays `chunks` (recorded from the sandbox) for every request, 5 ms apart, with the recorded content type. */
function replay(chunks: Buffer[], contentType: string): Promise<Fixture> {
  return startFixture(async (_req, res) => {
    res.writeHead(200, { 'content-type': contentType });
    await writeChunks(res, chunks, 5);
  });
}

async function routerTo(engine: string, engineType: 'ollama' | 'vllm', model: string): Promise<RouterHandle> {
  return startRouter({
    port: 0,
    initialRoutes: { routes: { chat: { variants: [{ name: 'stable', engine, engineType, model, weight: 100 }] } } },
  });
}

describe.each([
  {
    kind: 'OpenAI SSE',
    engine: () => vllmUrl,
    engineType: 'vllm' as const,
    model: 'Qwen/Qwen2.5-0.5B-Instruct',
    path: '/v1/chat/completions',
    body: {
      messages: [{ role: 'user', content: 'Tell me about GPUs' }],
      stream: true,
      stream_options: { include_usage: true },
    },
    type: 'text/event-stream',
  },
  {
    kind: 'Ollama NDJSON',
    engine: () => ollamaUrl,
    engineType: 'ollama' as const,
    model: 'qwen2.5:0.5b',
    path: '/api/chat',
    body: { messages: [{ role: 'user', content: 'Tell me about GPUs' }] },
    type: 'application/x-ndjson',
  },
])('$kind', ({ engine, engineType, model, path, body, type }) => {
  test('reaches the client byte-for-byte as the engine sent it, and the engine gets the rewritten model', async () => {
    const direct = await post(`${engine()}${path}`, { ...body, model });
    expect(direct.status).toBe(200);
    const recorded = await readChunks(direct);
    expect(recorded.chunks.length).toBeGreaterThan(3);
    const fx = await replay(recorded.chunks, direct.headers.get('content-type') ?? type);
    const router = await routerTo(fx.url, engineType, model);
    try {
      const routed = await post(`${router.url}${path}`, { ...body, model: 'chat' });
      expect(routed.status).toBe(200);
      expect(routed.headers.get('content-type')).toBe(direct.headers.get('content-type'));
      expect(routed.headers.get('x-gpuops-variant')).toBe('stable');
      const got = Buffer.concat((await readChunks(routed)).chunks);
      expect(got.equals(Buffer.concat(recorded.chunks))).toBe(true);
      // The only change to the request is the model name.
      expect(fx.seen).toHaveLength(1);
      expect(fx.seen[0]!.path).toBe(path);
      expect(JSON.parse(fx.seen[0]!.body)).toEqual({ ...body, model });
    } finally {
      await router.close();
      await fx.close();
    }
  });

  test('through the live sandbox engine matches a direct stream once per-request ids and clocks are masked', async () => {
    const router = await routerTo(engine(), engineType, model);
    try {
      const mask = (s: string): string =>
        s
          .replace(/"(created_at|id)":"[^"]*"/g, '"$1":"*"')
          .replace(/"(created|\w+_duration)":\d+/g, '"$1":0')
          .replace(/"context":\[[\d,]*\]/g, '"context":[]');
      const direct = await (await post(`${engine()}${path}`, { ...body, model })).text();
      const routed = await (await post(`${router.url}${path}`, { ...body, model: 'chat' })).text();
      expect(routed.length).toBeGreaterThan(100);
      expect(mask(routed)).toBe(mask(direct));
    } finally {
      await router.close();
    }
  });
});

test('streams unbuffered: the first chunk reaches the client while the engine is still generating', async () => {
  const fx = await startFixture(async (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    await writeChunks(res, ['data: {"choices":[{"delta":{"content":"a"}}]}\n\n', 'data: [DONE]\n\n'], 600);
  });
  const router = await routerTo(fx.url, 'vllm', 'm');
  try {
    const t0 = performance.now();
    const res = await post(`${router.url}/v1/chat/completions`, { model: 'chat', stream: true, messages: [] });
    const { chunks, at } = await readChunks(res);
    expect(chunks.length).toBeGreaterThanOrEqual(2);
    expect(at[0]! - t0).toBeLessThan(400);
    expect(at[at.length - 1]! - t0).toBeGreaterThanOrEqual(550);
  } finally {
    await router.close();
    await fx.close();
  }
});

test('a client that disconnects mid-stream aborts the upstream request and is not counted as an error', async () => {
  let upstreamClosed = false;
  const fx = await startFixture(async (_req, res) => {
    res.on('close', () => (upstreamClosed = true));
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    for (let i = 0; i < 200 && !res.destroyed; i++) {
      res.write(`${JSON.stringify({ message: { content: 'x' }, done: false })}\n`);
      await sleep(20);
    }
    res.end();
  });
  const router = await routerTo(fx.url, 'ollama', 'm');
  try {
    const ac = new AbortController();
    const res = await fetch(`${router.url}/api/chat`, {
      method: 'POST',
      body: JSON.stringify({ model: 'chat', messages: [] }),
      signal: ac.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    ac.abort();
    const deadline = Date.now() + 2000;
    while (!upstreamClosed && Date.now() < deadline) await sleep(20);
    expect(upstreamClosed).toBe(true);
    expect(fx.aborted).toBe(1);
    await sleep(50);
    const s = router.stats.query('chat', 60_000).variants.stable!;
    expect(s.outcomes).toEqual({ client_abort: 1 });
    expect(s.errors).toBe(0);
  } finally {
    await router.close();
    await fx.close();
  }
});

test('a client that stops reading pauses the engine (backpressure end to end), and then gets every byte', async () => {
  const CHUNK = Buffer.alloc(1 << 20, 'x');
  const TOTAL = 96;
  let written = 0;
  let finished = false;
  const fx = await startFixture(async (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    for (let i = 0; i < TOTAL && !res.destroyed; i++) {
      if (!res.write(CHUNK)) await once(res, 'drain');
      written += 1;
    }
    res.end();
    finished = true;
  });
  const router = await routerTo(fx.url, 'vllm', 'm');
  try {
    const body = JSON.stringify({ model: 'chat', messages: [] });
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const u = new URL(`${router.url}/v1/chat/completions`);
      const req = http.request(
        {
          host: u.hostname,
          port: u.port,
          path: u.pathname,
          method: 'POST',
          headers: { 'content-type': 'application/json' },
        },
        resolve,
      );
      req.once('error', reject);
      req.end(body);
    });
    res.pause();
    // Nothing is read: socket buffers on both hops fill, then the engine's writes stall (stay put for 500 ms) well
    // before the end. A router that kept reading into its own memory would let the engine finish instead.
    let last = -1;
    for (const deadline = Date.now() + 10_000; written !== last && !finished && Date.now() < deadline;) {
      last = written;
      await sleep(500);
    }
    expect(finished).toBe(false);
    expect(written).toBeLessThan(TOTAL / 2);
    let bytes = 0;
    res.on('data', (c: Buffer) => (bytes += c.length));
    res.resume();
    await once(res, 'end');
    expect(res.statusCode).toBe(200);
    expect(bytes).toBe(TOTAL * CHUNK.length);
    expect(finished).toBe(true);
    const s = router.stats.query('chat', 60_000).variants.stable!;
    expect(s.outcomes).toEqual({ ok: 1 });
  } finally {
    await router.close();
    await fx.close();
  }
});
