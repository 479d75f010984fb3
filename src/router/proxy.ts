/**
 * The data path: pick a variant for the request's alias, rewrite `model`, forward with undici and stream the answer
 * back byte for byte, unbuffered. The response bytes are never rewritten (a tap reads them for token counts and
 * in-stream errors), so what the engine sent is what the client gets. A client that goes away aborts the upstream
 * request; every request ends as one sample (outcome, TTFT, duration, tokens) in the stats and metrics.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { z } from 'zod';
import { MAX_JSON_DEPTH, formatIssues, jsonDeeperThan } from '../domain/validation';
import { LineSplitter, SseSplitter, type StreamSplitter } from '../hosts/streams';
import { connectFailure, type AutoDrainer } from './failover';
import type { RouterMetrics } from './metrics';
import {
  chooseVariant,
  eligibleVariants,
  normalizeEngineUrl,
  stickyPoint,
  type AliasRoute,
  type RouteSnapshot,
  type RouteStore,
  type Variant,
} from './routes';
import type { MirrorHandle, MirroredRequest, ShadowMirror } from './shadow';
import type { Outcome, Sample, StatsStore } from './stats';
import { UpstreamCall } from './upstream';

/** The generation APIs the router speaks to clients. */
export type ClientApi = 'openai-chat' | 'openai-completion' | 'ollama-chat' | 'ollama-generate';

/** Engine path of each API (the router forwards to the same path it was called on). */
export const API_PATHS: Record<ClientApi, string> = {
  'openai-chat': '/v1/chat/completions',
  'openai-completion': '/v1/completions',
  'ollama-chat': '/api/chat',
  'ollama-generate': '/api/generate',
};

const isOllama = (api: ClientApi): boolean => api === 'ollama-chat' || api === 'ollama-generate';

/** What the router needs to know of a generation request; everything else passes through untouched. */
const GenerationBodySchema = z.looseObject({
  model: z.string().min(1, { message: 'is required' }),
  stream: z.boolean().optional(),
});
type GenerationBody = z.infer<typeof GenerationBodySchema>;

/**
 * The parsed body as a GenerationBody, or the error message. The two checks GenerationBodySchema makes are done by
 * hand on the data path; zod runs only on a body that fails them, to word the error.
 */
function generationBody(parsed: unknown): GenerationBody | string {
  if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) {
    const b = parsed as Record<string, unknown>;
    if (typeof b.model === 'string' && b.model !== '' && (b.stream === undefined || typeof b.stream === 'boolean'))
      return b as GenerationBody;
  }
  const r = GenerationBodySchema.safeParse(parsed);
  return r.success ? r.data : formatIssues(r.error).join('; ');
}

/** Everything the proxy depends on. */
export interface ProxyDeps {
  store: RouteStore;
  stats: StatsStore;
  metrics: RouterMetrics;
  dispatcher: Dispatcher;
  /** Uniform [0, 1) source for the weighted choice (injectable for deterministic tests). */
  random: () => number;
  /** Longest wait for the engine's response headers (≈ TTFT: engines send headers with the first token). */
  headersTimeoutMs: number;
  /** Longest silence between two body chunks. */
  bodyTimeoutMs: number;
  /** Refusal counting and the router's own drains (without it: no auto-drain; failover still works). */
  autoDrain?: AutoDrainer;
  /** Mirroring to an alias's shadow variant (without it: routes' `shadow` is ignored). */
  shadow?: ShadowMirror;
  /** Where the mirror's own failures are logged (they never reach the client). */
  log?: (line: string) => void;
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authenticate',
  'proxy-authorization',
]);

/** An error answer in the client API's own shape. */
function sendError(reply: FastifyReply, api: ClientApi, status: number, message: string, type: string): void {
  const body = isOllama(api) ? { error: message } : { error: { message, type, param: null, code: null } };
  void reply.code(status).header('content-type', 'application/json; charset=utf-8').send(body);
}

/** Handle one generation request (the route handler of the four generation paths). */
export async function proxyGeneration(
  api: ClientApi,
  req: FastifyRequest,
  reply: FastifyReply,
  deps: ProxyDeps,
): Promise<void> {
  const started = performance.now();
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.isBuffer(req.body) ? req.body.toString('utf8') : '');
  } catch {
    return sendError(reply, api, 400, '(root): must be JSON', 'invalid_request_error');
  }
  // The body is forwarded re-serialised (with the engine's model name): refuse what JSON.stringify cannot take.
  if (jsonDeeperThan(parsed)) {
    return sendError(reply, api, 400, `(root): must nest at most ${MAX_JSON_DEPTH} levels`, 'invalid_request_error');
  }
  const body = generationBody(parsed);
  if (typeof body === 'string') return sendError(reply, api, 400, body, 'invalid_request_error');
  const alias = body.model;
  const snap = deps.store.current;
  const route = snap.routes[alias];
  // An alias with no Ollama variant at all is, to an Ollama client, a model that does not exist (as /api/tags, which
  // does not list it, says): a 404 like Ollama's own, not a 503 that invites retrying a request that can never work.
  if (!route || (isOllama(api) && !route.variants.some((v) => v.engineType === 'ollama'))) {
    const msg = isOllama(api) ? `model "${alias}" not found` : `The model \`${alias}\` does not exist.`;
    return sendError(reply, api, 404, msg, 'model_not_found');
  }
  const eligible = eligibleVariants(route, snap, isOllama(api), deps.autoDrain?.drained);
  const sticky = route.stickyHeader ? req.headers[route.stickyHeader.toLowerCase()] : undefined;
  const key = Array.isArray(sticky) ? sticky[0] : sticky;
  const chosen = chooseVariant(eligible, key ? stickyPoint(`${alias}\u0000${key}`) : deps.random());
  if (!chosen) {
    const why = isOllama(api) ? 'no Ollama variant with weight > 0 on an undrained engine' : 'all variants drained';
    return sendError(reply, api, 503, `alias "${alias}" has no available variant (${why})`, 'service_unavailable');
  }

  let variant: Variant = chosen;
  const streaming = isOllama(api) ? body.stream !== false : body.stream === true;
  let forward = Buffer.from(JSON.stringify({ ...body, model: variant.model }));
  /** The copy to the alias's shadow variant, once the answer started (src/router/shadow.ts); never awaited here. */
  let mirror: MirrorHandle | undefined;
  const res = reply.raw;
  reply.hijack();
  /** The engine request in flight (the one a client that goes away cancels). */
  let pending: UpstreamCall | undefined;
  let clientGone = false;
  const onClose = (): void => {
    if (!res.writableFinished) {
      clientGone = true;
      pending?.abort(new Error('client closed the connection'));
    }
  };
  res.on('close', onClose);
  deps.metrics.inflight.inc({ alias });

  /** When the engine's first body byte came (undefined: none yet, or none at all). */
  let firstByteAt: number | undefined;
  const finish = (outcome: Outcome, status: number, extra: Partial<Sample> = {}): void => {
    const sample = recordSample(deps, alias, variant, started, outcome, status, extra);
    deps.metrics.inflight.dec({ alias });
    res.off('close', onClose);
    // An answer that ended without a body byte (the engine failed before it, or sent none) is mirrored now that it
    // has been written: a stable that fails early is paired as well as one that answers. A client that went away is
    // never judged.
    if (firstByteAt === undefined && outcome !== 'client_abort' && route.shadow && deps.shadow) {
      const accept = req.headers.accept ?? '*/*';
      mirror = forkMirror(deps, { alias, api, body, streaming, accept, chosen, served: variant });
    }
    if (mirror) pairMirror(deps, alias, mirror, sample);
  };

  // At most one retry, on another variant, and only before any byte went to the client: nothing is written to it
  // before the engine's headers, so the client sees one answer either way.
  let failedOver: Variant | undefined;
  let upstream: UpstreamCall | undefined;
  while (!upstream) {
    let next: Variant | undefined;
    try {
      upstream = await UpstreamCall.start(
        deps.dispatcher,
        engineRequest(variant, api, req, forward, streaming, deps),
        (c) => {
          pending = c;
        },
      );
    } catch (err) {
      if (clientGone) return finish('client_abort', 499);
      const timeout = isTimeout(err);
      const [outcome, code] = timeout ? (['timeout', 504] as const) : (['connect', 502] as const);
      const refused = connectFailure(err);
      if (refused) deps.autoDrain?.refused(variant.engine, refused);
      // Only a request that provably never reached the engine is retried (see connectFailure); a refused engine
      // refuses every model on it, so variants on the same engine are no way out either.
      if (refused && !failedOver)
        next = failOverFrom(variant, outcome, code, true, { route, snap, api, deps, alias, key, started });
      if (!next) {
        const message = `engine ${variant.engine}: ${errorText(err)}`;
        writeError(res, api, code, message, variant, failedOver);
        return finish(outcome, code);
      }
    }
    if (upstream) {
      deps.autoDrain?.connected(variant.engine);
      // A 503 is the engine declining the request before it began (llama-server loading its model, Ollama's full
      // queue, vLLM overloaded): safe to send elsewhere. Its body is read and dropped, never forwarded.
      if (upstream.statusCode === 503 && !failedOver && hasAlternative(route, snap, api, variant, deps)) {
        const declined = upstream;
        upstream = undefined;
        await declined.discard();
        if (clientGone) return finish('client_abort', 499);
        next = failOverFrom(variant, 'upstream_5xx', 503, false, { route, snap, api, deps, alias, key, started });
        if (!next) {
          writeError(res, api, 503, `engine ${variant.engine} answered 503`, variant);
          return finish('upstream_5xx', 503);
        }
      }
    }
    if (next) {
      failedOver = variant;
      variant = next;
      forward = Buffer.from(JSON.stringify({ ...body, model: next.model }));
    }
  }

  const status = upstream.statusCode;
  const headers: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(upstream.headers)) {
    if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
  }
  headers['x-gpuops-variant'] = variant.name;
  headers['x-gpuops-engine'] = variant.engine;
  if (failedOver) headers['x-gpuops-failover'] = failedOver.name;
  // Framed as the engine says it sent it; without a content type, as the client API streams (OpenAI: SSE).
  const contentType = upstream.headers['content-type'];
  const sse = typeof contentType === 'string' ? /^text\/event-stream\b/i.test(contentType) : !isOllama(api);
  const tap = new TokenTap(streaming, sse ? 'sse' : 'ndjson');
  try {
    res.writeHead(status, headers);
    const call = upstream;
    let corked = false;
    /** A wait for the client socket to drain is pending: the chunks that came with the headers each refuse. */
    let waiting = false;
    await new Promise<void>((resolve, reject) => {
      const uncork = (): void => {
        corked = false;
        res.uncork();
      };
      call.pipe({
        data(chunk) {
          const first = firstByteAt === undefined;
          if (first) firstByteAt = performance.now();
          tap.push(chunk);
          // Chunks (and the end) that arrive in the same tick go out in one write; the uncork on the next tick adds
          // no waiting.
          if (!corked) {
            corked = true;
            res.cork();
            process.nextTick(uncork);
          }
          const flowing = res.write(chunk);
          // The copy is forked only once the client's first byte is written: it never competes with it.
          if (first && route.shadow && deps.shadow) {
            const accept = req.headers.accept ?? '*/*';
            mirror = forkMirror(deps, { alias, api, body, streaming, accept, chosen, served: variant });
          }
          if (flowing) return true;
          // A full client socket pauses the engine's until it drains; one wait at a time, however many chunks the
          // parser had already delivered (pipe hands over those that came with the headers in one go).
          if (!waiting) {
            waiting = true;
            void drained(res).then(() => {
              waiting = false;
              call.resume();
            });
          }
          return false;
        },
        end() {
          if (!clientGone) res.end();
          resolve();
        },
        error: reject,
      });
    });
    if (clientGone) return finish('client_abort', 499);
  } catch (err) {
    if (clientGone) return finish('client_abort', 499);
    // The answer already started: the only honest signal left for the client is a broken connection.
    res.destroy();
    return finish(isTimeout(err) ? 'timeout' : 'broken_stream', status);
  }
  const end = performance.now();
  tap.end();
  const ttftMs = firstByteAt !== undefined ? firstByteAt - started : undefined;
  const tokens = tap.tokens();
  let tokensPerSecond: number | undefined;
  if (tokens !== undefined && tokens > 0) {
    if (streaming && firstByteAt !== undefined && tokens > 1 && end > firstByteAt)
      tokensPerSecond = (tokens - 1) / ((end - firstByteAt) / 1000);
    else if (!streaming && end > started) tokensPerSecond = tokens / ((end - started) / 1000);
  }
  // An error object inside a 2xx stream is the engine failing mid-answer; inside a 4xx body it is just the answer.
  const outcome: Outcome =
    status >= 500 ? 'upstream_5xx' : status >= 400 ? 'client_error' : tap.streamError ? 'broken_stream' : 'ok';
  finish(outcome, status, {
    ...(ttftMs !== undefined ? { ttftMs } : {}),
    ...(tokens !== undefined && outcome === 'ok' ? { outputTokens: tokens } : {}),
    ...(tokensPerSecond !== undefined && outcome === 'ok' ? { tokensPerSecond } : {}),
  });
}

/** Fork the request's copy (src/router/shadow.ts); a throw in the mirror's own bookkeeping is only logged. */
function forkMirror(deps: ProxyDeps, r: MirroredRequest): MirrorHandle | undefined {
  try {
    return deps.shadow?.fork(r);
  } catch (err) {
    deps.log?.(`router: shadow copy for ${r.alias}: ${errorText(err)}`);
    return undefined;
  }
}

/** Hand the mirror the client's sample (once the client's request is done with); a throw is logged only. */
function pairMirror(deps: ProxyDeps, alias: string, mirror: MirrorHandle, sample: Sample): void {
  try {
    mirror.primary(sample);
  } catch (err) {
    deps.log?.(`router: shadow pairing for ${alias}: ${errorText(err)}`);
  }
}

/** The dispatch options of one engine attempt: the client's path, the engine's key, the router's timeouts. */
function engineRequest(
  v: Variant,
  api: ClientApi,
  req: FastifyRequest,
  body: Buffer,
  streaming: boolean,
  deps: ProxyDeps,
): Dispatcher.DispatchOptions {
  const [origin, path] = enginePath(v.engine, API_PATHS[api]);
  return {
    origin,
    path,
    method: 'POST',
    // llama-server closes its connection after every streamed (chunked) answer without saying so (no
    // `connection: close`; Ollama and vLLM keep theirs open). A request the pool sends on that socket before its
    // FIN is read fails as "other side closed" after it may have been written: a 502 that must not be retried. So a
    // stream to llama-server gets a connection of its own (`reset`: `connection: close`, never pooled).
    ...(streaming && v.engineType === 'llamacpp' ? { reset: true } : {}),
    headers: {
      'content-type': 'application/json',
      accept: typeof req.headers.accept === 'string' ? req.headers.accept : '*/*',
      ...(v.apiKeyFile ? { authorization: `Bearer ${apiKey(v.apiKeyFile)}` } : {}),
    },
    body,
    headersTimeout: deps.headersTimeoutMs,
    bodyTimeout: deps.bodyTimeoutMs,
  };
}

const paths = new Map<string, [origin: string, path: string]>();
/** Origin and request path of `p` on `engine` (memoised: engine URLs are few, and this runs per attempt). */
function enginePath(engine: string, p: string): [origin: string, path: string] {
  const k = `${engine}\u0000${p}`;
  let hit = paths.get(k);
  if (!hit) {
    const url = new URL(joinUrl(engine, p));
    hit = [url.origin, url.pathname + url.search];
    if (paths.size > 10_000) paths.clear();
    paths.set(k, hit);
  }
  return hit;
}

const keys = new Map<string, { key: string; at: number }>();
/** How long an API key read from its file is reused; a rotated key is picked up within this. */
const KEY_TTL_MS = 10_000;

/** The engine API key from its file (cached briefly: this runs per request). Throws when unreadable. */
export function apiKey(file: string): string {
  const hit = keys.get(file);
  if (hit && Date.now() - hit.at < KEY_TTL_MS) return hit.key;
  const key = readFileSync(file, 'utf8').trim();
  keys.set(file, { key, at: Date.now() });
  return key;
}

function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

function writeError(
  res: ServerResponse,
  api: ClientApi,
  status: number,
  message: string,
  v: Variant,
  failedOver?: Variant,
): void {
  if (res.headersSent || res.destroyed) return;
  const body = JSON.stringify(
    isOllama(api) ? { error: message } : { error: { message, type: 'upstream_error', param: null, code: null } },
  );
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-gpuops-variant': v.name,
    'x-gpuops-engine': v.engine,
    ...(failedOver ? { 'x-gpuops-failover': failedOver.name } : {}),
  });
  res.end(body);
}

/** Record one attempt as its variant's sample, in the stats and the metrics. */
function recordSample(
  deps: ProxyDeps,
  alias: string,
  v: Variant,
  started: number,
  outcome: Outcome,
  status: number,
  extra: Partial<Sample> = {},
): Sample {
  const sample: Sample = { at: Date.now(), outcome, status, durationMs: performance.now() - started, ...extra };
  deps.stats.record(alias, v.name, sample);
  deps.metrics.observe(alias, v.name, sample);
  return sample;
}

/** What choosing a failover target needs of the request (built on the failure path only). */
interface RetryContext {
  route: AliasRoute;
  snap: RouteSnapshot;
  api: ClientApi;
  deps: ProxyDeps;
  alias: string;
  /** The sticky header's value, if any. */
  key: string | undefined;
  started: number;
}

/**
 * The variant a failed attempt is retried on, or undefined when the alias has none: another eligible variant
 * (weighted among the rest), never the failed one, nor (when the engine itself is unreachable: `sameEngine`) any
 * variant on its engine. A sticky session falls over to a fixed variant of its own (a second point, so sessions
 * spread over the rest by weight). The failed attempt becomes its variant's own sample, so canary analysis sees the
 * error, and the failover is counted.
 */
function failOverFrom(
  failed: Variant,
  outcome: Outcome,
  status: number,
  sameEngine: boolean,
  c: RetryContext,
): Variant | undefined {
  const url = normalizeEngineUrl(failed.engine);
  const rest = eligibleVariants(c.route, c.snap, isOllama(c.api), c.deps.autoDrain?.drained).filter(
    (v) => v !== failed && !(sameEngine && normalizeEngineUrl(v.engine) === url),
  );
  const next = chooseVariant(rest, c.key ? stickyPoint(`${c.alias}\u0000${c.key}\u0000failover`) : c.deps.random());
  if (!next) return undefined;
  recordSample(c.deps, c.alias, failed, c.started, outcome, status);
  c.deps.metrics.failover(c.alias, failed.name, next.name);
  return next;
}

/** Whether a 503 from `failed` has somewhere else to go (checked before its body is dropped). */
function hasAlternative(route: AliasRoute, snap: RouteSnapshot, api: ClientApi, failed: Variant, deps: ProxyDeps) {
  return eligibleVariants(route, snap, isOllama(api), deps.autoDrain?.drained).some((v) => v !== failed);
}

function isTimeout(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT';
}

function errorText(err: unknown): string {
  const e = err as { message?: string; code?: string; cause?: { code?: string } };
  return [e.code ?? e.cause?.code, e.message].filter(Boolean).join(' ');
}

/** `http://h:1/base/` + `/v1/x` → `http://h:1/base/v1/x` (engines behind a path prefix keep it). */
export function joinUrl(base: string, p: string): string {
  return `${base.replace(/\/+$/, '')}${p}`;
}

/** Longest partial line (or unfinished event) kept between chunks; a longer one is not protocol worth parsing. */
const MAX_LINE = 1 << 20;
/** Largest non-streaming body copied for its usage field. */
const MAX_BODY = 8 << 20;

/**
 * Reads the response as it passes, without changing it: output tokens from the engine's own count (OpenAI `usage`,
 * Ollama `eval_count` in the final object, else llama-server's `timings.predicted_n`) or else the number of content
 * chunks, and in-stream error objects (an engine that fails after sending 200 reports the error inside the stream).
 * A streamed answer is read as server-sent events (the OpenAI APIs) or NDJSON lines (Ollama's own, or any other body),
 * with the shared splitters of src/hosts/streams: one UTF-8 stream, lines and events whole across chunks.
 */
export class TokenTap {
  private readonly splitter: StreamSplitter | undefined;
  /** Set once the event buffer overflowed: the rest of the stream is not read. */
  private overflowed = false;
  private body: Buffer[] = [];
  private bodyBytes = 0;
  private usage: number | undefined;
  /**
   * llama-server's own count in its last chunk when the client asked for no usage. It differs from the chunk count:
   * the engine holds back the tokens of an incomplete UTF-8 character and sends the character in one chunk.
   */
  private predicted: number | undefined;
  private chunks = 0;
  /** The stream carried an error object. */
  streamError = false;

  constructor(
    private readonly streaming: boolean,
    framing: 'sse' | 'ndjson' = 'sse',
  ) {
    if (!streaming) return;
    this.splitter =
      framing === 'sse'
        ? new SseSplitter((e) => this.data(e.data), { maxBufferSize: MAX_LINE })
        : new LineSplitter((line) => this.data(line), { maxLineLength: MAX_LINE });
  }

  push(chunk: Buffer): void {
    if (!this.splitter) {
      if (this.bodyBytes + chunk.length <= MAX_BODY) this.body.push(chunk);
      this.bodyBytes += chunk.length;
      return;
    }
    if (this.overflowed) return;
    try {
      this.splitter.push(chunk);
    } catch {
      // Only an overflowing event buffer throws here; the tap never disturbs the stream it reads.
      this.overflowed = true;
    }
  }

  end(): void {
    if (!this.splitter) {
      if (this.bodyBytes > MAX_BODY) return;
      this.object(parseObject(Buffer.concat(this.body).toString('utf8')), false);
      this.body = [];
      return;
    }
    if (!this.overflowed) this.splitter.end();
  }

  /** Engine-reported output tokens, else streamed content chunks; undefined when neither was seen. */
  tokens(): number | undefined {
    if (this.usage !== undefined) return this.usage;
    if (this.predicted !== undefined) return this.predicted;
    return this.streaming && this.chunks > 0 ? this.chunks : undefined;
  }

  /** One NDJSON line or one event's data. */
  private data(raw: string): void {
    const json = raw.trim();
    if (json === '' || json === '[DONE]') return;
    this.object(parseObject(json), true);
  }

  private object(o: Record<string, unknown> | undefined, streamed: boolean): void {
    if (!o) return;
    if (streamed && 'error' in o && o.error) this.streamError = true;
    const usage = o.usage as { completion_tokens?: unknown } | undefined | null;
    if (usage && typeof usage.completion_tokens === 'number') this.usage = usage.completion_tokens;
    if (typeof o.eval_count === 'number') this.usage = o.eval_count;
    const timings = o.timings as { predicted_n?: unknown } | undefined | null;
    if (timings && typeof timings.predicted_n === 'number') this.predicted = timings.predicted_n;
    if (!streamed) return;
    const choice = Array.isArray(o.choices) ? (o.choices[0] as Record<string, unknown> | undefined) : undefined;
    const delta = choice?.delta as { content?: unknown } | undefined;
    const message = o.message as { content?: unknown } | undefined;
    const content = delta?.content ?? choice?.text ?? message?.content ?? o.response;
    if (typeof content === 'string' && content !== '') this.chunks += 1;
  }
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(text);
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
