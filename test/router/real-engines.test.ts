/**
 * The router in front of a real llama-server and a real Ollama (from `npm run engines`, serving the tiny GGUF test
 * model): streams reach the client as the engine sent them, multi-byte characters split across chunks survive, a
 * client that goes away stops the engine's generation, and the router's metrics add up for real streams.
 *
 * The tiny model answers any prompt with one fixed sentence (greedy, temperature 0), so direct and routed streams of
 * the same request carry the same tokens; only per-response ids, clocks and prompt-cache figures differ.
 */
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { startRouter, type RouterHandle } from '../../src/router';
import { startLlamaServer, startOllama, stopEngines, type EngineProc } from '../helpers/engine-procs';
import { engineTools, realTest } from '../helpers/real-engines';

jest.setTimeout(60_000);

const itReal = realTest(['llamaServer', 'ollama']);
const tools = engineTools();
const available = !!(tools.llamaServer && tools.ollama && tools.models.v1);
const OLLAMA_MODEL = 'gpuops-tiny:v1';

let llama: EngineProc;
let ollama: EngineProc;
let router: RouterHandle;
const relays: Relay[] = [];

beforeAll(async () => {
  if (!available) return;
  [llama, ollama] = await Promise.all([
    // --context-shift lets a generation run past the 256-token slot context, so an unbounded one lasts until stopped.
    startLlamaServer(tools.llamaServer!, tools.models.v1!, [
      '-c',
      '512',
      '-np',
      '2',
      '--metrics',
      '--slots',
      '--context-shift',
    ]),
    startOllama(tools.ollama!, [{ name: OLLAMA_MODEL, gguf: tools.models.v1! }]),
  ]);
  // Load Ollama's model once, so no test's timing includes the cold load.
  await post(`${ollama.url}/api/generate`, { model: OLLAMA_MODEL, prompt: 'hi', stream: false });
  router = await startRouter({
    port: 0,
    initialRoutes: {
      routes: {
        'tiny-llama': variant(llama.url, 'llamacpp', 'gpuops-tiny-v1.gguf'),
        'tiny-ollama': variant(ollama.url, 'ollama', OLLAMA_MODEL),
      },
    },
  });
}, 60_000);

afterAll(async () => {
  await router?.close();
  await Promise.all(relays.map((r) => r.close()));
  await stopEngines();
});

function variant(engine: string, engineType: 'ollama' | 'llamacpp', model: string) {
  return { variants: [{ name: 'stable', engine, engineType, model, weight: 100 }] };
}

function post(url: string, body: unknown, signal?: AbortSignal): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    ...(signal ? { signal } : {}),
  });
}

interface Got {
  status: number;
  type: string | null;
  bytes: Buffer;
  /** performance.now() when the first body chunk arrived. */
  firstAt: number;
  sentAt: number;
}

async function send(url: string, body: unknown): Promise<Got> {
  const sentAt = performance.now();
  const res = await post(url, body);
  const chunks: Buffer[] = [];
  let firstAt = 0;
  for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
    if (chunks.length === 0) firstAt = performance.now();
    chunks.push(Buffer.from(c));
  }
  return { status: res.status, type: res.headers.get('content-type'), bytes: Buffer.concat(chunks), firstAt, sentAt };
}

type Framing = 'sse' | 'ndjson';

/** The JSON payloads of a stream, with a check that the framing is exactly SSE `data:` events or NDJSON lines. */
function payloads(bytes: Buffer, framing: Framing): Record<string, unknown>[] {
  const text = bytes.toString('utf8');
  if (framing === 'sse') {
    expect(text.endsWith('data: [DONE]\n\n')).toBe(true);
    const events = text.slice(0, -'\n\n'.length).split('\n\n');
    for (const e of events) expect(e).toMatch(/^data: \S/);
    expect(events.filter((e) => e === 'data: [DONE]')).toHaveLength(1);
    return events.slice(0, -1).map((e) => JSON.parse(e.slice('data: '.length)) as Record<string, unknown>);
  }
  expect(text.endsWith('}\n')).toBe(true);
  const lines = text.slice(0, -1).split('\n');
  const objs = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  expect(objs.slice(0, -1).every((o) => o.done === false)).toBe(true);
  expect(objs.at(-1)?.done).toBe(true);
  return objs;
}

/** The generated text pieces in stream order (what a client renders). */
function pieces(objs: Record<string, unknown>[]): string[] {
  return objs.flatMap((o) => {
    const choice = (o.choices as Record<string, unknown>[] | undefined)?.[0];
    const delta = choice?.delta as { content?: unknown } | undefined;
    const message = o.message as { content?: unknown } | undefined;
    const c = delta?.content ?? choice?.text ?? message?.content ?? o.response;
    return typeof c === 'string' && c !== '' ? [c] : [];
  });
}

/** What differs between two answers to the same request by design: ids, clocks, timings, prompt-cache hits. */
function mask(bytes: Buffer): string {
  return bytes
    .toString('utf8')
    .replace(/"(id|created_at)":"[^"]*"/g, '"$1":"*"')
    .replace(/"(created|\w+_duration|cached_tokens)":\d+/g, '"$1":0')
    .replace(/"timings":\{[^}]*\}/g, '"timings":{}');
}

/** Engine-reported output tokens of a stream (usage, eval_count, llama.cpp timings), else its content chunks. */
function engineTokens(objs: Record<string, unknown>[]): number {
  let reported: number | undefined;
  let predicted: number | undefined;
  for (const o of objs) {
    const usage = o.usage as { completion_tokens?: number } | undefined;
    reported = usage?.completion_tokens ?? (o.eval_count as number | undefined) ?? reported;
    predicted = (o.timings as { predicted_n?: number } | undefined)?.predicted_n ?? predicted;
  }
  return reported ?? predicted ?? pieces(objs).length;
}

/** The OpenAI-style chat request of the cases, to either engine: 24 greedy tokens, streamed. */
const OPENAI_CHAT = {
  messages: [{ role: 'user', content: 'hello there' }],
  max_tokens: 24,
  temperature: 0,
  seed: 1,
  stream: true,
};

const cases: { name: string; alias: string; path: string; body: Record<string, unknown>; framing: Framing }[] = [
  {
    name: 'llama-server OpenAI chat (SSE)',
    alias: 'tiny-llama',
    path: '/v1/chat/completions',
    body: OPENAI_CHAT,
    framing: 'sse',
  },
  {
    name: 'llama-server OpenAI completion with usage (SSE)',
    alias: 'tiny-llama',
    path: '/v1/completions',
    body: { prompt: 'hello there', max_tokens: 24, temperature: 0, seed: 1, stream: true },
    framing: 'sse',
  },
  {
    name: 'Ollama /api/chat (NDJSON)',
    alias: 'tiny-ollama',
    path: '/api/chat',
    body: {
      messages: [{ role: 'user', content: 'hello there' }],
      options: { temperature: 0, seed: 1, num_predict: 24 },
    },
    framing: 'ndjson',
  },
  {
    name: 'Ollama /api/generate (NDJSON)',
    alias: 'tiny-ollama',
    path: '/api/generate',
    body: { prompt: 'hello there', options: { temperature: 0, seed: 1, num_predict: 24 } },
    framing: 'ndjson',
  },
  {
    name: 'Ollama OpenAI-compatible chat (SSE, usage chunk)',
    alias: 'tiny-ollama',
    path: '/v1/chat/completions',
    body: { ...OPENAI_CHAT, stream_options: { include_usage: true } },
    framing: 'sse',
  },
];

const engineUrl = (alias: string): string => (alias === 'tiny-llama' ? llama.url : ollama.url);
const engineModel = (alias: string): string => (alias === 'tiny-llama' ? 'gpuops-tiny-v1.gguf' : OLLAMA_MODEL);

describe.each(cases)('$name', ({ alias, path, body, framing }) => {
  itReal('is deterministic direct, and reaches the client through the router with the same bytes', async () => {
    const direct = { ...body, model: engineModel(alias) };
    const a = await send(`${engineUrl(alias)}${path}`, direct);
    const b = await send(`${engineUrl(alias)}${path}`, direct);
    expect(a.status).toBe(200);
    const tokens = pieces(payloads(a.bytes, framing));
    expect(tokens.length).toBeGreaterThan(5);
    // The premise of the byte comparison: the engine gives the same answer to the same request.
    expect(pieces(payloads(b.bytes, framing))).toEqual(tokens);
    expect(mask(b.bytes)).toBe(mask(a.bytes));

    const routed = await send(`${router.url}${path}`, { ...body, model: alias });
    expect(routed.status).toBe(200);
    expect(routed.type).toBe(a.type);
    const objs = payloads(routed.bytes, framing);
    expect(pieces(objs)).toEqual(tokens);
    expect(mask(routed.bytes)).toBe(mask(a.bytes));
    // The engine saw the variant's model, not the alias: its answers name the model it serves.
    expect(routed.bytes.toString('utf8')).not.toContain(`"model":"${alias}"`);
  });
});

/**
 * A relay between router and engine that forwards the engine's answer re-chunked: every multi-byte UTF-8 sequence is
 * cut after its lead byte, each piece written on its own a moment apart, so the router reads characters in halves.
 * With `rawInvalid`, each U+FFFD the engine put in place of an invalid byte is sent as a truncated sequence (E2 82),
 * as an engine that does not sanitise its output would send it.
 */
interface Relay {
  url: string;
  /** Exactly the bytes the relay sent for the last request. */
  sent: Buffer;
  /** Multi-byte sequences it cut in two. */
  cuts: number;
  /** Why it broke off an answer, if it did. */
  error?: unknown;
  close(): Promise<void>;
}

async function relay(target: string, rawInvalid = false): Promise<Relay> {
  const r: Relay = { url: '', sent: Buffer.alloc(0), cuts: 0, close: () => Promise.resolve() };
  const server = http.createServer({ noDelay: true }, (req, res) => {
    const body: Buffer[] = [];
    req.on('data', (c: Buffer) => body.push(c));
    req.on('end', () => {
      void (async () => {
        const up = await fetch(`${target}${req.url ?? '/'}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: Buffer.concat(body),
        });
        res.writeHead(up.status, { 'content-type': up.headers.get('content-type') ?? 'application/octet-stream' });
        res.flushHeaders();
        const sent: Buffer[] = [];
        r.cuts = 0;
        for await (const c of up.body as unknown as AsyncIterable<Uint8Array>) {
          let chunk: Buffer = Buffer.from(c);
          if (rawInvalid) chunk = replaceAll(chunk, Buffer.from([0xef, 0xbf, 0xbd]), Buffer.from([0xe2, 0x82]));
          let from = 0;
          for (let i = 0; i < chunk.length; i++) {
            if ((chunk[i]! & 0xc0) !== 0xc0) continue; // not a lead byte
            const piece = chunk.subarray(from, i + 1);
            res.write(piece);
            sent.push(piece);
            from = i + 1;
            r.cuts += 1;
            await sleep(2);
          }
          res.write(chunk.subarray(from));
          sent.push(chunk.subarray(from));
        }
        r.sent = Buffer.concat(sent);
        res.end();
      })().catch((err: unknown) => {
        r.error = err;
        res.destroy();
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  r.url = `http://127.0.0.1:${addr && typeof addr === 'object' ? addr.port : 0}`;
  r.close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  relays.push(r);
  return r;
}

function replaceAll(buf: Buffer, find: Buffer, by: Buffer): Buffer {
  const parts: Buffer[] = [];
  let from = 0;
  for (let i = buf.indexOf(find); i >= 0; i = buf.indexOf(find, from)) {
    parts.push(buf.subarray(from, i), by);
    from = i + find.length;
  }
  parts.push(buf.subarray(from));
  return Buffer.concat(parts);
}

/** A grammar forcing 2-, 3- and 4-byte characters, which the tiny model can only spell with single-byte tokens. */
const MULTIBYTE_GRAMMAR = 'root ::= ("é€😀 ")+';
/** llama.cpp token id of the byte 0x82: a lone continuation byte, invalid UTF-8, which the engine sends as U+FFFD. */
const LONE_CONTINUATION_BYTE = 3 + 0x82;

const utf8Cases: {
  name: string;
  alias: string;
  path: string;
  body: Record<string, unknown>;
  framing: Framing;
  rawInvalid: boolean;
}[] = [
  {
    name: 'llama-server SSE of 2-4 byte characters spelled in byte tokens',
    alias: 'utf8-llama',
    path: '/v1/chat/completions',
    body: { messages: [{ role: 'user', content: 'hi' }], max_tokens: 40, temperature: 0, stream: true },
    framing: 'sse',
    rawInvalid: false,
  },
  {
    name: 'llama-server SSE of invalid bytes (U+FFFD), with usage',
    alias: 'utf8-llama-invalid',
    path: '/v1/chat/completions',
    body: {
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      logit_bias: { [LONE_CONTINUATION_BYTE]: 100 },
    },
    framing: 'sse',
    rawInvalid: false,
  },
  {
    name: 'llama-server SSE with raw truncated sequences on the wire',
    alias: 'utf8-llama-raw',
    path: '/v1/completions',
    body: { prompt: 'hi', max_tokens: 12, temperature: 0, stream: true, logit_bias: [[LONE_CONTINUATION_BYTE, 100]] },
    framing: 'sse',
    rawInvalid: true,
  },
  {
    name: 'Ollama NDJSON of 2-4 byte characters (format enum)',
    alias: 'utf8-ollama',
    path: '/api/chat',
    body: {
      messages: [{ role: 'user', content: 'hi' }],
      format: { type: 'string', enum: ['é€😀 é€😀'] },
      options: { temperature: 0, seed: 1, num_predict: 30 },
    },
    framing: 'ndjson',
    rawInvalid: false,
  },
];

describe.each(utf8Cases)('multi-byte characters split across chunks: $name', (c) => {
  itReal('pass through unchanged and are counted as the engine counts them', async () => {
    const grammar = c.alias === 'utf8-llama' ? { grammar: MULTIBYTE_GRAMMAR } : {};
    const ollamaEngine = c.alias === 'utf8-ollama';
    const r = await relay(ollamaEngine ? ollama.url : llama.url, c.rawInvalid);
    const alias = c.alias;
    const model = ollamaEngine ? OLLAMA_MODEL : 'gpuops-tiny-v1.gguf';
    const own = await startRouter({
      port: 0,
      initialRoutes: { routes: { [alias]: variant(r.url, ollamaEngine ? 'ollama' : 'llamacpp', model) } },
    });
    try {
      const got = await send(`${own.url}${c.path}`, { ...c.body, ...grammar, model: alias }).catch((err: unknown) => {
        throw new Error(`${String(err)}; relay: ${String(r.error)}`);
      });
      expect(got.status).toBe(200);
      expect(r.cuts).toBeGreaterThan(3);
      // Byte for byte what the relay sent, halves of characters and all.
      expect(got.bytes.equals(r.sent)).toBe(true);
      const objs = payloads(got.bytes, c.framing);
      const text = pieces(objs).join('');
      if (c.alias === 'utf8-llama' || ollamaEngine) expect(text).toMatch(/é€😀 é/);
      else expect(text).toMatch(/^\ufffd{3,}$/);
      await sleep(20);
      const s = own.stats.query(alias, 60_000).variants.stable!;
      expect(s.outcomes).toEqual({ ok: 1 });
      expect(s.outputTokens).toBe(engineTokens(objs));
      // The byte-token case generates more tokens than characters: the count is the engine's, not the chunks'.
      if (c.alias === 'utf8-llama') expect(s.outputTokens).toBeGreaterThan(pieces(objs).length);
    } finally {
      await own.close();
    }
  });
});

interface Slot {
  id: number;
  is_processing: boolean;
}

async function slots(): Promise<boolean[]> {
  return ((await (await fetch(`${llama.url}/slots`)).json()) as Slot[]).map((s) => s.is_processing);
}

async function engineGauge(name: string): Promise<number> {
  const text = await (await fetch(`${llama.url}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  if (!m) throw new Error(`${name} not in llama-server /metrics`);
  return Number(m[1]);
}

async function until(what: string, check: () => Promise<boolean>, ms: number, everyMs = 25): Promise<number> {
  const t0 = performance.now();
  while (!(await check())) {
    if (performance.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(everyMs);
  }
  return performance.now() - t0;
}

describe('a client that disconnects stops the engine', () => {
  // Unbounded in practice: ~100k tokens at a few thousand a second is half a minute of generation if nobody stops it.
  const long = {
    messages: [{ role: 'user', content: 'Write the longest story you can.' }],
    max_tokens: 100_000,
    ignore_eos: true,
    temperature: 0,
  };

  itReal.each([
    { mode: 'mid-stream', stream: true },
    { mode: 'while the router waits for a non-streaming answer', stream: false },
  ])('$mode: the slot stops, requests_processing drops to 0, the router counts a client abort', async ({ stream }) => {
    await until('idle engine', async () => (await slots()).every((p) => !p), 5_000);
    const before = await engineGauge('llamacpp:tokens_predicted_total');
    const aborts = (): number => router.stats.query('tiny-llama', 600_000).variants.stable?.outcomes.client_abort ?? 0;
    const abortsBefore = aborts();
    const ac = new AbortController();
    const res = post(`${router.url}/v1/chat/completions`, { ...long, stream, model: 'tiny-llama' }, ac.signal);
    if (stream) {
      const r = await res;
      expect(r.status).toBe(200);
      const reader = r.body!.getReader();
      for (let n = 0; n < 3; n++) await reader.read();
    }
    await until('a slot processing', async () => (await slots()).some((p) => p), 5_000);
    expect(await engineGauge('llamacpp:requests_processing')).toBe(1);
    await sleep(200);
    ac.abort();
    await res.then(
      () => undefined,
      () => undefined,
    );
    // A streaming slot stops at its next write. A non-streaming one looks at its connection only after a second in
    // which no task of the server produced a result, and every /slots or /metrics call is such a task: poll slowly.
    const everyMs = stream ? 25 : 1_200;
    if (!stream) await sleep(everyMs);
    await until('every slot idle', async () => (await slots()).every((p) => !p), 4_000, everyMs);
    expect(await engineGauge('llamacpp:requests_processing')).toBe(0);
    const generated = (await engineGauge('llamacpp:tokens_predicted_total')) - before;
    await sleep(300);
    // Stopped for good, long before the 100k tokens it was asked for.
    expect((await engineGauge('llamacpp:tokens_predicted_total')) - before).toBe(generated);
    expect(generated).toBeLessThan(50_000);
    // The router counts it as the client's doing, not as an error of the variant.
    expect(aborts()).toBe(abortsBefore + 1);
    expect(router.stats.query('tiny-llama', 600_000).variants.stable!.errors).toBe(0);
  });
});

describe('router metrics for real streams', () => {
  itReal('count requests, time to first token and output tokens as the engines report them', async () => {
    const own = await startRouter({
      port: 0,
      initialRoutes: {
        routes: {
          'tiny-llama': variant(llama.url, 'llamacpp', 'gpuops-tiny-v1.gguf'),
          'tiny-ollama': variant(ollama.url, 'ollama', OLLAMA_MODEL),
        },
      },
    });
    try {
      const runs: { alias: string; tokens: number; clientTtftMs: number; totalMs: number }[] = [];
      for (const c of cases) {
        const t0 = performance.now();
        const got = await send(`${own.url}${c.path}`, { ...c.body, model: c.alias });
        const objs = payloads(got.bytes, c.framing);
        runs.push({
          alias: c.alias,
          tokens: engineTokens(objs),
          clientTtftMs: got.firstAt - got.sentAt,
          totalMs: performance.now() - t0,
        });
      }
      await sleep(20);
      const text = await (await fetch(`${own.url}/metrics`)).text();
      const value = (name: string, alias: string): number => {
        const re = new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`, 'gm');
        let sum = 0;
        for (const m of text.matchAll(re)) if (m[1]!.includes(`alias="${alias}"`)) sum += Number(m[2]);
        return sum;
      };
      for (const alias of ['tiny-llama', 'tiny-ollama']) {
        const mine = runs.filter((r) => r.alias === alias);
        expect(value('gpuops_router_requests_total', alias)).toBe(mine.length);
        expect(text).toMatch(
          new RegExp(`gpuops_router_requests_total\\{alias="${alias}",variant="stable",outcome="ok"\\}`),
        );
        expect(value('gpuops_router_errors_total', alias)).toBe(0);
        expect(value('gpuops_router_time_to_first_token_seconds_count', alias)).toBe(mine.length);
        expect(value('gpuops_router_output_tokens_total', alias)).toBe(mine.reduce((n, r) => n + r.tokens, 0));
        const ttftSum = value('gpuops_router_time_to_first_token_seconds_sum', alias);
        const durSum = value('gpuops_router_request_duration_seconds_sum', alias);
        expect(ttftSum).toBeGreaterThan(0);
        // The first byte comes before the end, and the router sees it no later than its client does.
        expect(ttftSum).toBeLessThan(durSum);
        expect(ttftSum * 1000).toBeLessThanOrEqual(mine.reduce((n, r) => n + r.clientTtftMs, 0) + 5);
        expect(durSum * 1000).toBeLessThanOrEqual(mine.reduce((n, r) => n + r.totalMs, 0) + 5);
        expect(value('gpuops_router_output_tokens_per_second_count', alias)).toBe(mine.length);
        expect(value('gpuops_router_inflight_requests', alias)).toBe(0);
      }
      const s = own.stats.query('tiny-ollama', 60_000).variants.stable!;
      expect(s.ttftMs.p50).toBeGreaterThan(0);
      expect(s.tokensPerSecond.mean).toBeGreaterThan(0);
    } finally {
      await own.close();
    }
  });
});
