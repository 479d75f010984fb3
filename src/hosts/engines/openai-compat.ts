/**
 * Clients for engines that speak the OpenAI-compatible API: vLLM and llama.cpp `llama-server`. They share /health,
 * /v1/models, /v1/completions, /v1/chat/completions and Prometheus /metrics; each adds its own version source and
 * metric names.
 */
import { EngineHttpError, errorDetail, HttpEngineClient, readSse, type CallOptions } from './http';

/** Result of GET /health. */
export interface EngineHealth {
  /** 200: the engine is ready to serve. */
  ok: boolean;
  /** 503 with a "loading" message: the model is still being loaded (llama-server). */
  loading: boolean;
  status: number;
  /** The engine's own words when not ok. */
  detail: string;
}

/** One sample from a Prometheus text exposition. */
export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Parse Prometheus text format (version 0.0.4): `name{label="v",...} value [timestamp]` lines; # comments skipped.
 * Label values may contain escaped quotes and commas.
 */
export function parsePrometheusText(text: string): PromSample[] {
  const out: PromSample[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line);
    if (!m?.[1] || m[4] === undefined) continue;
    const labels: Record<string, string> = {};
    if (m[3]) {
      for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        if (l[1]) labels[l[1]] = (l[2] ?? '').replace(/\\(["\\n])/g, (_, c: string) => (c === 'n' ? '\n' : c));
      }
    }
    const v = m[4];
    const value = v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v);
    out.push({ name: m[1], labels, value });
  }
  return out;
}

/** Sum of every sample named `name` (across label sets), or null when the metric is absent. */
export function metricSum(samples: readonly PromSample[], name: string): number | null {
  let found = false;
  let sum = 0;
  for (const s of samples) {
    if (s.name === name) {
      found = true;
      sum += s.value;
    }
  }
  return found ? sum : null;
}

/**
 * Largest value among every sample named `name`, or null when the metric is absent. For gauges that are fractions of
 * a per-engine pool (KV cache usage): adding them across engines would report a pool more than 100% full.
 */
export function metricMax(samples: readonly PromSample[], name: string): number | null {
  let max: number | null = null;
  for (const s of samples) {
    if (s.name === name && !Number.isNaN(s.value)) max = max === null ? s.value : Math.max(max, s.value);
  }
  return max;
}

/** The handful of engine metrics gpuops reads; null where the engine does not export one. */
export interface EngineMetrics {
  requestsRunning: number | null;
  requestsWaiting: number | null;
  /**
   * KV cache usage, 0..1. With several engines behind one server (vLLM data parallel) the fullest engine's: that is
   * the one that starts queueing and preempting first, which an average would hide.
   */
  kvCacheUsage: number | null;
  promptTokensTotal: number | null;
  generationTokensTotal: number | null;
  samples: PromSample[];
}

/** One entry of GET /v1/models. */
export interface OpenAiModelEntry {
  id: string;
  /** vLLM: the context length it serves. */
  max_model_len?: number;
  /** llama-server: facts of the loaded GGUF (size in bytes, parameter count, training context). */
  meta?: { size?: number; n_params?: number; n_ctx_train?: number; [k: string]: unknown };
  /**
   * llama-server router mode (started without a model, or with `--models-dir` / `--models-preset`): where the model
   * is. `value` is "loaded", "loading", "unloaded", "sleeping" or "downloading"; a single-model server has no status.
   */
  status?: { value?: string; args?: string[]; failed?: boolean; exit_code?: number; [k: string]: unknown };
  [key: string]: unknown;
}

/**
 * The ids of the models an OpenAI-compatible server holds in memory, in listing order. An entry without `status`
 * (vLLM, a single-model llama-server) is served as listed; a llama-server router entry only when its status says
 * "loaded": "sleeping" and "unloaded" models would be loaded (seconds to minutes, VRAM moving) by the next request.
 */
export function loadedModelIds(entries: readonly OpenAiModelEntry[]): string[] {
  return entries
    .filter((m) => {
      const s = m.status;
      if (s === undefined || s === null) return true;
      return typeof s === 'object' && s.value === 'loaded';
    })
    .map((m) => m.id);
}

/** Body of POST /v1/completions. */
export interface CompletionRequest {
  model: string;
  prompt: string;
  max_tokens?: number;
  temperature?: number;
  stop?: string[];
  [key: string]: unknown;
}

/** Body of POST /v1/chat/completions. */
export interface ChatRequest {
  model: string;
  messages: { role: 'system' | 'user' | 'assistant'; content: string }[];
  max_tokens?: number;
  temperature?: number;
  [key: string]: unknown;
}

/** Response of /v1/completions. */
export interface CompletionResponse {
  id?: string;
  model?: string;
  choices: { index?: number; text: string; finish_reason?: string | null }[];
  usage?: { prompt_tokens?: number; completion_tokens?: number; total_tokens?: number };
}

/** Response of /v1/chat/completions. */
export interface ChatResponse {
  id?: string;
  model?: string;
  choices: { index?: number; message: { role: string; content: string | null }; finish_reason?: string | null }[];
  usage?: { prompt_tokens?: number; completion_tokens?: number; total_tokens?: number };
}

/** The shared OpenAI-compatible surface. */
export class OpenAiCompatClient extends HttpEngineClient {
  /** GET /health; reachability failures reject, every HTTP answer resolves. */
  async health(opts?: CallOptions): Promise<EngineHealth> {
    const res = await this.request('/health', opts ?? {});
    const body = await res.text();
    if (res.ok) return { ok: true, loading: false, status: res.status, detail: '' };
    const detail = errorDetail(body);
    // llama-server answers 503 {"error":{"code":503,"message":"Loading model",...}} (older: {"status":"loading model"}).
    const loading = res.status === 503 && /loading/i.test(`${detail} ${body}`);
    return { ok: false, loading, status: res.status, detail };
  }

  /** GET /v1/models → model ids. */
  async models(opts?: CallOptions): Promise<string[]> {
    return (await this.modelEntries(opts)).map((m) => m.id);
  }

  /** GET /v1/models → the entries, with what each engine adds (vLLM max_model_len, llama-server meta). */
  async modelEntries(opts?: CallOptions): Promise<OpenAiModelEntry[]> {
    const r = await this.json<{ data?: OpenAiModelEntry[] }>('/v1/models', opts);
    return r.data ?? [];
  }

  /** GET /metrics parsed. */
  async metricsSamples(opts?: CallOptions): Promise<PromSample[]> {
    return parsePrometheusText(await this.text('/metrics', opts));
  }

  /** POST /v1/completions (non-streaming). */
  async completion(req: CompletionRequest, opts?: CallOptions): Promise<CompletionResponse> {
    return this.json<CompletionResponse>('/v1/completions', { ...opts, body: { ...req, stream: false } });
  }

  /** POST /v1/chat/completions (non-streaming). */
  async chat(req: ChatRequest, opts?: CallOptions): Promise<ChatResponse> {
    return this.json<ChatResponse>('/v1/chat/completions', { ...opts, body: { ...req, stream: false } });
  }

  /** POST /v1/chat/completions streaming (SSE); returns the text and time to first token. */
  async chatStream(
    req: ChatRequest,
    opts: CallOptions & { onToken?: (t: string) => void } = {},
  ): Promise<{ text: string; firstTokenMs: number | null; totalMs: number }> {
    const started = performance.now();
    const res = await this.request('/v1/chat/completions', { ...opts, body: { ...req, stream: true } });
    if (!res.ok)
      throw new EngineHttpError(`${this.baseUrl}/v1/chat/completions`, res.status, errorDetail(await res.text()));
    let text = '';
    let firstTokenMs: number | null = null;
    await readSse(res, (v) => {
      const chunk = v as { choices?: { delta?: { content?: string | null } }[] };
      const t = chunk.choices?.[0]?.delta?.content ?? '';
      if (t) {
        firstTokenMs ??= performance.now() - started;
        text += t;
        opts.onToken?.(t);
      }
    });
    return { text, firstTokenMs, totalMs: performance.now() - started };
  }
}

/** vLLM's OpenAI-compatible server. */
export class VllmClient extends OpenAiCompatClient {
  /** GET /version → "0.6.3.post1". */
  async version(opts?: CallOptions): Promise<string> {
    return (await this.json<{ version?: string }>('/version', opts)).version ?? '';
  }

  /** Key vLLM metrics; the KV gauge was renamed from gpu_cache_usage_perc to kv_cache_usage_perc in the V1 engine. */
  async metrics(opts?: CallOptions): Promise<EngineMetrics> {
    return vllmMetrics(await this.metricsSamples(opts));
  }
}

/**
 * EngineMetrics from vLLM samples. vLLM V1 labels every sample with its `engine` (one per data-parallel rank):
 * request and token counts add up across engines, the KV cache fraction does not (see {@link metricMax}).
 */
export function vllmMetrics(samples: PromSample[]): EngineMetrics {
  return {
    requestsRunning: metricSum(samples, 'vllm:num_requests_running'),
    requestsWaiting: metricSum(samples, 'vllm:num_requests_waiting'),
    kvCacheUsage: metricMax(samples, 'vllm:kv_cache_usage_perc') ?? metricMax(samples, 'vllm:gpu_cache_usage_perc'),
    promptTokensTotal: metricSum(samples, 'vllm:prompt_tokens_total'),
    generationTokensTotal: metricSum(samples, 'vllm:generation_tokens_total'),
    samples,
  };
}

/** GET /props of llama-server (the parts gpuops reads). */
export interface LlamaCppProps {
  build_info?: string;
  model_path?: string;
  total_slots?: number;
  default_generation_settings?: { n_ctx?: number; [k: string]: unknown };
  [key: string]: unknown;
}

/** llama.cpp's `llama-server`. */
export class LlamaCppClient extends OpenAiCompatClient {
  /** GET /props. */
  async props(opts?: CallOptions): Promise<LlamaCppProps> {
    return this.json<LlamaCppProps>('/props', opts);
  }

  /** The build string from /props ("b4568-1a2b3c4d"), or "" when the server does not say. */
  async version(opts?: CallOptions): Promise<string> {
    return (await this.props(opts)).build_info ?? '';
  }

  /** GET /slots: one object per parallel slot (served unless llama-server runs with `--no-slots`). */
  async slots(opts?: CallOptions): Promise<unknown> {
    return this.json<unknown>('/slots', opts);
  }

  /**
   * Key llama-server metrics (served only with --metrics). Builds that no longer export a KV cache gauge get the KV
   * usage from /slots instead, when that endpoint answers.
   */
  async metrics(opts?: CallOptions): Promise<EngineMetrics> {
    const samples = await this.metricsSamples(opts);
    if (samples.some((s) => s.name === 'llamacpp:kv_cache_usage_ratio')) return llamaCppMetrics(samples);
    const slots = await this.slots(opts).catch(() => undefined);
    return llamaCppMetrics(samples, slots);
  }
}

/**
 * KV cache usage from llama-server's GET /slots: tokens held in every slot's cache over every slot's context.
 * `n_prompt_tokens` is the slot's cached sequence (prompt and generated tokens, kept after the request ends, as the
 * cache is); a slot that never ran a task holds none. Null when a slot that ran a task does not say (builds before
 * the field) or the answer is not a slot list. With a unified KV cache (`--kv-unified`) each slot reports the whole
 * context, so this under-reports; it never over-reports.
 */
export function llamaCppSlotsKvUsage(slots: unknown): number | null {
  if (!Array.isArray(slots) || slots.length === 0) return null;
  let held = 0;
  let room = 0;
  for (const raw of slots) {
    if (typeof raw !== 'object' || raw === null) return null;
    const slot = raw as { n_ctx?: unknown; n_prompt_tokens?: unknown; id_task?: unknown };
    if (typeof slot.n_ctx !== 'number' || slot.n_ctx <= 0) return null;
    room += slot.n_ctx;
    if (typeof slot.n_prompt_tokens === 'number') held += slot.n_prompt_tokens;
    else if (slot.id_task !== undefined) return null;
  }
  return Math.min(1, held / room);
}

/**
 * EngineMetrics from llama-server samples. `llamacpp:kv_cache_usage_ratio` (and `kv_cache_tokens`) were removed
 * upstream when the KV cache API was reworked (2025); current builds export throughput counters,
 * `requests_processing`/`requests_deferred`, `n_decode_total`, `n_busy_slots_per_decode` and `n_tokens_max`. The
 * last is a high-water mark of one sequence's length that never decreases, so it is no usage figure and is not read
 * as one: without the old gauge, KV usage comes from /slots ({@link llamaCppSlotsKvUsage}) or stays null.
 */
export function llamaCppMetrics(samples: PromSample[], slots?: unknown): EngineMetrics {
  return {
    requestsRunning: metricSum(samples, 'llamacpp:requests_processing'),
    requestsWaiting: metricSum(samples, 'llamacpp:requests_deferred'),
    kvCacheUsage: metricMax(samples, 'llamacpp:kv_cache_usage_ratio') ?? llamaCppSlotsKvUsage(slots),
    promptTokensTotal: metricSum(samples, 'llamacpp:prompt_tokens_total'),
    generationTokensTotal: metricSum(samples, 'llamacpp:tokens_predicted_total'),
    samples,
  };
}
