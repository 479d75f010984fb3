/**
 * One simulated inference engine: an HTTP server speaking the API of the engine type it stands for — Ollama
 * (native API plus its OpenAI-compatible /v1), vLLM or llama.cpp `llama-server` (OpenAI API, /health, Prometheus
 * /metrics) — with per-model latency and error profiles and the faults of the node state. The supervisor opens and
 * closes the listener as the container starts and stops, so a stopped engine really refuses connections.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type http from 'node:http';
import type { Socket } from 'node:net';
import path from 'node:path';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { SANDBOX_HTTP_LIMITS, fastifyLimits } from '../http-limits';
import * as core from './shims/lib/core';
import type { EngineSim, ModelProfile, SandboxState, SandboxStore } from './state';
import { countPromptTokens, respond, tokenize } from './text';

export interface EngineServerOptions {
  store: SandboxStore;
  /** Engine name (config `engines[].name`). */
  engine: string;
  log?: (line: string) => void;
  /**
   * What an Ollama engine says in /api/version (default the sandbox's {@link core.OLLAMA_VERSION}). A source-built
   * Ollama says "0.0.0".
   */
  ollamaVersion?: string;
}

/** The generation APIs; `llama-completion` is llama-server's own POST /completion. */
type Api = 'ollama-generate' | 'ollama-chat' | 'openai-chat' | 'openai-completion' | 'llama-completion';

interface GenRequest {
  api: Api;
  model: string;
  prompt: string;
  system?: string;
  stream: boolean;
  maxTokens?: number;
  json: boolean;
  /** Ollama keep_alive in ms; -1 = forever; undefined = default (5 min). */
  keepAliveMs?: number;
  includeUsage: boolean;
  /** Sampling parameters the request set (llama.cpp echoes them in generation_settings and /slots). */
  sampling?: { temperature?: number; seed?: number; ignoreEos?: boolean };
}

const DEFAULT_KEEP_ALIVE_MS = 5 * 60_000;
/** Ollama's default num_ctx. */
const OLLAMA_DEFAULT_CONTEXT = 4096;
const NS_PER_MS = 1_000_000;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Resolve after `ms`, or reject when the client goes away (so abandoned generations stop). */
function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new Error('aborted'));
    const t = setTimeout(
      () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      },
      Math.max(0, ms),
    );
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new Error('aborted'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Ollama accepts keep_alive as seconds (number) or a Go duration string ("5m", "1h", "0", "-1"). */
function parseKeepAlive(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number') return v < 0 ? -1 : v * 1000;
  if (typeof v === 'string') {
    const m = /^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v.trim());
    if (!m) return undefined;
    const n = Number(m[1]);
    if (n < 0) return -1;
    const unit = m[2] ?? 's';
    return n * (unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 3_600_000);
  }
  return undefined;
}

/** "llama3.2" → "llama3.2:latest"; registry prefixes are dropped, as Ollama does. */
export function normalizeModelName(name: string): string {
  const n = name.replace(/^(?:registry\.ollama\.ai\/)?(?:library\/)?/, '');
  return n.includes(':') ? n : `${n}:latest`;
}

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((p: unknown) => (p && typeof p === 'object' && 'text' in p && typeof p.text === 'string' ? p.text : ''))
      .join('');
  }
  return '';
}

/** Histogram buckets vLLM uses for time-to-first-token and request latency. */
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];
const E2E_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60];

class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly buckets: number[]) {
    this.counts = buckets.map(() => 0);
  }
  observe(v: number): void {
    this.sum += v;
    this.count += 1;
    this.buckets.forEach((b, i) => {
      if (v <= b) this.counts[i] = (this.counts[i] ?? 0) + 1;
    });
  }
}

/** Parallel slots of a simulated llama-server (its `-np`), as /props `total_slots` and /slots show them. */
const LLAMA_SLOTS = 4;
/** What llama-server puts in /props build_info and in every OpenAI answer's system_fingerprint. */
const LLAMA_BUILD = 'b4240-2a1a0a1b';

/** One llama-server slot: a task runs in it; after the task it keeps the task's prompt cache and parameters. */
interface LlamaSlot {
  id: number;
  processing: boolean;
  /** Last task that ran here; undefined while the slot never ran one (then /slots shows only id, n_ctx, …). */
  idTask?: number;
  promptTokens: number;
  decoded: number;
  nPredict: number;
  params?: Record<string, unknown>;
}

function freshSlots(): LlamaSlot[] {
  return Array.from({ length: LLAMA_SLOTS }, (_, id) => ({
    id,
    processing: false,
    promptTokens: 0,
    decoded: 0,
    nPredict: -1,
  }));
}

/** Counters since this engine process started (they reset when the container restarts, as real ones do). */
class EngineMetrics {
  running = 0;
  /** Longest sequence (prompt + generation) seen: llama-server's n_tokens_max. */
  tokensMax = 0;
  promptTokens = 0;
  generationTokens = 0;
  promptSeconds = 0;
  generationSeconds = 0;
  decodes = 0;
  success: Record<string, number> = {};
  readonly ttft = new Histogram(TTFT_BUCKETS);
  readonly e2e = new Histogram(E2E_BUCKETS);
}

/** What a route handler gets: the state as the request found it, the engine, the request and its reply. */
interface Call {
  state: SandboxState;
  engine: EngineSim;
  req: FastifyRequest;
  reply: FastifyReply;
  /** The request body as text ('' when it had none). */
  body: string;
}

type Handler = (c: Call) => void | Promise<void>;

/** One engine type's HTTP API: its routes, what every request passes first, and its 404. */
interface EngineApi {
  routes: [method: 'GET' | 'HEAD' | 'POST' | 'DELETE', url: string, handler: Handler][];
  /** Answers a request before any route does (a loading model, a missing API key); true when it answered. */
  guard?: (c: Call) => boolean;
  notFound: Handler;
}

export class EngineServer {
  private app: FastifyInstance | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly held = new Set<http.ServerResponse>();
  private frozen = false;
  private metrics = new EngineMetrics();
  /** llama-server's parallel slots (what /slots shows), fresh with every process. */
  private slots: LlamaSlot[] = freshSlots();
  private tasks = 0;
  /** Per-model request counter driving the deterministic error schedule. */
  private readonly counters = new Map<string, number>();
  private readonly log: (line: string) => void;

  constructor(private readonly opts: EngineServerOptions) {
    this.log = opts.log ?? (() => undefined);
  }

  get listening(): boolean {
    return this.app?.server.listening === true;
  }

  /** Bound port, once listening. */
  get port(): number | undefined {
    const a = this.app?.server.address();
    return a && typeof a === 'object' ? a.port : undefined;
  }

  /** Start listening (port 0 picks a free one). A fresh listener starts with fresh metrics, like a new process. */
  async listen(host: string, port: number): Promise<number> {
    if (this.app) return this.port ?? port;
    this.metrics = new EngineMetrics();
    this.slots = freshSlots();
    this.tasks = 0;
    const type = this.engine(this.opts.store.read()).type;
    const api = type === 'ollama' ? this.ollamaApi() : type === 'vllm' ? this.vllmApi() : this.llamacppApi();
    const app = Fastify({
      logger: false,
      // Each engine answers HEAD only where the real one does.
      exposeHeadRoutes: false,
      // Clients keep connections alive between probes (5 s keep-alive); a closed engine must not leave them
      // half-open. Idle off: a held generation streams nothing for as long as a test holds it.
      ...fastifyLimits({ ...SANDBOX_HTTP_LIMITS, bodyLimitBytes: 64 * 1024 * 1024, idleTimeoutMs: 0 }),
      // close() cuts every connection (below, at once); this also takes one accepted while fastify closes.
      forceCloseConnections: true,
    });
    // Bodies are parsed by the handlers, with each engine's own error for one that is not JSON, whatever the
    // content type says.
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => done(null, body));
    app.setErrorHandler((err, _req, reply) => this.internalError(reply, err));
    for (const [method, url, handler] of api.routes) app.route({ method, url, handler: this.handler(api, handler) });
    app.setNotFoundHandler(this.handler(api, api.notFound));
    app.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await app.listen({ host, port });
    this.app = app;
    return this.port ?? port;
  }

  /** Stop listening and drop every connection (the process died): clients see a reset, new ones are refused. */
  async close(): Promise<void> {
    const app = this.app;
    this.app = undefined;
    this.held.clear();
    if (!app) return;
    const closed = app.close();
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await closed;
  }

  /**
   * Freeze (node-down: the guest hangs): connections are accepted but nothing answers. Thawing drops the requests
   * that were held, as a guest that comes back has lost their state.
   */
  setFrozen(frozen: boolean): void {
    if (this.frozen === frozen) return;
    this.frozen = frozen;
    if (!frozen) {
      for (const res of this.held) res.destroy();
      this.held.clear();
    }
  }

  /** Never answer this request. */
  private hold(reply: FastifyReply): void {
    reply.hijack();
    const res = reply.raw;
    this.held.add(res);
    res.on('close', () => this.held.delete(res));
  }

  /** A route's fastify handler: a frozen guest answers nothing; otherwise the state is read once for the request. */
  private handler(api: EngineApi, handle: Handler): (req: FastifyRequest, reply: FastifyReply) => Promise<void> {
    return async (req, reply) => {
      if (this.frozen) return this.hold(reply);
      const state = this.opts.store.read();
      const call = {
        state,
        engine: this.engine(state),
        req,
        reply,
        body: typeof req.body === 'string' ? req.body : '',
      };
      try {
        if (api.guard?.(call)) return;
        await handle(call);
      } catch (err) {
        // Ollama's handlers answer a request they cannot serve with its `{ error }`.
        if (err instanceof HttpError) return sendJson(reply, err.status, { error: err.message });
        this.internalError(reply, err);
      }
    };
  }

  /** A handler failed: a 500 if nothing was sent yet, else the connection is cut (a stream that broke off). */
  private internalError(reply: FastifyReply, err: unknown): void {
    this.log(`engine ${this.opts.engine}: ${err instanceof Error ? err.message : String(err)}`);
    const res = reply.raw;
    if (res.headersSent) return void res.destroy();
    if (!reply.sent) return void reply.code(500).header('content-type', 'text/plain').send('internal error');
    res.writeHead(500, { 'Content-Type': 'text/plain' });
    res.end('internal error');
  }

  private engine(state: SandboxState): EngineSim {
    const e = state.engines[this.opts.engine];
    if (!e) throw new Error(`no engine ${this.opts.engine} in state`);
    return e;
  }

  private loading(state: SandboxState, now: number): boolean {
    const e = this.engine(state);
    const c = state.containers[e.container];
    if (!c) return false;
    // A model that will not load keeps the engine "loading" until it gives up and the container exits.
    if (c.loadFailure) return true;
    return now < c.startedAt + state.sim.engineLoadMs * state.sim.timeScale;
  }

  // -----------------------------------------------------------------------------------------------------------
  // Ollama

  private ollamaApi(): EngineApi {
    const root: Handler = ({ req, reply }) =>
      void reply
        .code(200)
        .header('content-type', 'text/plain; charset=utf-8')
        .send(req.method === 'HEAD' ? undefined : 'Ollama is running');
    return {
      routes: [
        ['GET', '/', root],
        ['HEAD', '/', root],
        [
          'GET',
          '/api/version',
          ({ reply }) => sendJson(reply, 200, { version: this.opts.ollamaVersion ?? core.OLLAMA_VERSION }),
        ],
        [
          'GET',
          '/api/tags',
          ({ state, engine, reply }) =>
            sendJson(reply, 200, {
              models: engine.models.flatMap((m) => {
                const prof = state.library[m];
                return prof
                  ? [
                      {
                        name: m,
                        model: m,
                        modified_at: ollamaTime(prof.modifiedAt),
                        size: prof.sizeBytes,
                        digest: prof.digest,
                        details: details(prof),
                      },
                    ]
                  : [];
              }),
            }),
        ],
        [
          'GET',
          '/api/ps',
          ({ state, engine, reply }) =>
            sendJson(reply, 200, {
              models: core.loadedModels(engine, Date.now()).flatMap((l) => {
                const prof = state.library[l.model];
                if (!prof) return [];
                return [
                  {
                    name: l.model,
                    model: l.model,
                    size: l.size ?? l.sizeVram,
                    digest: prof.digest,
                    details: details(prof),
                    expires_at: l.expiresAt < 0 ? '2318-08-31T04:32:11.000000000Z' : ollamaTime(l.expiresAt),
                    size_vram: l.sizeVram,
                    // The runner's context: Ollama's default 4096 tokens, or less when the model has less.
                    context_length: Math.min(prof.contextLength, OLLAMA_DEFAULT_CONTEXT),
                  },
                ];
              }),
            }),
        ],
        [
          'POST',
          '/api/show',
          ({ state, engine, body, reply }) => {
            const req = parseJson(body);
            const name = normalizeModelName(String(req.model ?? req.name ?? ''));
            const prof = engine.models.includes(name) ? state.library[name] : undefined;
            if (!prof) throw new HttpError(404, `model '${String(req.model ?? req.name ?? '')}' not found`);
            sendJson(reply, 200, showModel(prof));
          },
        ],
        [
          'DELETE',
          '/api/delete',
          ({ body, reply }) => {
            const req = parseJson(body);
            const name = normalizeModelName(String(req.model ?? req.name ?? ''));
            const removed = this.opts.store.update((s) => {
              const e = this.engine(s);
              if (!e.models.includes(name)) return false;
              e.models = e.models.filter((m) => m !== name);
              e.loaded = e.loaded.filter((l) => l.model !== name);
              return true;
            });
            if (!removed) throw new HttpError(404, `model '${String(req.model ?? req.name ?? '')}' not found`);
            removeManifest(this.modelStore(), name);
            reply.code(200).send();
          },
        ],
        ['POST', '/api/pull', ({ state, body, reply }) => this.pull(state, parseJson(body), reply)],
        [
          'POST',
          '/api/generate',
          ({ state, engine, body, reply }) => {
            const req = parseJson(body);
            return this.generate(
              state,
              engine,
              reply,
              ollamaGenRequest('ollama-generate', req, {
                prompt: typeof req.prompt === 'string' ? req.prompt : '',
                ...(typeof req.system === 'string' ? { system: req.system } : {}),
              }),
            );
          },
        ],
        [
          'POST',
          '/api/chat',
          ({ state, engine, body, reply }) => {
            const req = parseJson(body);
            const messages = Array.isArray(req.messages) ? (req.messages as Record<string, unknown>[]) : [];
            return this.generate(state, engine, reply, ollamaGenRequest('ollama-chat', req, chatPrompt(messages)));
          },
        ],
        [
          'GET',
          '/v1/models',
          ({ state, engine, reply }) =>
            sendJson(
              reply,
              200,
              {
                object: 'list',
                data: engine.models.map((m) => ({
                  id: m,
                  object: 'model',
                  created: Math.floor((state.library[m]?.modifiedAt ?? 0) / 1000),
                  owned_by: 'library',
                })),
              },
              OLLAMA_OPENAI_JSON,
            ),
        ],
        ['POST', '/v1/chat/completions', (c) => this.openai(c, '/v1/chat/completions')],
        ['POST', '/v1/completions', (c) => this.openai(c, '/v1/completions')],
      ],
      notFound: ({ reply }) => void reply.code(404).header('content-type', 'text/plain').send('404 page not found'),
    };
  }

  private modelStore(): string {
    return path.join(path.dirname(this.opts.store.file), 'models');
  }

  /**
   * /api/pull: "pulling manifest", per-layer progress with digest/total/completed, "verifying sha256 digest",
   * "writing manifest", "success". Bytes already downloaded are kept in the state, so a pull that was interrupted
   * (client gone, engine restarted) resumes where it stopped, as Ollama resumes partial blobs.
   */
  private async pull(state: SandboxState, req: Record<string, unknown>, reply: FastifyReply): Promise<void> {
    const raw = String(req.model ?? req.name ?? '');
    const name = normalizeModelName(raw);
    const stream = req.stream !== false;
    const prof = state.library[name];
    // Progress streams as it happens.
    reply.hijack();
    const res = reply.raw;
    const abort = abortOnClose(res);
    const send = (obj: Record<string, unknown>): void => {
      if (stream && !res.writableEnded) res.write(`${JSON.stringify(obj)}\n`);
    };
    if (stream) res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
    send({ status: 'pulling manifest' });
    const scale = state.sim.timeScale;
    try {
      await delay(40 * scale, abort.signal);
      if (!prof) {
        const error = 'pull model manifest: file does not exist';
        if (stream) return void res.end(`${JSON.stringify({ error })}\n`);
        return sendJson(reply, 500, { error }, 'application/json');
      }
      const installed = this.engine(state).models.includes(name);
      const tickMs = 50;
      for (const layer of prof.layers) {
        const short = layer.digest.slice(0, 12);
        const digest = `sha256:${layer.digest}`;
        const s0 = this.opts.store.read();
        let done = installed ? layer.size : (this.engine(s0).pulls[name]?.[layer.digest] ?? 0);
        send({ status: `pulling ${short}`, digest, total: layer.size, ...(done > 0 ? { completed: done } : {}) });
        while (done < layer.size) {
          await delay(tickMs, abort.signal);
          const bytesPerTick = (s0.sim.bytesPerSec * tickMs) / 1000 / Math.max(scale, 0.001);
          done = Math.min(layer.size, Math.floor(done + bytesPerTick));
          const d = done;
          this.opts.store.update((s) => {
            const e = this.engine(s);
            e.pulls[name] = { ...(e.pulls[name] ?? {}), [layer.digest]: d };
          });
          send({ status: `pulling ${short}`, digest, total: layer.size, completed: done });
        }
      }
      send({ status: 'verifying sha256 digest' });
      await delay(20 * scale, abort.signal);
      send({ status: 'writing manifest' });
      this.opts.store.update((s) => {
        const e = this.engine(s);
        delete e.pulls[name];
        if (!e.models.includes(name)) e.models.push(name);
      });
      writeManifest(this.modelStore(), prof);
      if (stream) return void res.end(`${JSON.stringify({ status: 'success' })}\n`);
      return sendJson(reply, 200, { status: 'success' });
    } catch (err) {
      if (abort.signal.aborted) {
        this.log(`engine ${this.opts.engine}: pull of ${name} interrupted; progress kept for resume`);
        return;
      }
      throw err;
    } finally {
      abort.dispose();
    }
  }

  // -----------------------------------------------------------------------------------------------------------
  // vLLM and llama.cpp

  private vllmApi(): EngineApi {
    return {
      routes: [
        ['GET', '/health', ({ reply }) => void reply.code(200).send()],
        ['GET', '/version', ({ reply }) => sendJson(reply, 200, { version: core.VLLM_VERSION })],
        [
          'GET',
          '/v1/models',
          ({ state, engine, reply }) => {
            const created = Math.floor(Date.now() / 1000);
            sendJson(reply, 200, {
              object: 'list',
              data: engine.models.map((m) => ({
                id: m,
                object: 'model',
                created,
                owned_by: 'vllm',
                root: m,
                parent: null,
                max_model_len: state.library[m]?.contextLength ?? 32768,
                permission: [
                  {
                    id: `modelperm-${core.hexOf(`${m}/${created}`, 32)}`,
                    object: 'model_permission',
                    created,
                    allow_create_engine: false,
                    allow_sampling: true,
                    allow_logprobs: true,
                    allow_search_indices: false,
                    allow_view: true,
                    allow_fine_tuning: false,
                    organization: '*',
                    group: null,
                    is_blocking: false,
                  },
                ],
              })),
            });
          },
        ],
        [
          'GET',
          '/metrics',
          ({ engine, reply }) =>
            void reply
              .code(200)
              .header('content-type', 'text/plain; version=0.0.4; charset=utf-8')
              .send(this.vllmMetrics(engine)),
        ],
        ['POST', '/v1/chat/completions', (c) => this.openai(c, '/v1/chat/completions')],
        ['POST', '/v1/completions', (c) => this.openai(c, '/v1/completions')],
      ],
      // With --api-key, vLLM guards its OpenAI API (every /v1/ path, known or not).
      guard: ({ engine, req, reply }) => {
        if (!new URL(req.url, 'http://engine').pathname.startsWith('/v1/') || authorized(engine, req)) return false;
        sendJson(reply, 401, { error: 'Unauthorized' });
        return true;
      },
      notFound: ({ reply }) => sendJson(reply, 404, { detail: 'Not Found' }),
    };
  }

  private llamacppApi(): EngineApi {
    const models: Handler = ({ state, engine, reply }) => {
      const now = Date.now();
      const nCtx = this.llamaContext(state, engine);
      // Both lists: Ollama-style `models` (for clients that speak /api/tags) and OpenAI `data`.
      sendJson(reply, 200, {
        models: engine.models.map((m) => ({
          name: m,
          model: m,
          modified_at: '',
          size: '',
          digest: '',
          type: 'model',
          description: '',
          tags: [''],
          capabilities: ['completion'],
          parameters: '',
          details: {
            parent_model: '',
            format: 'gguf',
            family: '',
            families: [''],
            parameter_size: '',
            quantization_level: '',
          },
        })),
        object: 'list',
        data: engine.models.map((m) => {
          const mp = state.library[core.profileName(engine, m)];
          return {
            id: m,
            aliases: [m],
            tags: [],
            object: 'model',
            architecture: { input_modalities: ['text'], output_modalities: ['text'] },
            created: Math.floor(now / 1000),
            owned_by: 'llamacpp',
            meta: {
              vocab_type: 2,
              n_vocab: 151936,
              n_ctx: nCtx,
              n_ctx_train: mp?.contextLength ?? 32768,
              n_embd: 896,
              n_params: 494032768,
              size: mp?.sizeBytes ?? 0,
              ftype: 'Q4_K - Medium',
            },
          };
        }),
      });
    };
    const health: Handler = ({ reply }) => sendJson(reply, 200, { status: 'ok' });
    const completion: Handler = (c) => this.llamaCompletion(c);
    const chat: Handler = (c) => this.openai(c, '/v1/chat/completions');
    return {
      routes: [
        ['GET', '/health', health],
        ['GET', '/v1/health', health],
        ['GET', '/models', models],
        ['GET', '/v1/models', models],
        [
          'GET',
          '/props',
          ({ state, engine, reply }) => {
            const served = engine.models[0] ?? '';
            const c = state.containers[engine.container];
            sendJson(reply, 200, {
              default_generation_settings: { params: llamaParams({}), n_ctx: this.llamaContext(state, engine) },
              total_slots: LLAMA_SLOTS,
              model_alias: served,
              model_ftype: 'Q4_K - Medium',
              model_path: c?.serves?.arg ?? `/models/${served}`,
              modalities: { vision: false, video: false, audio: false },
              media_marker: '<__media_gpuops_sandbox__>',
              endpoint_slots: true,
              endpoint_props: false,
              endpoint_metrics: true,
              ui: true,
              ui_settings: {},
              chat_template: QWEN_CHAT_TEMPLATE,
              chat_template_caps: {
                supports_object_arguments: false,
                supports_parallel_tool_calls: true,
                supports_preserve_reasoning: false,
                supports_reasoning_effort: false,
                supports_string_content: true,
                supports_system_role: true,
                supports_tool_calls: true,
                supports_tools: true,
                supports_typed_content: false,
              },
              bos_token: '<|endoftext|>',
              eos_token: '<|im_end|>',
              build_info: LLAMA_BUILD,
              is_sleeping: false,
              cors_proxy_enabled: false,
            });
          },
        ],
        [
          'GET',
          '/slots',
          ({ state, engine, reply }) => {
            const nCtx = this.llamaContext(state, engine);
            sendJson(
              reply,
              200,
              this.slots.map((slot) => slotView(slot, nCtx)),
            );
          },
        ],
        [
          'GET',
          '/metrics',
          ({ reply }) =>
            void reply.code(200).header('content-type', 'text/plain; version=0.0.4').send(this.llamacppMetrics()),
        ],
        ['POST', '/completion', completion],
        ['POST', '/completions', completion],
        ['POST', '/chat/completions', chat],
        ['POST', '/v1/chat/completions', chat],
        ['POST', '/v1/completions', (c) => this.openai(c, '/v1/completions')],
      ],
      guard: ({ state, engine, req, reply }) => {
        if (this.loading(state, Date.now())) {
          sendJson(reply, 503, { error: { code: 503, message: 'Loading model', type: 'unavailable_error' } });
          return true;
        }
        // With --api-key, llama-server answers only its health check without the key (model list and metrics too
        // need it).
        const p = new URL(req.url, 'http://engine').pathname;
        if (['/health', '/v1/health'].includes(p) || authorized(engine, req)) return false;
        sendJson(reply, 401, { error: { message: 'Invalid API Key', type: 'authentication_error', code: 401 } });
        return true;
      },
      notFound: ({ reply }) =>
        sendJson(reply, 404, { error: { message: 'File Not Found', type: 'not_found_error', code: 404 } }),
    };
  }

  /** The context a llama-server runs its model with (the model's own). */
  private llamaContext(state: SandboxState, engine: EngineSim): number {
    return state.library[core.profileName(engine, engine.models[0] ?? '')]?.contextLength ?? 4096;
  }

  /** llama-server's own POST /completion (and /completions): `prompt`, `n_predict`, its own answer format. */
  private async llamaCompletion({ state, engine, body, reply }: Call): Promise<void> {
    let req: Record<string, unknown>;
    try {
      req = parseJson(body);
    } catch {
      return this.openaiError(engine, reply, 400, LLAMA_PARSE_ERROR, 'invalid_request_error');
    }
    if (req.prompt === undefined) {
      return this.openaiError(engine, reply, 400, LLAMA_NO_PROMPT, 'invalid_request_error');
    }
    const nPredict = typeof req.n_predict === 'number' ? req.n_predict : req.max_tokens;
    return this.generate(state, engine, reply, {
      api: 'llama-completion',
      model: '',
      prompt: Array.isArray(req.prompt) ? req.prompt.map(String).join('\n') : String(req.prompt),
      stream: req.stream === true,
      ...(typeof nPredict === 'number' && nPredict >= 0 ? { maxTokens: nPredict } : {}),
      json: req.json_schema !== undefined,
      includeUsage: false,
      sampling: samplingOf(req),
    });
  }

  private vllmMetrics(engine: EngineSim): string {
    const m = this.metrics;
    const model = engine.models[0] ?? '';
    const label = `model_name="${model}"`;
    const lines: string[] = [];
    const gauge = (name: string, help: string, value: number): void => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, `${name}{${label}} ${value.toFixed(1)}`);
    };
    const counter = (name: string, help: string, value: number): void => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`, `${name}{${label}} ${value.toFixed(1)}`);
    };
    const histogram = (name: string, help: string, h: Histogram): void => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
      lines.push(`${name}_sum{${label}} ${h.sum}`);
      h.buckets.forEach((b, i) =>
        lines.push(
          `${name}_bucket{le="${b.toFixed(3).replace(/\.?0+$/, '') || '0'}",${label}} ${(h.counts[i] ?? 0).toFixed(1)}`,
        ),
      );
      lines.push(
        `${name}_bucket{le="+Inf",${label}} ${h.count.toFixed(1)}`,
        `${name}_count{${label}} ${h.count.toFixed(1)}`,
      );
    };
    gauge('vllm:num_requests_running', 'Number of requests currently running on GPU.', m.running);
    gauge('vllm:num_requests_waiting', 'Number of requests waiting to be processed.', 0);
    gauge('vllm:num_requests_swapped', 'Number of requests swapped to CPU.', 0);
    gauge(
      'vllm:gpu_cache_usage_perc',
      'GPU KV-cache usage. 1 means 100 percent usage.',
      m.running > 0 ? 0.05 * m.running : 0,
    );
    gauge('vllm:cpu_cache_usage_perc', 'CPU KV-cache usage. 1 means 100 percent usage.', 0);
    counter('vllm:prompt_tokens_total', 'Number of prefill tokens processed.', m.promptTokens);
    counter('vllm:generation_tokens_total', 'Number of generation tokens processed.', m.generationTokens);
    lines.push(
      '# HELP vllm:request_success_total Count of successfully processed requests.',
      '# TYPE vllm:request_success_total counter',
    );
    for (const [reason, n] of Object.entries(m.success)) {
      lines.push(`vllm:request_success_total{finished_reason="${reason}",${label}} ${n.toFixed(1)}`);
    }
    histogram('vllm:time_to_first_token_seconds', 'Histogram of time to first token in seconds.', m.ttft);
    histogram('vllm:e2e_request_latency_seconds', 'Histogram of end to end request latency in seconds.', m.e2e);
    return `${lines.join('\n')}\n`;
  }

  /** llama-server's /metrics (--metrics), the families and help texts of current builds (no KV-cache gauges). */
  private llamacppMetrics(): string {
    const m = this.metrics;
    const busy = Math.min(m.running, LLAMA_SLOTS);
    const rows: [string, 'counter' | 'gauge', string, number][] = [
      ['prompt_tokens_total', 'counter', 'Number of prompt tokens processed, excluding cached tokens', m.promptTokens],
      ['prompt_tokens_cached_total', 'counter', 'Number of prompt tokens reused from the cache', 0],
      ['prompt_seconds_total', 'counter', 'Total time spent processing prompts', m.promptSeconds],
      ['tokens_predicted_total', 'counter', 'Number of generation tokens processed', m.generationTokens],
      ['tokens_predicted_seconds_total', 'counter', 'Total time spent generating tokens', m.generationSeconds],
      [
        'n_decode_total',
        'counter',
        'Total number of llama_decode() calls, excluding speculative decoding and multimodal decoding',
        m.decodes,
      ],
      ['n_tokens_max', 'counter', 'Largest observed sequence length (prompt + generation)', m.tokensMax],
      ['spec_decode_num_draft_tokens_total', 'counter', 'Speculative: Total draft tokens generated', 0],
      [
        'spec_decode_num_accepted_tokens_total',
        'counter',
        'Speculative: Total draft tokens accepted by the target model',
        0,
      ],
      ['spec_decode_num_drafts_total', 'counter', 'Speculative: Total speculative decoding verification steps', 0],
      [
        'prompt_tokens_seconds',
        'gauge',
        'Average prompt throughput in tokens/s',
        m.promptSeconds > 0 ? m.promptTokens / m.promptSeconds : 0,
      ],
      [
        'predicted_tokens_seconds',
        'gauge',
        'Average generation throughput in tokens/s',
        m.generationSeconds > 0 ? m.generationTokens / m.generationSeconds : 0,
      ],
      ['requests_processing', 'gauge', 'Number of requests processing', busy],
      // Requests beyond the slots wait for one.
      ['requests_deferred', 'gauge', 'Number of requests deferred', m.running - busy],
      [
        'n_busy_slots_per_decode',
        'gauge',
        'Average number of busy slots per llama_decode() call',
        m.decodes > 0 ? 1 : 0,
      ],
    ];
    return `${rows
      .map(
        ([n, t, help, v]) =>
          `# HELP llamacpp:${n} ${help}\n# TYPE llamacpp:${n} ${t}\nllamacpp:${n} ${Number.isInteger(v) ? v : v.toFixed(5)}`,
      )
      .join('\n')}\n`;
  }

  // -----------------------------------------------------------------------------------------------------------
  // OpenAI-compatible API (all engine types)

  private async openai(
    { state, engine, body, reply }: Call,
    p: '/v1/chat/completions' | '/v1/completions',
  ): Promise<void> {
    let req: Record<string, unknown>;
    try {
      req = parseJson(body);
    } catch (err) {
      const message = engine.type === 'llamacpp' ? LLAMA_PARSE_ERROR : (err as Error).message;
      return this.openaiError(engine, reply, 400, message, 'invalid_request_error', { unparsed: true });
    }
    const chat = p === '/v1/chat/completions';
    if (engine.type === 'llamacpp' && chat && !Array.isArray(req.messages)) {
      return this.openaiError(engine, reply, 400, "'messages' is required", 'invalid_request_error');
    }
    if (engine.type === 'llamacpp' && !chat && req.prompt === undefined) {
      return this.openaiError(engine, reply, 400, LLAMA_NO_PROMPT, 'invalid_request_error');
    }
    const streamOptions = req.stream_options as Record<string, unknown> | undefined;
    const responseFormat = req.response_format as Record<string, unknown> | undefined;
    const maxTokens =
      typeof req.max_tokens === 'number'
        ? req.max_tokens
        : typeof req.max_completion_tokens === 'number'
          ? req.max_completion_tokens
          : undefined;
    const gen: GenRequest = {
      api: chat ? 'openai-chat' : 'openai-completion',
      model: String(req.model ?? ''),
      ...(chat
        ? chatPrompt(Array.isArray(req.messages) ? (req.messages as Record<string, unknown>[]) : [])
        : { prompt: Array.isArray(req.prompt) ? req.prompt.map(String).join('\n') : String(req.prompt ?? '') }),
      stream: req.stream === true,
      ...(maxTokens !== undefined ? { maxTokens } : {}),
      json: responseFormat?.type === 'json_object' || responseFormat?.type === 'json_schema',
      includeUsage: streamOptions?.include_usage === true,
      sampling: samplingOf(req),
    };
    return this.generate(state, engine, reply, gen);
  }

  /** An OpenAI-API error in the engine's own shape; `unparsed`: the request body was not JSON. */
  private openaiError(
    engine: EngineSim,
    reply: FastifyReply,
    status: number,
    message: string,
    type: string,
    opts: { unparsed?: boolean } = {},
  ): void {
    if (engine.type === 'vllm') {
      const vType = status === 404 ? 'NotFoundError' : status === 400 ? 'BadRequestError' : 'InternalServerError';
      return sendJson(reply, status, { object: 'error', message, type: vType, param: null, code: status });
    }
    if (engine.type === 'llamacpp') {
      const lType =
        { 400: 'invalid_request_error', 401: 'authentication_error', 404: 'not_found_error', 503: 'unavailable_error' }[
          status
        ] ?? 'server_error';
      return sendJson(reply, status, { error: { code: status, message, type: lType } });
    }
    const body = { error: { message, type, param: null, code: null } };
    return sendJson(reply, status, body, opts.unparsed ? undefined : OLLAMA_OPENAI_JSON);
  }

  private fail(engine: EngineSim, api: Api, reply: FastifyReply, status: number, message: string): void {
    if (api === 'ollama-generate' || api === 'ollama-chat') return sendJson(reply, status, { error: message });
    return this.openaiError(engine, reply, status, message, status === 400 ? 'invalid_request_error' : 'api_error');
  }

  /** Which model a request runs on, or why it cannot. */
  private resolveModel(state: SandboxState, engine: EngineSim, requested: string): ModelProfile | string {
    if (engine.type === 'llamacpp') {
      // llama-server serves the one model it was started with, whatever name the client uses.
      const m = engine.models[0];
      return (m && state.library[core.profileName(engine, m)]) || 'no model loaded';
    }
    if (engine.type === 'vllm') {
      if (!engine.models.includes(requested)) return `The model \`${requested}\` does not exist.`;
      return state.library[core.profileName(engine, requested)] ?? `The model \`${requested}\` does not exist.`;
    }
    const name = normalizeModelName(requested);
    // Ollama parses the name first and answers an empty (invalid) one as a model it does not have.
    if (!requested) return "model '' not found";
    if (!engine.models.includes(name) || !state.library[name])
      return `model "${requested}" not found, try pulling it first`;
    return state.library[name];
  }

  /**
   * The generation path shared by all APIs: model lookup, faults (hang → never answer; lost GPU or CUDA OOM → 500),
   * the model's deterministic error schedule, model load, TTFT, then tokens at the model's rate.
   */
  private async generate(state: SandboxState, engine: EngineSim, reply: FastifyReply, gen: GenRequest): Promise<void> {
    const started = Date.now();
    // The answer is timed (and streamed) here, token by token, on the raw response.
    reply.hijack();
    const res = reply.raw;
    const ollama = gen.api === 'ollama-generate' || gen.api === 'ollama-chat';
    const resolved = this.resolveModel(state, engine, gen.model);
    if (typeof resolved === 'string') return this.fail(engine, gen.api, reply, 404, resolved);
    const prof = resolved;
    // Ollama names the model it resolved; llama-server the one it serves, whatever the request said; vLLM the request's.
    const modelName =
      engine.type === 'ollama'
        ? prof.name
        : engine.type === 'llamacpp'
          ? (engine.models[0] ?? prof.name)
          : gen.model || prof.name;
    const container = state.containers[engine.container];
    const scale = state.sim.timeScale;
    /** A fault or the error schedule: a 500 in the API's own error format. */
    const serverError = (message: string): void => this.fail(engine, gen.api, reply, 500, message);
    /** Ollama's answer to a request with no prompt: the model was loaded or unloaded, nothing generated. */
    const loadAnswer = (doneReason: 'load' | 'unload'): void =>
      sendJson(reply, 200, {
        model: modelName,
        created_at: ollamaTime(Date.now()),
        response: '',
        done: true,
        done_reason: doneReason,
      });

    // Ollama: an empty prompt only loads (or, with keep_alive 0, unloads) the model.
    if (gen.api === 'ollama-generate' && gen.prompt === '' && !gen.system) {
      if (gen.keepAliveMs === 0) {
        this.opts.store.update((s) => {
          const e = this.engine(s);
          e.loaded = e.loaded.filter((l) => l.model !== prof.name);
        });
        return loadAnswer('unload');
      }
    }
    if (container?.faults.hang) return this.hold(reply);
    const lostGpu = state.gpus.find((g) => g.lost && engine.gpus.includes(g.index));
    if (lostGpu) {
      return serverError(
        ollama || engine.type === 'ollama'
          ? 'llama runner process has terminated: CUDA error: unspecified launch failure'
          : 'CUDA error: unspecified launch failure',
      );
    }
    if (container?.faults.cudaOom) {
      this.opts.store.update((s, now) => {
        const c = s.containers[engine.container];
        if (c) core.appendLog(c, now, 'stderr', core.cudaOomLines(s, this.engine(s), now));
      });
      return serverError(
        engine.type === 'ollama'
          ? 'llama runner process has terminated: CUDA error: out of memory'
          : 'CUDA out of memory. Tried to allocate 2.00 GiB.',
      );
    }
    const n = this.counters.get(prof.name) ?? 0;
    this.counters.set(prof.name, n + 1);
    const rate = prof.latency.errorRate;
    if (rate > 0 && Math.floor((n + 1) * rate) > Math.floor(n * rate)) {
      return serverError(
        engine.type === 'ollama' ? 'llama runner process has terminated: exit status 2' : 'Internal server error',
      );
    }

    // Load the model into VRAM if it is not there (Ollama), and refresh its keep_alive.
    let loadMs = 0;
    if (engine.type === 'ollama') {
      const now = Date.now();
      const loaded = core.loadedModels(engine, now).some((l) => l.model === prof.name);
      if (!loaded) loadMs = Math.min(1500, (prof.sizeBytes / 1e9) * 250) * scale;
      const keep = gen.keepAliveMs ?? DEFAULT_KEEP_ALIVE_MS;
      this.opts.store.update((s, t) => {
        const e = this.engine(s);
        e.loaded = e.loaded.filter((l) => l.model !== prof.name);
        // Like Ollama, a model that does not fit the engine's free VRAM is split: the rest runs on the CPU, and
        // `ollama ps` shows size_vram < size (the "silent offload" a deployment pre-flight must catch).
        const size = Math.round(prof.sizeBytes * 1.15);
        const gpus = s.gpus.filter((g) => e.gpus.length === 0 || e.gpus.includes(g.index));
        const freeBytes =
          gpus.reduce((sum, g) => sum + (g.memoryTotalMiB - g.baseUsedMiB) * 1048576, 0) -
          core.loadedModels(e, t).reduce((sum, l) => sum + l.sizeVram, 0);
        e.loaded.push({
          model: prof.name,
          loadedAt: t,
          // keep_alive 0 holds the model for this request only: it is unloaded when the request ends (finally below).
          expiresAt: keep <= 0 ? -1 : t + loadMs + keep,
          size,
          // No GPU at all (a CPU-only box): the whole model is in system RAM, and Ollama says size_vram 0.
          sizeVram: gpus.length === 0 ? 0 : Math.max(0, Math.min(size, freeBytes)),
        });
      });
    }

    const abort = abortOnClose(res);
    this.metrics.running += 1;
    try {
      if (gen.api === 'ollama-generate' && gen.prompt === '' && !gen.system) {
        await delay(loadMs, abort.signal);
        return loadAnswer('load');
      }
      const full = respond({
        model: prof.name,
        prompt: gen.prompt,
        ...(gen.system ? { system: gen.system } : {}),
        behaviour: prof.behaviour,
        json: gen.json,
      });
      let tokens = tokenize(full);
      let reason: 'stop' | 'length' = 'stop';
      if (gen.maxTokens !== undefined && gen.maxTokens >= 0 && tokens.length > gen.maxTokens) {
        tokens = tokens.slice(0, gen.maxTokens);
        reason = 'length';
      }
      const promptTokens = countPromptTokens(`${gen.system ?? ''}${gen.prompt}`);
      const ttftMs = (prof.latency.ttftMs + promptTokens * 0.05) * scale;
      const perTokenMs = (1000 / prof.latency.tokensPerSec) * scale;
      const kind = gen.api === 'openai-chat' ? 'chatcmpl' : 'cmpl';
      const turn: Turn = {
        dialect: dialectOf(engine.type, gen.api),
        api: gen.api,
        // Ollama numbers its ids; llama-server uses 32 random letters and digits, "chatcmpl-" for every API.
        id:
          engine.type === 'ollama'
            ? `${kind}-${Math.floor(Math.random() * 1000)}`
            : engine.type === 'llamacpp'
              ? `chatcmpl-${randomAlnum(32)}`
              : `${kind}-${core.hexOf(`${started}/${Math.random()}`, 32)}`,
        created: Math.floor(started / 1000),
        model: modelName,
        prompt: gen.prompt,
        promptTokens,
        tokens,
        text: '',
        reason,
        started,
        loadMs,
        firstTokenAt: started,
        ended: started,
        includeUsage: gen.includeUsage,
        slot: -1,
        params: llamaParams({
          ...(gen.maxTokens !== undefined ? { n_predict: gen.maxTokens } : {}),
          ...gen.sampling,
          stream: gen.stream,
        }),
      };
      const slot = engine.type === 'llamacpp' ? this.claimSlot(turn) : undefined;

      // Headers go out with the first token, as the real servers flush them: a client's time-to-first-byte is the TTFT.
      const write = (chunk: string): void => {
        if (!res.headersSent) {
          res.writeHead(
            200,
            ollama
              ? { 'Content-Type': 'application/x-ndjson' }
              : { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' },
          );
        }
        res.write(chunk);
      };
      try {
        await delay(loadMs + ttftMs, abort.signal);
        turn.firstTokenAt = Date.now();
        if (gen.stream) for (const c of streamHead(turn)) write(c);
        for (let i = 0; i < tokens.length; i++) {
          if (i > 0) await delay(perTokenMs, abort.signal);
          const tok = tokens[i] ?? '';
          turn.text += tok;
          if (slot) slot.decoded = i + 1;
          if (gen.stream) write(streamToken(turn, tok, i));
        }
      } finally {
        if (slot) slot.processing = false;
      }
      turn.ended = Date.now();
      const evalCount = tokens.length;
      this.metrics.tokensMax = Math.max(this.metrics.tokensMax, promptTokens + evalCount);
      this.record(
        promptTokens,
        evalCount,
        turn.firstTokenAt - started,
        turn.ended - started,
        turn.ended - turn.firstTokenAt,
        reason,
      );
      if (!gen.stream) {
        const contentType = turn.dialect === 'ollama-openai' ? OLLAMA_OPENAI_JSON : undefined;
        return sendJson(reply, 200, answerOf(turn), contentType);
      }
      for (const c of streamTail(turn)) write(c);
      return void res.end();
    } catch (err) {
      if (abort.signal.aborted) return;
      throw err;
    } finally {
      this.metrics.running -= 1;
      abort.dispose();
      if (gen.keepAliveMs === 0 && engine.type === 'ollama') {
        this.opts.store.update((s) => {
          const e = this.engine(s);
          e.loaded = e.loaded.filter((l) => l.model !== prof.name);
        });
      }
    }
  }

  /** Put a llama.cpp generation into a free slot (none free: it runs deferred, in no slot). */
  private claimSlot(turn: Turn): LlamaSlot | undefined {
    const slot = this.slots.find((s) => !s.processing);
    if (!slot) return undefined;
    Object.assign(slot, {
      processing: true,
      idTask: this.tasks++,
      promptTokens: turn.promptTokens,
      decoded: 0,
      nPredict: typeof turn.params.n_predict === 'number' ? turn.params.n_predict : -1,
      params: turn.params,
    });
    turn.slot = slot.id;
    return slot;
  }

  private record(
    promptTokens: number,
    evalCount: number,
    ttftMs: number,
    e2eMs: number,
    genMs: number,
    reason: string,
  ): void {
    const m = this.metrics;
    m.promptTokens += promptTokens;
    m.generationTokens += evalCount;
    m.promptSeconds += ttftMs / 1000;
    m.generationSeconds += genMs / 1000;
    m.decodes += evalCount + 1;
    m.success[reason] = (m.success[reason] ?? 0) + 1;
    m.ttft.observe(ttftMs / 1000);
    m.e2e.observe(e2eMs / 1000);
  }
}

// -------------------------------------------------------------------------------------------------------------
// Helpers

function parseJson(body: string): Record<string, unknown> {
  if (body.trim() === '') return {};
  try {
    const v: unknown = JSON.parse(body);
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw new HttpError(400, 'invalid JSON body');
}

/**
 * Content type of Ollama's OpenAI-compatible answers (its /v1 middleware sets it without a charset; only requests
 * it cannot parse get gin's own "application/json; charset=utf-8").
 */
const OLLAMA_OPENAI_JSON = 'application/json';

/** Answer JSON, through fastify or, once a handler took the raw response over (a generation), on it directly. */
function sendJson(
  reply: FastifyReply,
  status: number,
  body: unknown,
  contentType = 'application/json; charset=utf-8',
): void {
  const res = reply.raw;
  // A stream already began: it can only end.
  if (res.headersSent) return void res.end();
  const text = JSON.stringify(body);
  // As a Buffer: fastify would add a charset to a JSON string's content type, and Ollama's /v1 sends none.
  if (!reply.sent) return void reply.code(status).header('content-type', contentType).send(Buffer.from(text));
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function sse(obj: unknown): string {
  return `data: ${JSON.stringify(obj)}\n\n`;
}

/** One chunk of a vLLM stream (a chat delta carries the role on the first and the finishing chunk). */
function vllmChunk(
  api: Api,
  id: string,
  created: number,
  model: string,
  content: string,
  finish: string | null,
  first: boolean,
): Record<string, unknown> {
  const base = { id, created, model };
  if (api === 'openai-chat') {
    return {
      ...base,
      object: 'chat.completion.chunk',
      choices: [
        {
          index: 0,
          delta: { ...(first || finish ? { role: 'assistant' } : {}), content },
          logprobs: null,
          finish_reason: finish,
        },
      ],
    };
  }
  return {
    ...base,
    object: 'text_completion',
    choices: [{ index: 0, text: content, logprobs: null, finish_reason: finish }],
  };
}

// -------------------------------------------------------------------------------------------------------------
// Answer formats: one dialect per engine type and API, each what the real engine sends.

/** Which engine's format an answer takes. */
type Dialect = 'ollama' | 'ollama-openai' | 'llama' | 'llama-openai' | 'vllm';

function dialectOf(type: EngineSim['type'], api: Api): Dialect {
  if (api === 'ollama-generate' || api === 'ollama-chat') return 'ollama';
  if (api === 'llama-completion') return 'llama';
  if (type === 'ollama') return 'ollama-openai';
  return type === 'llamacpp' ? 'llama-openai' : 'vllm';
}

/** One generation as the formats need it. */
interface Turn {
  dialect: Dialect;
  api: Api;
  id: string;
  /** Unix seconds. */
  created: number;
  model: string;
  prompt: string;
  promptTokens: number;
  tokens: string[];
  /** The text generated so far. */
  text: string;
  reason: 'stop' | 'length';
  /** ms since epoch: request received, first token, last token. */
  started: number;
  firstTokenAt: number;
  ended: number;
  loadMs: number;
  includeUsage: boolean;
  /** llama.cpp slot the generation ran in (-1: none). */
  slot: number;
  /** llama.cpp sampling parameters (generation_settings). */
  params: Record<string, unknown>;
}

function usageOf(t: Turn): Record<string, unknown> {
  const usage = {
    prompt_tokens: t.promptTokens,
    completion_tokens: t.tokens.length,
    total_tokens: t.promptTokens + t.tokens.length,
  };
  if (t.dialect !== 'llama-openai') return usage;
  return {
    completion_tokens: usage.completion_tokens,
    prompt_tokens: usage.prompt_tokens,
    total_tokens: usage.total_tokens,
    prompt_tokens_details: { cached_tokens: 0 },
  };
}

/** llama-server's `timings`: prompt processing and generation, counts and milliseconds. */
function llamaTimings(t: Turn): Record<string, number> {
  const promptMs = Math.max(0, t.firstTokenAt - t.started - t.loadMs);
  const predictedMs = Math.max(0, t.ended - t.firstTokenAt);
  const n = t.tokens.length;
  return {
    cache_n: 0,
    prompt_n: t.promptTokens,
    prompt_ms: promptMs,
    prompt_per_token_ms: t.promptTokens > 0 ? promptMs / t.promptTokens : 0,
    prompt_per_second: promptMs > 0 ? (t.promptTokens * 1000) / promptMs : 0,
    predicted_n: n,
    predicted_ms: predictedMs,
    predicted_per_token_ms: n > 0 ? predictedMs / n : 0,
    predicted_per_second: predictedMs > 0 ? (n * 1000) / predictedMs : 0,
  };
}

/** A stable stand-in token id for a piece of text (the simulated models have no real vocabulary). */
function tokenId(piece: string): number {
  return parseInt(core.hexOf(piece, 8), 16) % 151936;
}

function llamaChatChunk(t: Turn, delta: Record<string, unknown>, finish: string | null): Record<string, unknown> {
  return {
    choices: [{ finish_reason: finish, index: 0, delta }],
    created: t.created,
    id: t.id,
    model: t.model,
    system_fingerprint: LLAMA_BUILD,
    object: 'chat.completion.chunk',
  };
}

function llamaTextChunk(t: Turn, text: string, finish: string | null): Record<string, unknown> {
  return {
    choices: [{ text, index: 0, logprobs: null, finish_reason: finish }],
    created: t.created,
    model: t.model,
    system_fingerprint: LLAMA_BUILD,
    object: 'text_completion',
    id: t.id,
  };
}

/** The last object of llama-server's /completion: the whole answer (or, streaming, none of it) and its settings. */
function llamaFinal(t: Turn, content: string): Record<string, unknown> {
  return {
    index: 0,
    content,
    tokens: [],
    id_slot: t.slot,
    stop: true,
    model: t.model,
    tokens_predicted: t.tokens.length,
    tokens_evaluated: t.promptTokens,
    generation_settings: llamaGenerationSettings(t.params),
    prompt: t.prompt,
    has_new_line: t.text.includes('\n'),
    truncated: false,
    stop_type: t.reason === 'length' ? 'limit' : 'eos',
    stopping_word: '',
    tokens_cached: t.promptTokens + t.tokens.length,
    timings: llamaTimings(t),
  };
}

function ollamaOpenaiChunk(t: Turn, content: string, finish: string | null): Record<string, unknown> {
  const head = { id: t.id, object: t.api === 'openai-chat' ? 'chat.completion.chunk' : 'text_completion' };
  if (t.api === 'openai-chat') {
    return {
      ...head,
      created: t.created,
      model: t.model,
      system_fingerprint: 'fp_ollama',
      choices: [{ index: 0, delta: { role: 'assistant', content }, finish_reason: finish }],
    };
  }
  return {
    ...head,
    created: t.created,
    choices: [{ text: content, index: 0, finish_reason: finish }],
    model: t.model,
    system_fingerprint: 'fp_ollama',
  };
}

/** The final object of an Ollama generate/chat: done, why, and the timing counters (ns). */
function ollamaFinal(t: Turn, content: string): Record<string, unknown> {
  return {
    model: t.model,
    created_at: ollamaTime(t.ended),
    ...(t.api === 'ollama-chat' ? { message: { role: 'assistant', content } } : { response: content }),
    done: true,
    done_reason: t.reason,
    ...(t.api === 'ollama-generate'
      ? {
          context: Array.from(
            { length: Math.min(t.promptTokens + t.tokens.length, 64) },
            (_, k) => 128000 + ((k * 7919) % 20000),
          ),
        }
      : {}),
    total_duration: (t.ended - t.started) * NS_PER_MS,
    load_duration: Math.round(t.loadMs * NS_PER_MS),
    prompt_eval_count: t.promptTokens,
    prompt_eval_duration: Math.max(1, Math.round((t.firstTokenAt - t.started - t.loadMs) * NS_PER_MS)),
    eval_count: t.tokens.length,
    eval_duration: Math.max(1, (t.ended - t.firstTokenAt) * NS_PER_MS),
  };
}

/** What a stream sends before its first token: llama-server's chat role chunk (content null). */
function streamHead(t: Turn): string[] {
  if (t.dialect === 'llama-openai' && t.api === 'openai-chat') {
    return [sse(llamaChatChunk(t, { role: 'assistant', content: null }, null))];
  }
  return [];
}

/** The stream chunk carrying token `i`. */
function streamToken(t: Turn, tok: string, i: number): string {
  switch (t.dialect) {
    case 'ollama': {
      const at = ollamaTime(Date.now());
      const piece = t.api === 'ollama-chat' ? { message: { role: 'assistant', content: tok } } : { response: tok };
      return `${JSON.stringify({ model: t.model, created_at: at, ...piece, done: false })}\n`;
    }
    case 'ollama-openai':
      return sse(ollamaOpenaiChunk(t, tok, null));
    case 'llama':
      return sse({
        index: 0,
        content: tok,
        tokens: [tokenId(tok)],
        stop: false,
        id_slot: -1,
        tokens_predicted: i + 1,
        tokens_evaluated: t.promptTokens,
      });
    case 'llama-openai':
      return sse(t.api === 'openai-chat' ? llamaChatChunk(t, { content: tok }, null) : llamaTextChunk(t, tok, null));
    case 'vllm':
      return sse(vllmChunk(t.api, t.id, t.created, t.model, tok, null, i === 0));
  }
}

/** What a stream ends with: the final object(s), usage where asked for, the [DONE] marker of OpenAI streams. */
function streamTail(t: Turn): string[] {
  const done = 'data: [DONE]\n\n';
  const object = t.api === 'openai-chat' ? 'chat.completion.chunk' : 'text_completion';
  switch (t.dialect) {
    case 'ollama':
      return [`${JSON.stringify(ollamaFinal(t, ''))}\n`];
    case 'llama':
      return [sse(llamaFinal(t, ''))];
    case 'ollama-openai': {
      const usage = { id: t.id, object, created: t.created, model: t.model, system_fingerprint: 'fp_ollama' };
      return [
        sse(ollamaOpenaiChunk(t, '', t.reason)),
        ...(t.includeUsage ? [sse({ ...usage, choices: [], usage: usageOf(t) })] : []),
        done,
      ];
    }
    case 'llama-openai': {
      if (t.api === 'openai-completion') {
        // The last completion chunk always carries usage and timings.
        return [sse({ ...llamaTextChunk(t, '', t.reason), usage: usageOf(t), timings: llamaTimings(t) }), done];
      }
      // Timings ride on the finish chunk, or on the usage chunk when there is one.
      const finish = llamaChatChunk(t, {}, t.reason);
      if (!t.includeUsage) return [sse({ ...finish, timings: llamaTimings(t) }), done];
      const usage = { ...llamaChatChunk(t, {}, null), choices: [], usage: usageOf(t), timings: llamaTimings(t) };
      return [sse(finish), sse(usage), done];
    }
    case 'vllm':
      return [
        sse(vllmChunk(t.api, t.id, t.created, t.model, '', t.reason, t.tokens.length === 0)),
        ...(t.includeUsage
          ? [sse({ id: t.id, object, created: t.created, model: t.model, choices: [], usage: usageOf(t) })]
          : []),
        done,
      ];
  }
}

/** A non-streaming answer. */
function answerOf(t: Turn): Record<string, unknown> {
  const chat = t.api === 'openai-chat';
  switch (t.dialect) {
    case 'ollama':
      return ollamaFinal(t, t.text);
    case 'llama':
      return llamaFinal(t, t.text);
    case 'ollama-openai':
      return openaiAnswer(
        t,
        { system_fingerprint: 'fp_ollama' },
        chat
          ? { index: 0, message: { role: 'assistant', content: t.text }, finish_reason: t.reason }
          : { text: t.text, index: 0, finish_reason: t.reason },
      );
    case 'llama-openai':
      return {
        choices: [
          chat
            ? { finish_reason: t.reason, index: 0, message: { role: 'assistant', content: t.text } }
            : { text: t.text, index: 0, logprobs: null, finish_reason: t.reason },
        ],
        created: t.created,
        model: t.model,
        system_fingerprint: LLAMA_BUILD,
        object: chat ? 'chat.completion' : 'text_completion',
        usage: usageOf(t),
        id: t.id,
        timings: llamaTimings(t),
      };
    case 'vllm':
      return openaiAnswer(
        t,
        {},
        chat
          ? { index: 0, message: { role: 'assistant', content: t.text }, logprobs: null, finish_reason: t.reason }
          : { index: 0, text: t.text, logprobs: null, finish_reason: t.reason },
      );
  }
}

/**
 * A non-streaming OpenAI-format answer laid out as Ollama and vLLM lay it out: id, object, created, model, then the
 * engine's own top-level `extra` fields, the one choice, usage. (llama-server orders its keys its own way.)
 */
function openaiAnswer(
  t: Turn,
  extra: Record<string, unknown>,
  choice: Record<string, unknown>,
): Record<string, unknown> {
  return {
    id: t.id,
    object: t.api === 'openai-chat' ? 'chat.completion' : 'text_completion',
    created: t.created,
    model: t.model,
    ...extra,
    choices: [choice],
    usage: usageOf(t),
  };
}

// -------------------------------------------------------------------------------------------------------------
// llama.cpp settings and slots

/** What llama-server says when a request body is not JSON (nlohmann::json's parse error). */
const LLAMA_PARSE_ERROR =
  '[json.exception.parse_error.101] parse error at line 1, column 1: syntax error while parsing value - invalid literal';
/** What llama-server says when a completion request has no prompt. */
const LLAMA_NO_PROMPT = "[json.exception.out_of_range.403] key 'prompt' not found";

/** The chat template a Qwen2.5 GGUF carries (what /props shows). */
const QWEN_CHAT_TEMPLATE =
  "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/** Sampling parameters a request set, for llama.cpp's echo of them. */
function samplingOf(req: Record<string, unknown>): NonNullable<GenRequest['sampling']> {
  return {
    ...(typeof req.temperature === 'number' ? { temperature: req.temperature } : {}),
    ...(typeof req.seed === 'number' ? { seed: req.seed } : {}),
    ...(typeof req.ignore_eos === 'boolean' ? { ignoreEos: req.ignore_eos } : {}),
  };
}

/** llama-server's sampling parameters (/props default_generation_settings.params, /slots params), real key order. */
function llamaParams(
  over: { n_predict?: number; stream?: boolean } & NonNullable<GenRequest['sampling']>,
): Record<string, unknown> {
  const nPredict = over.n_predict ?? -1;
  return {
    seed: over.seed ?? 4294967295,
    temperature: over.temperature ?? 0.8,
    dynatemp_range: 0,
    dynatemp_exponent: 1,
    top_k: 40,
    top_p: 0.95,
    min_p: 0.05,
    top_n_sigma: -1,
    xtc_probability: 0,
    xtc_threshold: 0.1,
    typical_p: 1,
    repeat_last_n: 64,
    repeat_penalty: 1,
    presence_penalty: 0,
    frequency_penalty: 0,
    dry_multiplier: 0,
    dry_base: 1.75,
    dry_allowed_length: 2,
    dry_penalty_last_n: 64,
    mirostat: 0,
    mirostat_tau: 5,
    mirostat_eta: 0.1,
    adaptive_target: -1,
    adaptive_decay: 0.9,
    max_tokens: nPredict,
    n_predict: nPredict,
    n_keep: 0,
    n_discard: 0,
    ignore_eos: over.ignoreEos ?? false,
    stream: over.stream ?? false,
    n_probs: 0,
    min_keep: 0,
    chat_format: 'Content-only',
    reasoning_format: 'none',
    reasoning_in_content: false,
    generation_prompt: '',
    samplers: ['penalties', 'dry', 'top_n_sigma', 'top_k', 'typ_p', 'top_p', 'min_p', 'xtc', 'temperature'],
    'speculative.types': 'none',
    timings_per_token: false,
    post_sampling_probs: false,
    backend_sampling: false,
    lora: [],
  };
}

/** generation_settings of a /completion answer: the parameters plus the request's stop words, biases and grammar. */
function llamaGenerationSettings(params: Record<string, unknown>): Record<string, unknown> {
  return {
    ...params,
    dry_sequence_breakers: ['\n', ':', '"', '*'],
    stop: [],
    logit_bias: [],
    grammar: '',
    grammar_lazy: false,
    grammar_triggers: [],
    preserved_tokens: [],
  };
}

/** One slot as GET /slots shows it: a slot that ran a task keeps showing that task's figures and parameters. */
function slotView(s: LlamaSlot, nCtx: number): Record<string, unknown> {
  const base = { id: s.id, n_ctx: nCtx, speculative: false, is_processing: s.processing };
  if (s.idTask === undefined) return base;
  return {
    ...base,
    id_task: s.idTask,
    // The slot's cached sequence: the prompt and what was generated after it.
    n_prompt_tokens: s.promptTokens + s.decoded,
    n_prompt_tokens_processed: s.processing ? s.promptTokens : 0,
    n_prompt_tokens_cache: 0,
    params: s.params,
    next_token: [
      {
        has_next_token: s.processing,
        has_new_line: false,
        n_remain: s.processing && s.nPredict >= 0 ? s.nPredict - s.decoded : -1,
        n_decoded: s.processing ? s.decoded : 0,
      },
    ],
  };
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function randomAlnum(n: number): string {
  return Array.from({ length: n }, () => ALNUM[Math.floor(Math.random() * ALNUM.length)]).join('');
}

/** Abort signal that fires when the client disconnects before the response is complete. */
function abortOnClose(res: http.ServerResponse): { signal: AbortSignal; dispose: () => void } {
  const ac = new AbortController();
  const onClose = (): void => {
    if (!res.writableFinished) ac.abort();
  };
  res.on('close', onClose);
  return { signal: ac.signal, dispose: () => res.off('close', onClose) };
}

function ollamaTime(ms: number): string {
  return core.isoNano(ms);
}

function details(prof: ModelProfile): Record<string, unknown> {
  return {
    parent_model: '',
    format: prof.format,
    family: prof.family,
    families: prof.families,
    parameter_size: prof.parameterSize,
    quantization_level: prof.quantization,
  };
}

function showModel(prof: ModelProfile): Record<string, unknown> {
  const params = Math.round(parseFloat(prof.parameterSize) * (prof.parameterSize.endsWith('M') ? 1e6 : 1e9));
  const template =
    prof.family === 'qwen2'
      ? '{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n'
      : '<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n';
  const stop =
    prof.family === 'qwen2'
      ? 'stop                           "<|im_end|>"'
      : 'stop                           "<|eot_id|>"';
  return {
    license: 'Apache License\nVersion 2.0, January 2004',
    modelfile: `# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM ${prof.name}\n\nFROM /root/.ollama/models/blobs/sha256-${prof.layers[0]?.digest ?? prof.digest}\nTEMPLATE """${template}"""\nPARAMETER ${stop.replace(/\s+/, ' ')}\n`,
    parameters: stop,
    template,
    details: details(prof),
    model_info: {
      'general.architecture': prof.family,
      'general.basename': prof.name.split(':')[0],
      'general.file_type': 15,
      'general.parameter_count': params,
      'general.quantization_version': 2,
      [`${prof.family}.attention.head_count`]: 14,
      [`${prof.family}.attention.head_count_kv`]: 2,
      [`${prof.family}.attention.layer_norm_rms_epsilon`]: 0.000001,
      [`${prof.family}.block_count`]: SHOW_BLOCKS,
      [`${prof.family}.context_length`]: prof.contextLength,
      [`${prof.family}.embedding_length`]: 896,
      [`${prof.family}.feed_forward_length`]: 4864,
      [`${prof.family}.rope.freq_base`]: 1000000,
      // Ollama answers the tokenizer's big arrays with null unless asked for verbose output.
      'tokenizer.ggml.add_bos_token': false,
      'tokenizer.ggml.bos_token_id': 151643,
      'tokenizer.ggml.eos_token_id': 151645,
      'tokenizer.ggml.merges': null,
      'tokenizer.ggml.model': 'gpt2',
      'tokenizer.ggml.padding_token_id': 151643,
      'tokenizer.ggml.pre': prof.family,
      'tokenizer.ggml.token_type': null,
      'tokenizer.ggml.tokens': null,
    },
    tensors: showTensors(),
    capabilities: ['completion'],
    modified_at: ollamaTime(prof.modifiedAt),
  };
}

const SHOW_BLOCKS = 24;

/** /api/show `tensors`: name, GGML type and shape of each weight (a Qwen2-0.5B-like Q4_K_M layout). */
function showTensors(): { name: string; type: string; shape: number[] }[] {
  const t = (name: string, type: string, ...shape: number[]) => ({ name, type, shape });
  const blocks = Array.from({ length: SHOW_BLOCKS }, (_, i) => [
    t(`blk.${i}.attn_norm.weight`, 'F32', 896),
    t(`blk.${i}.attn_q.weight`, 'Q5_0', 896, 896),
    t(`blk.${i}.attn_k.weight`, 'Q5_0', 896, 128),
    t(`blk.${i}.attn_v.weight`, 'Q8_0', 896, 128),
    t(`blk.${i}.attn_output.weight`, 'Q5_0', 896, 896),
    t(`blk.${i}.ffn_norm.weight`, 'F32', 896),
    t(`blk.${i}.ffn_gate.weight`, 'Q5_0', 896, 4864),
    t(`blk.${i}.ffn_up.weight`, 'Q5_0', 896, 4864),
    t(`blk.${i}.ffn_down.weight`, 'Q4_K', 4864, 896),
  ]).flat();
  return [t('token_embd.weight', 'Q8_0', 896, 151936), t('output_norm.weight', 'F32', 896), ...blocks];
}

function chatPrompt(messages: Record<string, unknown>[]): { prompt: string; system?: string } {
  const system = messages
    .filter((m) => m.role === 'system')
    .map((m) => textOf(m.content))
    .join('\n');
  const lastUser = [...messages].reverse().find((m) => m.role === 'user');
  return { prompt: textOf(lastUser?.content), ...(system ? { system } : {}) };
}

/**
 * A generation request of Ollama's own API (/api/generate, /api/chat): both read model, stream, options.num_predict,
 * format and keep_alive the same way; only where the prompt comes from differs.
 */
function ollamaGenRequest(
  api: 'ollama-generate' | 'ollama-chat',
  req: Record<string, unknown>,
  prompt: { prompt: string; system?: string },
): GenRequest {
  return {
    api,
    model: String(req.model ?? ''),
    ...prompt,
    stream: req.stream !== false,
    ...maxTokensOf(req.options),
    json: req.format === 'json' || (typeof req.format === 'object' && req.format !== null),
    ...keepAliveOf(req.keep_alive),
    includeUsage: false,
  };
}

function maxTokensOf(options: unknown): { maxTokens?: number } {
  if (options && typeof options === 'object' && 'num_predict' in options && typeof options.num_predict === 'number') {
    return options.num_predict >= 0 ? { maxTokens: options.num_predict } : {};
  }
  return {};
}

function keepAliveOf(v: unknown): { keepAliveMs?: number } {
  const ms = parseKeepAlive(v);
  return ms === undefined ? {} : { keepAliveMs: ms };
}

function authorized(engine: EngineSim, req: FastifyRequest): boolean {
  if (!engine.apiKeyFile) return true;
  let key: string;
  try {
    key = readFileSync(engine.apiKeyFile, 'utf8').trim();
  } catch {
    return true; // no key file on this machine: the engine was started without --api-key
  }
  return req.headers.authorization === `Bearer ${key}`;
}

/**
 * Keep an Ollama-style model store on disk (manifests plus small placeholder blobs) so backups of the model store
 * have real files to copy. Blob contents are stand-ins: the sandbox does not ship model weights.
 */
export function writeManifest(storeDir: string, prof: ModelProfile): void {
  const [repo, tag] = prof.name.includes(':') ? prof.name.split(':') : [prof.name, 'latest'];
  const dir = path.join(storeDir, 'manifests', 'registry.ollama.ai', 'library', repo ?? prof.name);
  mkdirSync(dir, { recursive: true });
  mkdirSync(path.join(storeDir, 'blobs'), { recursive: true });
  const manifest = {
    schemaVersion: 2,
    mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
    config: {
      mediaType: 'application/vnd.docker.container.image.v1+json',
      digest: `sha256:${core.hexOf(`${prof.name}/config`, 64)}`,
      size: 487,
    },
    layers: prof.layers.map((l) => ({ mediaType: l.mediaType, digest: `sha256:${l.digest}`, size: l.size })),
  };
  writeFileSync(path.join(dir, tag ?? 'latest'), JSON.stringify(manifest));
  for (const l of prof.layers) {
    writeFileSync(
      path.join(storeDir, 'blobs', `sha256-${l.digest}`),
      `gpuops sandbox placeholder for ${prof.name} ${l.mediaType} (${l.size} bytes)\n`,
    );
  }
}

function removeManifest(storeDir: string, name: string): void {
  const [repo, tag] = name.split(':');
  rmSync(path.join(storeDir, 'manifests', 'registry.ollama.ai', 'library', repo ?? name, tag ?? 'latest'), {
    force: true,
  });
}
