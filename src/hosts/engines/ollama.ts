/**
 * Client for the Ollama HTTP API (/api/version, tags, ps, show, pull, generate, chat, delete). Model pulls stream
 * NDJSON progress; Ollama keeps partial blobs on disk, so calling pull again after an interruption resumes it.
 */
import { EngineHttpError, errorDetail, HttpEngineClient, readNdjson, type CallOptions } from './http';

/** Model details as Ollama reports them in tags, ps and show. */
export interface OllamaModelDetails {
  parent_model?: string;
  format?: string;
  family?: string;
  families?: string[] | null;
  parameter_size?: string;
  quantization_level?: string;
}

/** One local model (GET /api/tags). */
export interface OllamaModel {
  name: string;
  model: string;
  modified_at: string;
  size: number;
  digest: string;
  details?: OllamaModelDetails;
}

/** One model loaded in memory (GET /api/ps). */
export interface OllamaRunningModel {
  name: string;
  model: string;
  size: number;
  digest: string;
  details?: OllamaModelDetails;
  expires_at: string;
  /** Bytes of the model in VRAM; less than `size` means part of it runs on the CPU. */
  size_vram: number;
  context_length?: number;
}

/** POST /api/show. */
export interface OllamaShow {
  /** The model's license text, when its manifest carries one. */
  license?: string;
  modelfile?: string;
  parameters?: string;
  template?: string;
  details?: OllamaModelDetails;
  model_info?: Record<string, unknown>;
  capabilities?: string[];
  modified_at?: string;
}

/** One line of the /api/pull progress stream. */
export interface OllamaPullLine {
  status: string;
  digest?: string;
  total?: number;
  completed?: number;
  error?: string;
}

/** Aggregate pull progress over all layers seen so far. */
export interface PullProgress {
  status: string;
  /** Bytes completed / total over every layer whose size Ollama has announced. */
  completedBytes: number;
  totalBytes: number;
  /** The line that caused this update. */
  line: OllamaPullLine;
}

/** Model options of a generation (Ollama `options`). */
export interface OllamaOptions {
  num_predict?: number;
  temperature?: number;
  seed?: number;
  num_ctx?: number;
  stop?: string[];
  [key: string]: unknown;
}

/** Body of POST /api/generate (stream is set by the method). */
export interface OllamaGenerateRequest {
  model: string;
  prompt: string;
  system?: string;
  options?: OllamaOptions;
  /** How long the model stays loaded afterwards ("5m", seconds, 0 to unload, negative to keep). */
  keep_alive?: string | number;
  raw?: boolean;
}

/** Final (or only) object of /api/generate. */
export interface OllamaGenerateResponse {
  model: string;
  created_at: string;
  response: string;
  done: boolean;
  done_reason?: string;
  total_duration?: number;
  load_duration?: number;
  prompt_eval_count?: number;
  prompt_eval_duration?: number;
  eval_count?: number;
  eval_duration?: number;
}

/** One chat message. */
export interface OllamaChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
}

/** Body of POST /api/chat (stream is set by the method). */
export interface OllamaChatRequest {
  model: string;
  messages: OllamaChatMessage[];
  options?: OllamaOptions;
  keep_alive?: string | number;
}

/** Final (or only) object of /api/chat. */
export interface OllamaChatResponse {
  model: string;
  created_at: string;
  message: OllamaChatMessage;
  done: boolean;
  done_reason?: string;
  total_duration?: number;
  load_duration?: number;
  prompt_eval_count?: number;
  eval_count?: number;
  eval_duration?: number;
}

/** A streamed generation's result: the concatenated text plus the final stats object and time to first token. */
export interface StreamedResult<T> {
  text: string;
  final: T;
  firstTokenMs: number | null;
  totalMs: number;
}

function modelList(body: unknown): Record<string, unknown>[] {
  const models = typeof body === 'object' && body !== null ? (body as { models?: unknown }).models : undefined;
  return (Array.isArray(models) ? models : []).filter(
    (m): m is Record<string, unknown> => typeof m === 'object' && m !== null && typeof m.name === 'string',
  );
}

/**
 * GET /api/tags → models. Ollama before 0.1.4x listed only `name` (no `model`); `models` is null with no models.
 */
export function parseOllamaTags(body: unknown): OllamaModel[] {
  return modelList(body).map((m) => ({ ...m, model: typeof m.model === 'string' ? m.model : m.name }) as OllamaModel);
}

/**
 * GET /api/ps → running models. Ollama 0.1.4x left `size_vram` out for a model held entirely in system RAM (100% CPU,
 * ollama/ollama#4840): that is 0 bytes in VRAM, not an unknown.
 */
export function parseOllamaPs(body: unknown): OllamaRunningModel[] {
  return modelList(body).map(
    (m) =>
      ({
        ...m,
        model: typeof m.model === 'string' ? m.model : m.name,
        size: typeof m.size === 'number' ? m.size : 0,
        size_vram: typeof m.size_vram === 'number' ? m.size_vram : 0,
      }) as OllamaRunningModel,
  );
}

/** Ollama model names compare with an implicit ":latest" tag. */
export function sameOllamaModel(a: string, b: string): boolean {
  const norm = (s: string): string => (s.includes(':') ? s : `${s}:latest`);
  return norm(a) === norm(b);
}

/** Folds pull lines into overall progress: Ollama reports totals per layer digest, not for the whole model. */
export class PullProgressTracker {
  private readonly layers = new Map<string, { total: number; completed: number }>();

  add(line: OllamaPullLine): PullProgress {
    if (line.digest && typeof line.total === 'number') {
      this.layers.set(line.digest, { total: line.total, completed: line.completed ?? 0 });
    }
    let completedBytes = 0;
    let totalBytes = 0;
    for (const l of this.layers.values()) {
      completedBytes += l.completed;
      totalBytes += l.total;
    }
    return { status: line.status, completedBytes, totalBytes, line };
  }
}

/** The Ollama API at one base URL (e.g. http://127.0.0.1:11434). */
export class OllamaClient extends HttpEngineClient {
  /** GET /api/version → "0.5.7". */
  async version(opts?: CallOptions): Promise<string> {
    const r = await this.json<{ version?: string }>('/api/version', opts);
    return r.version ?? '';
  }

  /** GET /api/tags: models on disk. */
  async tags(opts?: CallOptions): Promise<OllamaModel[]> {
    return parseOllamaTags(await this.json<unknown>('/api/tags', opts));
  }

  /** GET /api/ps: models loaded in memory. */
  async ps(opts?: CallOptions): Promise<OllamaRunningModel[]> {
    return parseOllamaPs(await this.json<unknown>('/api/ps', opts));
  }

  /** POST /api/show; a missing model is EngineHttpError with status 404. */
  async show(model: string, opts?: CallOptions): Promise<OllamaShow> {
    return this.json<OllamaShow>('/api/show', { ...opts, body: { model } });
  }

  /**
   * POST /api/pull, streaming. Resolves on the final "success" line; an `{"error": ...}` line rejects. Ollama resumes
   * partially downloaded blobs itself, so a retry after a crash or cancellation continues rather than restarts.
   */
  async pull(
    model: string,
    opts: CallOptions & { onProgress?: (p: PullProgress) => void; insecure?: boolean } = {},
  ): Promise<{ status: 'success'; totalBytes: number }> {
    // Pulls of large models take hours: no overall timeout unless the caller sets one; cancellation via signal.
    const res = await this.request('/api/pull', {
      body: { model, stream: true, ...(opts.insecure ? { insecure: true } : {}) },
      timeoutMs: opts.timeoutMs ?? 7 * 24 * 3600_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    if (!res.ok) throw new EngineHttpError(`${this.baseUrl}/api/pull`, res.status, errorDetail(await res.text()));
    const tracker = new PullProgressTracker();
    let last: PullProgress | undefined;
    await readNdjson(res, (v) => {
      const line = v as OllamaPullLine;
      if (typeof line.error === 'string') throw new EngineHttpError(`${this.baseUrl}/api/pull`, res.status, line.error);
      last = tracker.add(line);
      opts.onProgress?.(last);
    });
    if (last?.status !== 'success') {
      throw new Error(`pull of ${model} ended without "success" (last status: ${last?.status ?? 'none'})`);
    }
    return { status: 'success', totalBytes: last.totalBytes };
  }

  /** POST /api/generate without streaming. */
  async generate(req: OllamaGenerateRequest, opts?: CallOptions): Promise<OllamaGenerateResponse> {
    return this.json<OllamaGenerateResponse>('/api/generate', { ...opts, body: { ...req, stream: false } });
  }

  /** POST /api/generate streaming; `onToken` sees each fragment. The timeout covers the whole stream. */
  async generateStream(
    req: OllamaGenerateRequest,
    opts: CallOptions & { onToken?: (t: string) => void } = {},
  ): Promise<StreamedResult<OllamaGenerateResponse>> {
    return this.stream<OllamaGenerateResponse>(
      '/api/generate',
      { ...req, stream: true },
      (c) => c.response ?? '',
      opts,
    );
  }

  /** POST /api/chat without streaming. */
  async chat(req: OllamaChatRequest, opts?: CallOptions): Promise<OllamaChatResponse> {
    return this.json<OllamaChatResponse>('/api/chat', { ...opts, body: { ...req, stream: false } });
  }

  /** POST /api/chat streaming. */
  async chatStream(
    req: OllamaChatRequest,
    opts: CallOptions & { onToken?: (t: string) => void } = {},
  ): Promise<StreamedResult<OllamaChatResponse>> {
    return this.stream<OllamaChatResponse>(
      '/api/chat',
      { ...req, stream: true },
      (c) => c.message?.content ?? '',
      opts,
    );
  }

  private async stream<T extends { done: boolean }>(
    path: string,
    body: unknown,
    piece: (chunk: Partial<T> & { response?: string; message?: OllamaChatMessage }) => string,
    opts: CallOptions & { onToken?: (t: string) => void },
  ): Promise<StreamedResult<T>> {
    const started = performance.now();
    const res = await this.request(path, { ...opts, body });
    if (!res.ok) throw new EngineHttpError(`${this.baseUrl}${path}`, res.status, errorDetail(await res.text()));
    let text = '';
    let firstTokenMs: number | null = null;
    let final: T | undefined;
    await readNdjson(res, (v) => {
      const chunk = v as T & { error?: string; response?: string; message?: OllamaChatMessage };
      if (typeof chunk.error === 'string') throw new EngineHttpError(`${this.baseUrl}${path}`, res.status, chunk.error);
      const t = piece(chunk);
      if (t !== '') {
        firstTokenMs ??= performance.now() - started;
        text += t;
        opts.onToken?.(t);
      }
      if (chunk.done) final = chunk;
    });
    if (!final) throw new Error(`${this.baseUrl}${path} stream ended before done:true`);
    return { text, final, firstTokenMs, totalMs: performance.now() - started };
  }

  /**
   * Unload a model from memory: a generate with no prompt and keep_alive 0. Idempotent: unloading a model that is not
   * loaded, or does not exist, succeeds (either way it holds no VRAM afterwards).
   */
  async unload(model: string, opts?: CallOptions): Promise<void> {
    try {
      await this.json<OllamaGenerateResponse>('/api/generate', { ...opts, body: { model, keep_alive: 0 } });
    } catch (err) {
      if (err instanceof EngineHttpError && err.status === 404) return;
      throw err;
    }
  }

  /** DELETE /api/delete. Returns false when the model was already absent (404), so a retry is harmless. */
  async delete(model: string, opts?: CallOptions): Promise<boolean> {
    try {
      await this.json('/api/delete', { ...opts, method: 'DELETE', body: { model } });
      return true;
    } catch (err) {
      if (err instanceof EngineHttpError && err.status === 404) return false;
      throw err;
    }
  }
}
