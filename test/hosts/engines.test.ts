import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ServerResponse } from 'node:http';
import { EngineSchema, type EngineConfig } from '../../src/config/schema';
import {
  EngineHttpError,
  LlamaCppClient,
  llamaCppMetrics,
  OllamaClient,
  parsePrometheusText,
  probeEngine,
  VllmClient,
  vllmMetrics,
  type PullProgress,
} from '../../src/hosts/engines';
import { fixture, sendJson, startServer, type TestServer } from './fakes';

function engine(over: Partial<EngineConfig> & Pick<EngineConfig, 'type' | 'url'>): EngineConfig {
  return EngineSchema.parse({ name: `${over.type}-1`, container: over.type, ...over });
}

/** An Ollama that answers from fixtures; `hangGenerate` accepts /api/generate and never answers. */
async function fakeOllama(opts: { hangGenerate?: boolean } = {}): Promise<TestServer> {
  return startServer((req, res) => {
    const body = req.body ? (JSON.parse(req.body) as Record<string, unknown>) : {};
    switch (`${req.method} ${req.url}`) {
      case 'GET /api/version':
        return sendJson(res, 200, fixture('ollama/version.json'));
      case 'GET /api/tags':
        return sendJson(res, 200, fixture('ollama/tags.json'));
      case 'GET /api/ps':
        return sendJson(res, 200, fixture('ollama/ps.json'));
      case 'POST /api/show':
        return body.model === 'qwen2.5:7b-instruct-q4_K_M'
          ? sendJson(res, 200, fixture('ollama/show.json'))
          : sendJson(res, 404, { error: `model '${String(body.model)}' not found` });
      case 'POST /api/pull': {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        const lines = fixture(
          body.model === 'nope:1b' ? 'ollama/pull-error.ndjson' : 'ollama/pull-stream.ndjson',
        ).split('\n');
        // Dribble the stream out line by line, as Ollama does.
        let i = 0;
        const t = setInterval(() => {
          const line = lines[i++];
          if (line === undefined) {
            clearInterval(t);
            res.end();
          } else if (line !== '') res.write(`${line}\n`);
        }, 2);
        return;
      }
      case 'POST /api/generate': {
        if (body.keep_alive === 0 && body.prompt === undefined) {
          return body.model === 'ghost:1b'
            ? sendJson(res, 404, { error: "model 'ghost:1b' not found" })
            : sendJson(res, 200, fixture('ollama/unload.json'));
        }
        if (opts.hangGenerate) return; // accept and never answer: a wedged engine
        if (body.stream === false) return sendJson(res, 200, fixture('ollama/generate.json'));
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        return res.end(fixture('ollama/generate-stream.ndjson'));
      }
      case 'POST /api/chat':
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        return res.end(fixture('ollama/chat-stream.ndjson'));
      case 'DELETE /api/delete':
        return body.model === 'llama3.2:latest'
          ? sendJson(res, 200, '')
          : sendJson(res, 404, { error: "model 'x' not found" });
      default:
        return sendJson(res, 404, { error: 'not found' });
    }
  });
}

describe('OllamaClient', () => {
  let server: TestServer;
  let client: OllamaClient;
  beforeAll(async () => {
    server = await fakeOllama();
    client = new OllamaClient(`${server.url}/`);
  });
  afterAll(() => server.close());

  it('reads version, tags, ps and show', async () => {
    expect(await client.version()).toBe('0.5.7');
    expect((await client.tags()).map((m) => m.name)).toEqual(['qwen2.5:7b-instruct-q4_K_M', 'llama3.2:latest']);
    const [loaded] = await client.ps();
    expect(loaded).toMatchObject({ name: 'qwen2.5:7b-instruct-q4_K_M', size_vram: 6251290624 });
    const show = await client.show('qwen2.5:7b-instruct-q4_K_M');
    expect(show.model_info?.['qwen2.context_length']).toBe(32768);
    expect(show.capabilities).toEqual(['completion', 'tools']);
  });

  it("raises the engine's own 404 text for an unknown model", async () => {
    const err = await client.show('nope:1b').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EngineHttpError);
    expect((err as EngineHttpError).status).toBe(404);
    expect((err as Error).message).toContain("model 'nope:1b' not found");
  });

  it('streams pull progress summed over layers and resolves on success', async () => {
    const seen: PullProgress[] = [];
    const r = await client.pull('qwen2.5:7b-instruct-q4_K_M', { onProgress: (p) => seen.push(p) });
    expect(r).toEqual({ status: 'success', totalBytes: 4683073184 + 68 + 1482 + 11343 + 487 });
    expect(seen.map((p) => p.status)[0]).toBe('pulling manifest');
    const mid = seen.find((p) => p.line.completed === 1171268296);
    expect(mid).toMatchObject({ completedBytes: 1171268296, totalBytes: 4683073184 });
    expect(seen.at(-1)?.completedBytes).toBe(seen.at(-1)?.totalBytes);
    expect(JSON.parse(server.requests.at(-1)?.body ?? '{}')).toEqual({
      model: 'qwen2.5:7b-instruct-q4_K_M',
      stream: true,
    });
  });

  it('rejects a pull whose stream carries an error line', async () => {
    await expect(client.pull('nope:1b')).rejects.toThrow('pull model manifest: file does not exist');
  });

  it("aborts a pull on the caller's signal", async () => {
    const ac = new AbortController();
    const seen: PullProgress[] = [];
    const p = client.pull('qwen2.5:7b-instruct-q4_K_M', {
      signal: ac.signal,
      onProgress: (x) => {
        seen.push(x);
        ac.abort();
      },
    });
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    expect(seen).toHaveLength(1);
  });

  it('generates without streaming and with streaming (text joined, time to first token measured)', async () => {
    const one = await client.generate({
      model: 'qwen2.5:7b-instruct-q4_K_M',
      prompt: 'Reply with OK.',
      options: { num_predict: 2 },
    });
    expect(one).toMatchObject({ response: 'OK', done: true, eval_count: 2 });
    expect(JSON.parse(server.requests.at(-1)?.body ?? '{}')).toMatchObject({
      stream: false,
      options: { num_predict: 2 },
    });

    const tokens: string[] = [];
    const s = await client.generateStream(
      { model: 'qwen2.5:7b-instruct-q4_K_M', prompt: 'Sky?' },
      { onToken: (t) => tokens.push(t) },
    );
    expect(s.text).toBe('The sky is blue');
    expect(tokens).toEqual(['The', ' sky', ' is', ' blue']);
    expect(s.final).toMatchObject({ done: true, done_reason: 'length', eval_count: 4 });
    expect(s.firstTokenMs).not.toBeNull();
  });

  it('streams chat', async () => {
    const s = await client.chatStream({
      model: 'qwen2.5:7b-instruct-q4_K_M',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(s.text).toBe('Hello!');
    expect(s.final.done_reason).toBe('stop');
  });

  it('unloads with keep_alive 0 and treats an unknown model as already unloaded', async () => {
    await client.unload('qwen2.5:7b-instruct-q4_K_M');
    expect(JSON.parse(server.requests.at(-1)?.body ?? '{}')).toEqual({
      model: 'qwen2.5:7b-instruct-q4_K_M',
      keep_alive: 0,
    });
    await expect(client.unload('ghost:1b')).resolves.toBeUndefined();
  });

  it('deletes, and reports an already-deleted model as false', async () => {
    await expect(client.delete('llama3.2:latest')).resolves.toBe(true);
    expect(server.requests.at(-1)?.method).toBe('DELETE');
    await expect(client.delete('gone:1b')).resolves.toBe(false);
  });
});

describe('OpenAI-compatible clients', () => {
  it.each([
    {
      what: 'vLLM metrics, including the pre-V1 KV cache gauge name',
      read: vllmMetrics,
      file: 'vllm/metrics.txt',
      gauges: { requestsRunning: 3, requestsWaiting: 1, kvCacheUsage: 0.4172 },
      counters: { promptTokensTotal: 1284431, generationTokensTotal: 402117 },
    },
    {
      what: 'llama-server metrics',
      read: llamaCppMetrics,
      file: 'llamacpp/metrics.txt',
      gauges: { requestsRunning: 2, requestsWaiting: 0, kvCacheUsage: 0.21875 },
      counters: { promptTokensTotal: 88213, generationTokensTotal: 30918 },
    },
  ])('parses $what', ({ read, file, gauges, counters }) => {
    expect(read(parsePrometheusText(fixture(file)))).toMatchObject({ ...gauges, ...counters });
  });

  it('parses Prometheus labels with escapes and +Inf buckets', () => {
    const s = parsePrometheusText('x_bucket{le="+Inf",path="/a\\"b,c"} 7\nx_bucket{le="+Inf"} +Inf 1700000000\n');
    expect(s).toEqual([
      { name: 'x_bucket', labels: { le: '+Inf', path: '/a"b,c' }, value: 7 },
      { name: 'x_bucket', labels: { le: '+Inf' }, value: Infinity },
    ]);
  });

  it('reads llama-server health: 503 "Loading model" is loading, 200 is ok', async () => {
    let loading = true;
    const server = await startServer((req, res) =>
      loading
        ? sendJson(res, 503, fixture('llamacpp/health-loading.json'))
        : sendJson(res, 200, fixture('llamacpp/health-ok.json')),
    );
    try {
      const c = new LlamaCppClient(server.url);
      expect(await c.health()).toEqual({ ok: false, loading: true, status: 503, detail: 'Loading model' });
      loading = false;
      expect(await c.health()).toEqual({ ok: true, loading: false, status: 200, detail: '' });
    } finally {
      await server.close();
    }
  });

  it('sends the vLLM API key from its file as a bearer token, read at call time', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-key-'));
    const keyFile = path.join(dir, 'vllm.key');
    writeFileSync(keyFile, 'sk-first\n');
    const server = await startServer((req, res) =>
      req.headers.authorization === 'Bearer sk-second'
        ? sendJson(res, 200, fixture('vllm/models.json'))
        : sendJson(res, 401, { error: 'Unauthorized' }),
    );
    try {
      const c = new VllmClient(server.url, { apiKeyFile: keyFile });
      const err = await c.models().catch((e: unknown) => e);
      expect((err as EngineHttpError).status).toBe(401);
      expect((err as Error).message).not.toContain('sk-first');
      writeFileSync(keyFile, 'sk-second\n');
      expect(await c.models()).toEqual(['Qwen/Qwen2.5-7B-Instruct']);
    } finally {
      await server.close();
    }
  });
});

describe('probeEngine', () => {
  it('reports a healthy Ollama with version, models, loaded models and a passing test generation', async () => {
    const server = await fakeOllama();
    try {
      const p = await probeEngine(engine({ type: 'ollama', url: server.url }), { generate: true, timeoutMs: 2000 });
      expect(p).toMatchObject({
        name: 'ollama-1',
        reachable: true,
        healthy: true,
        loading: false,
        version: '0.5.7',
        models: ['qwen2.5:7b-instruct-q4_K_M', 'llama3.2:latest'],
        loaded: ['qwen2.5:7b-instruct-q4_K_M'],
        error: null,
      });
      expect(p.generation).toMatchObject({ ok: true, error: null });
      // The test generation uses the loaded model and asks for a couple of tokens only.
      const gen = server.requests.find((r) => r.url === '/api/generate');
      expect(JSON.parse(gen?.body ?? '{}')).toMatchObject({
        model: 'qwen2.5:7b-instruct-q4_K_M',
        stream: false,
        options: { num_predict: 2 },
      });
    } finally {
      await server.close();
    }
  });

  it('catches an engine that answers health but hangs on generation, within the timeout', async () => {
    const server = await fakeOllama({ hangGenerate: true });
    try {
      const started = Date.now();
      const p = await probeEngine(engine({ type: 'ollama', url: server.url }), {
        generate: true,
        timeoutMs: 2000,
        generateTimeoutMs: 1200,
      });
      const took = Date.now() - started;
      expect(p.healthy).toBe(true);
      expect(p.generation?.ok).toBe(false);
      expect(p.generation?.error).toBe('timed out after 1200 ms');
      expect(p.generation?.ms).toBeGreaterThanOrEqual(1100);
      expect(took).toBeLessThan(5000);
    } finally {
      await server.close();
    }
  });

  /** An Ollama answering version, tags (after `tagsDelayMs`) and ps from fixtures, and generations with `generate`. */
  const ollamaFromFixtures = (opts: { tagsDelayMs?: number; generate: (res: ServerResponse) => void }) =>
    startServer((req, res) => {
      switch (`${req.method} ${req.url}`) {
        case 'GET /api/version':
          return sendJson(res, 200, fixture('ollama/version.json'));
        case 'GET /api/tags':
          setTimeout(() => sendJson(res, 200, fixture('ollama/tags.json')), opts.tagsDelayMs ?? 0);
          return;
        case 'GET /api/ps':
          return sendJson(res, 200, fixture('ollama/ps.json'));
        default:
          return opts.generate(res);
      }
    });

  it('keeps every call and the generation inside an overall deadline, each cut to what is left', async () => {
    // Listing models takes 600 ms and the generation never answers: per-call timeouts alone (5 s each) would hold
    // the probe for 5.6 s; a 3 s deadline ends it at 3 s. (The calls get half of it, 1.5 s: room for a loaded box.)
    // The generation: accepted, never answered.
    const server = await ollamaFromFixtures({ tagsDelayMs: 600, generate: () => undefined });
    try {
      const started = Date.now();
      const p = await probeEngine(engine({ type: 'ollama', url: server.url }), {
        generate: true,
        timeoutMs: 5000,
        generateTimeoutMs: 5000,
        deadline: started + 3000,
      });
      const took = Date.now() - started;
      expect({ healthy: p.healthy, error: p.error }).toEqual({ healthy: true, error: null });
      expect(p.generation?.ok).toBe(false);
      expect(p.generation?.ms).toBeLessThan(2600);
      expect(took).toBeGreaterThanOrEqual(2900);
      expect(took).toBeLessThan(4500);
    } finally {
      await server.close();
    }
  });

  /**
   * A llama-server client whose calls take the given ms; one that honours its timeout rejects as a fetch timeout
   * would, else it answers late whatever the timeout said.
   */
  function slowLlamaCpp(ms: { version?: number; models?: number; completion: number }, honourTimeouts = true) {
    const answer = <T>(took: number, value: T, timeoutMs?: number): Promise<T> =>
      new Promise((resolve, reject) => {
        if (honourTimeouts && timeoutMs !== undefined && timeoutMs < took) {
          setTimeout(() => reject(Object.assign(new Error('timed out'), { name: 'TimeoutError' })), timeoutMs);
        } else setTimeout(() => resolve(value), took);
      });
    const client = {
      health: () => Promise.resolve({ ok: true, loading: false, status: 200, detail: '' }),
      modelEntries: (o?: { timeoutMs?: number }) => answer(ms.models ?? 0, [{ id: 'tiny' }], o?.timeoutMs),
      version: (o?: { timeoutMs?: number }) => answer(ms.version ?? 0, 'b4000', o?.timeoutMs),
      completion: (_r: unknown, o?: { timeoutMs?: number }) => answer(ms.completion, {}, o?.timeoutMs),
    } as unknown as LlamaCppClient;
    return { type: 'llamacpp' as const, client };
  }

  it('a slow /version never eats the generation: the calls end by the deadline less the generation deadline', async () => {
    // /version takes 3 s, the generation 200 ms of its 500: sequential calls cut only to the deadline left the
    // generation a millisecond, and a busy healthy engine read as hung.
    const started = Date.now();
    const p = await probeEngine(
      engine({ type: 'llamacpp', url: 'http://127.0.0.1:1' }),
      { generate: true, timeoutMs: 3000, generateTimeoutMs: 500, deadline: started + 1500 },
      slowLlamaCpp({ version: 3000, completion: 200 }),
    );
    expect(p).toMatchObject({ healthy: true, version: null, models: ['tiny'] });
    expect(p.generation).toMatchObject({ ok: true, error: null });
    expect(Date.now() - started).toBeLessThan(1500);
  });

  it('cuts calls to whole milliseconds whatever the deadline (half an odd one is a fraction timers refuse)', async () => {
    const server = await ollamaFromFixtures({ generate: (res) => sendJson(res, 200, { response: 'OK', done: true }) });
    try {
      for (const span of [1001, 1002, 1003]) {
        const p = await probeEngine(engine({ type: 'ollama', url: server.url }), {
          generate: true,
          timeoutMs: 5000,
          generateTimeoutMs: 5000,
          deadline: Date.now() + span,
        });
        expect({ span, healthy: p.healthy, error: p.error }).toEqual({ span, healthy: true, error: null });
      }
    } finally {
      await server.close();
    }
  });

  it('a generation left less than its share of the deadline is skipped, not failed', async () => {
    // /v1/models answers after 1.2 s (later than its cut: a slow engine): 300 ms are left of the 500 ms the
    // generation asked for, and a failure in that time would restart a healthy engine.
    const p = await probeEngine(
      engine({ type: 'llamacpp', url: 'http://127.0.0.1:1' }),
      { generate: true, timeoutMs: 3000, generateTimeoutMs: 500, deadline: Date.now() + 1500 },
      slowLlamaCpp({ models: 1200, completion: 400 }, false),
    );
    expect(p.healthy).toBe(true);
    expect(p.generation).toMatchObject({ ok: false, ms: 0, skipped: true });
    expect(p.generation?.error).toMatch(/^only \d+ ms of the probe's deadline left, the generation's share is 500 ms$/);
  });

  it('reports a loading llama-server as reachable, not healthy, loading', async () => {
    const server = await startServer((req, res) => sendJson(res, 503, fixture('llamacpp/health-loading.json')));
    try {
      const p = await probeEngine(engine({ type: 'llamacpp', url: server.url }), { generate: true, timeoutMs: 1000 });
      expect(p).toMatchObject({
        reachable: true,
        healthy: false,
        loading: true,
        generation: null,
        error: 'loading: Loading model',
      });
    } finally {
      await server.close();
    }
  });

  it('probes vLLM: health, models as loaded, version and a max_tokens completion', async () => {
    const server = await startServer((req, res) => {
      if (req.url === '/health') return void res.end();
      if (req.url === '/v1/models') return sendJson(res, 200, fixture('vllm/models.json'));
      if (req.url === '/version') return sendJson(res, 200, fixture('vllm/version.json'));
      if (req.url === '/v1/completions') return sendJson(res, 200, fixture('vllm/completion.json'));
      return sendJson(res, 404, { detail: 'Not Found' });
    });
    try {
      const p = await probeEngine(engine({ type: 'vllm', url: server.url }), { generate: true, timeoutMs: 1000 });
      expect(p).toMatchObject({
        healthy: true,
        version: '0.6.6',
        models: ['Qwen/Qwen2.5-7B-Instruct'],
        loaded: ['Qwen/Qwen2.5-7B-Instruct'],
      });
      expect(p.generation?.ok).toBe(true);
      const body = JSON.parse(server.requests.find((r) => r.url === '/v1/completions')?.body ?? '{}') as Record<
        string,
        unknown
      >;
      expect(body).toMatchObject({ model: 'Qwen/Qwen2.5-7B-Instruct', max_tokens: 2, stream: false });
    } finally {
      await server.close();
    }
  });

  it('reports an unreachable engine without throwing', async () => {
    const server = await startServer((_req, res) => res.end());
    const url = server.url;
    await server.close();
    const p = await probeEngine(engine({ type: 'vllm', url }), { generate: true, timeoutMs: 1000 });
    expect(p).toMatchObject({ reachable: false, healthy: false, generation: null });
    expect(p.error).toMatch(/ECONNREFUSED/);
  });

  it('skips the test generation when no model is loaded and none is configured', async () => {
    const server = await startServer((req, res) => {
      if (req.url === '/api/version') return sendJson(res, 200, { version: '0.5.7' });
      return sendJson(res, 200, { models: [] });
    });
    try {
      const p = await probeEngine(engine({ type: 'ollama', url: server.url }), { generate: true, timeoutMs: 1000 });
      expect(p.healthy).toBe(true);
      expect(p.generation).toBeNull();
      expect(server.requests.some((r) => r.url === '/api/generate')).toBe(false);
    } finally {
      await server.close();
    }
  });
});
