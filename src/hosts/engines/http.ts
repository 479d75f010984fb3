/**
 * HTTP plumbing shared by the engine clients: JSON calls with a hard timeout, the NDJSON and SSE stream readers (from
 * ../streams), and an API key read from its file at call time (never cached in an error, never logged).
 */
import { readFile } from 'node:fs/promises';

/** Thrown when an engine answers with a non-2xx status. */
export class EngineHttpError extends Error {
  constructor(
    readonly url: string,
    readonly status: number,
    /** The engine's error text (Ollama `{"error": ...}`, OpenAI `{"error": {"message": ...}}`) or body head. */
    readonly detail: string,
  ) {
    super(`${url} answered HTTP ${status}${detail ? `: ${detail}` : ''}`);
    this.name = 'EngineHttpError';
  }
}

/** Options shared by every engine client. */
export interface EngineHttpOptions {
  /** File holding a bearer token (vLLM --api-key, or a proxy in front of Ollama). Read on every call. */
  apiKeyFile?: string;
  /** Default timeout for calls that do not pass their own (ms). */
  timeoutMs?: number;
}

/** Per-call options of engine client methods. */
export interface CallOptions {
  timeoutMs?: number;
  /** External cancellation (e.g. a cancelled Temporal activity); combined with the timeout. */
  signal?: AbortSignal;
}

/** The error text an engine put in its body, in Ollama's or OpenAI's shape; else the first 200 characters. */
export function errorDetail(body: string): string {
  try {
    const j = JSON.parse(body) as { error?: unknown; message?: unknown; detail?: unknown };
    if (typeof j.error === 'string') return j.error;
    if (
      typeof j.error === 'object' &&
      j.error !== null &&
      typeof (j.error as { message?: unknown }).message === 'string'
    ) {
      return (j.error as { message: string }).message;
    }
    if (typeof j.message === 'string') return j.message;
    if (typeof j.detail === 'string') return j.detail;
  } catch {
    // not JSON: fall through to the raw head
  }
  return body.trim().slice(0, 200);
}

/** Why a fetch failed, in words: "timed out after 5000 ms", "connect ECONNREFUSED 127.0.0.1:11434", … */
export function describeFetchError(err: unknown, timeoutMs?: number): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError') return `timed out after ${timeoutMs ?? '?'} ms`;
  if (e?.name === 'AbortError') return 'aborted';
  if (e?.cause?.message) return e.cause.message;
  return e?.message ?? String(err);
}

/** A base for HTTP engine clients. */
export class HttpEngineClient {
  readonly baseUrl: string;
  protected readonly apiKeyFile: string | undefined;
  protected readonly defaultTimeoutMs: number;

  constructor(baseUrl: string, opts: EngineHttpOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.apiKeyFile = opts.apiKeyFile;
    this.defaultTimeoutMs = opts.timeoutMs ?? 30_000;
  }

  /** Combined signal: the call's own timeout plus any external cancellation. */
  protected signalFor(opts: CallOptions = {}): { signal: AbortSignal; timeoutMs: number } {
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const timeout = AbortSignal.timeout(timeoutMs);
    return { signal: opts.signal ? AbortSignal.any([timeout, opts.signal]) : timeout, timeoutMs };
  }

  protected async headers(json: boolean): Promise<Record<string, string>> {
    const h: Record<string, string> = { accept: 'application/json' };
    if (json) h['content-type'] = 'application/json';
    if (this.apiKeyFile) {
      // Read per call so a rotated key is picked up without restarting the worker; never kept on the instance.
      const key = (await readFile(this.apiKeyFile, 'utf8')).trim();
      if (key) h.authorization = `Bearer ${key}`;
    }
    return h;
  }

  /** A raw request; resolves for any status (the caller inspects it), rejects on network failure or timeout. */
  protected async request(
    path: string,
    init: { method?: string; body?: unknown } & CallOptions = {},
  ): Promise<Response> {
    const { signal } = this.signalFor(init);
    const hasBody = init.body !== undefined;
    return fetch(`${this.baseUrl}${path}`, {
      method: init.method ?? (hasBody ? 'POST' : 'GET'),
      headers: await this.headers(hasBody),
      ...(hasBody ? { body: JSON.stringify(init.body) } : {}),
      signal,
    });
  }

  /** A JSON call; non-2xx → EngineHttpError with the engine's own error text. */
  protected async json<T>(path: string, init: { method?: string; body?: unknown } & CallOptions = {}): Promise<T> {
    const res = await this.request(path, init);
    const text = await res.text();
    if (!res.ok) throw new EngineHttpError(`${this.baseUrl}${path}`, res.status, errorDetail(text));
    return (text === '' ? {} : JSON.parse(text)) as T;
  }

  /** A plain-text GET (Prometheus /metrics). */
  protected async text(path: string, opts: CallOptions = {}): Promise<string> {
    const res = await this.request(path, opts);
    const text = await res.text();
    if (!res.ok) throw new EngineHttpError(`${this.baseUrl}${path}`, res.status, errorDetail(text));
    return text;
  }
}

/** The NDJSON and SSE body readers live with the other stream framing; engine clients use them from here. */
export { readNdjson, readSse } from '../streams';
