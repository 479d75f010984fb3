/**
 * Engine API parsers against real answers (see the SOURCES.md files under test/fixtures/{vllm,llamacpp,ollama}/real):
 * vLLM /metrics across versions and data-parallel engines, llama-server /metrics without the KV gauge and router
 * mode's /v1/models, and Ollama's tags/ps across versions.
 */
import type { EngineConfig } from '../../src/config/schema';
import {
  LlamaCppClient,
  llamaCppMetrics,
  llamaCppSlotsKvUsage,
  loadedModelIds,
  parseOllamaPs,
  parseOllamaTags,
  parsePrometheusText,
  probeEngine,
  vllmMetrics,
  type OpenAiModelEntry,
} from '../../src/hosts/engines';
import { fixture, sendJson, startServer } from './fakes';

const metricsOf = (rel: string) => parsePrometheusText(fixture(rel));

function llamacpp(url: string, over: Partial<EngineConfig> = {}): EngineConfig {
  return {
    name: 'llama-router',
    type: 'llamacpp',
    url,
    container: 'llama',
    gpus: [],
    runtime: 'docker',
    ...over,
  } as EngineConfig;
}

/**
 * One llama-server slot as `server_slot::to_json` writes it (tools/server): `n_prompt_tokens` is the slot's cached
 * sequence; a slot that never ran a task has neither `id_task` nor `n_prompt_tokens`.
 */
const slot = (over: Record<string, unknown>) => ({
  id: 0,
  n_ctx: 4096,
  speculative: false,
  is_processing: false,
  ...over,
});

describe('vLLM /metrics', () => {
  it('reads the V1 engine of 0.7 (gpu_cache_usage_perc, model_name only)', () => {
    expect(vllmMetrics(metricsOf('vllm/real/metrics-v0.7-production-stack-318.txt'))).toMatchObject({
      requestsRunning: 0,
      requestsWaiting: 0,
      kvCacheUsage: 0,
    });
  });

  it('reads 0.10 with the engine label and kv_cache_usage_perc in exponent notation', () => {
    const m = vllmMetrics(metricsOf('vllm/real/metrics-v0.10.0-engine0-production-stack-617.txt'));
    expect(m.kvCacheUsage).toBeCloseTo(9.75010481363281e-6, 12);
    expect(m.requestsRunning).toBeNull();
  });

  it('takes the fullest engine under data parallel instead of summing past 100%', () => {
    const m = vllmMetrics(metricsOf('vllm/real/metrics-dp-two-engines-dgx-spark.txt'));
    expect(m.kvCacheUsage).toBe(0.6);
    // Counts still add up across engines.
    expect(m.generationTokensTotal).toBe(60456);
    const legacy = vllmMetrics(
      parsePrometheusText(
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.7\nvllm:gpu_cache_usage_perc{engine="1",model_name="m"} 0.9\n',
      ),
    );
    expect(legacy.kvCacheUsage).toBe(0.9);
  });
});

describe('llama-server /metrics', () => {
  it('reads a current build, which exports no KV cache gauge (null, not n_tokens_max)', () => {
    const samples = metricsOf('llamacpp/real/metrics-2025-no-kv-gauge.txt');
    expect(llamaCppMetrics(samples)).toMatchObject({
      requestsRunning: 0,
      requestsWaiting: 0,
      kvCacheUsage: null,
      promptTokensTotal: 33065,
      generationTokensTotal: 7801,
    });
    const withMax = parsePrometheusText(
      `${fixture('llamacpp/real/metrics-2025-no-kv-gauge.txt')}llamacpp:n_tokens_max 42094\n`,
    );
    expect(llamaCppMetrics(withMax).kvCacheUsage).toBeNull();
  });

  it('derives KV usage from /slots when the gauge is gone', () => {
    const slots = [slot({ id: 0, id_task: 7, n_prompt_tokens: 1024 }), slot({ id: 1 })];
    expect(llamaCppSlotsKvUsage(slots)).toBe(0.125);
    expect(llamaCppMetrics(metricsOf('llamacpp/real/metrics-2025-no-kv-gauge.txt'), slots).kvCacheUsage).toBe(0.125);
    // A build that ran a task but does not report the cached tokens cannot say.
    expect(llamaCppSlotsKvUsage([slot({ id_task: 3 })])).toBeNull();
    expect(llamaCppSlotsKvUsage({ error: { code: 501 } })).toBeNull();
  });

  it('keeps the old kv_cache_usage_ratio gauge working', () => {
    expect(llamaCppMetrics(metricsOf('llamacpp/metrics.txt')).kvCacheUsage).toBe(0.21875);
  });

  it('asks /slots only when /metrics has no KV gauge', async () => {
    const server = await startServer((req, res) => {
      if (req.url === '/metrics') return void res.end(fixture('llamacpp/real/metrics-2025-no-kv-gauge.txt'));
      if (req.url === '/slots')
        return sendJson(res, 200, [slot({ id_task: 1, n_prompt_tokens: 2048 }), slot({ id: 1 })]);
      return sendJson(res, 404, { error: { code: 404, message: 'File Not Found' } });
    });
    try {
      expect((await new LlamaCppClient(server.url).metrics()).kvCacheUsage).toBe(0.25);
      expect(server.requests.map((r) => r.url)).toEqual(['/metrics', '/slots']);
    } finally {
      await server.close();
    }
  });
});

describe('llama-server router mode /v1/models', () => {
  const readme = (JSON.parse(fixture('llamacpp/real/router-models-readme.json')) as { data: OpenAiModelEntry[] }).data;
  const unloaded = (
    JSON.parse(fixture('llamacpp/real/router-models-decision-unloaded-readme.json')) as { data: OpenAiModelEntry[] }
  ).data;
  const statuses = JSON.parse(
    fixture('llamacpp/real/router-status-objects-readme.json'),
  ) as OpenAiModelEntry['status'][];

  it('counts only status "loaded" (or no status: a single-model server) as loaded', () => {
    expect(loadedModelIds([...unloaded, ...readme])).toEqual(['ggml-org/gemma-3-4b-it-GGUF:Q4_K_M']);
    const listing = statuses.map((status, i) => ({ id: `m${i}`, status }));
    expect(loadedModelIds(listing)).toEqual(['m3']);
    expect(loadedModelIds(JSON.parse(fixture('llamacpp/models.json')).data as OpenAiModelEntry[])).toEqual([
      'qwen2.5-coder-7b-instruct-q5_k_m.gguf',
    ]);
  });

  it('probes a router without cold-loading: loaded lists only loaded models and the test generation uses one', async () => {
    const server = await startServer((req, res) => {
      if (req.url === '/health') return sendJson(res, 200, { status: 'ok' });
      if (req.url === '/v1/models') return sendJson(res, 200, { object: 'list', data: [...unloaded, ...readme] });
      if (req.url === '/props') return sendJson(res, 200, { role: 'router', build_info: 'b7400-abc' });
      if (req.url === '/v1/completions') return sendJson(res, 200, { choices: [{ text: 'OK' }] });
      return sendJson(res, 404, { error: { code: 404, message: 'File Not Found' } });
    });
    try {
      const p = await probeEngine(llamacpp(server.url), { generate: true, timeoutMs: 2000 });
      expect(p.models).toEqual(['my-decision-model', 'ggml-org/gemma-3-4b-it-GGUF:Q4_K_M']);
      expect(p.loaded).toEqual(['ggml-org/gemma-3-4b-it-GGUF:Q4_K_M']);
      expect(p.generation?.ok).toBe(true);
      const gen = server.requests.find((r) => r.url === '/v1/completions');
      expect(JSON.parse(gen?.body ?? '{}')).toMatchObject({ model: 'ggml-org/gemma-3-4b-it-GGUF:Q4_K_M' });
    } finally {
      await server.close();
    }
  });

  it('skips the generation when the router has nothing loaded, even for a configured probe model', async () => {
    const server = await startServer((req, res) => {
      if (req.url === '/health') return sendJson(res, 200, { status: 'ok' });
      if (req.url === '/v1/models') return sendJson(res, 200, { object: 'list', data: unloaded });
      return sendJson(res, 404, { error: { code: 404, message: 'File Not Found' } });
    });
    try {
      const p = await probeEngine(llamacpp(server.url, { probeModel: 'my-decision-model' }), {
        generate: true,
        timeoutMs: 2000,
      });
      expect(p).toMatchObject({ healthy: true, loaded: [], generation: null });
      expect(server.requests.some((r) => r.url === '/v1/completions')).toBe(false);
    } finally {
      await server.close();
    }
  });
});

describe('Ollama /api/tags and /api/ps', () => {
  it('reads a real ps answer (gemma3, fully in VRAM)', () => {
    expect(parseOllamaPs(JSON.parse(fixture('ollama/real/ps-gemma3-2025-08.json')))).toEqual([
      expect.objectContaining({ name: 'gemma3:latest', size: 5964735424, size_vram: 5964735424 }),
    ]);
    expect(parseOllamaPs(JSON.parse(fixture('ollama/real/ps-docs-api.json')))[0]).toMatchObject({
      model: 'mistral:latest',
      expires_at: '2024-06-04T14:38:31.83753-07:00',
    });
  });

  it('fills model from name for the older tags answer and size_vram 0 where a 100% CPU model omits it', () => {
    expect(
      parseOllamaTags(JSON.parse(fixture('ollama/real/tags-docs-api-old.json'))).map((m) => [m.name, m.model]),
    ).toEqual([
      ['codellama:13b', 'codellama:13b'],
      ['llama3:latest', 'llama3:latest'],
    ]);
    const cpuOnly = { models: [{ name: 'llama3:latest', model: 'llama3:latest', size: 5137025024, digest: 'x' }] };
    expect(parseOllamaPs(cpuOnly)[0]?.size_vram).toBe(0);
    expect(parseOllamaTags({ models: null })).toEqual([]);
  });
});
