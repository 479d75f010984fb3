/**
 * The inference router: one OpenAI- and Ollama-compatible endpoint in front of the engines, the admin API, and
 * /metrics. `startRouter` is what `gpuops router` and the tests run.
 */
import Fastify, { type FastifyError } from 'fastify';
import { Agent } from 'undici';
import { fastifyLimits, withLimits, type HttpLimits } from '../http-limits';
import { registerAdmin } from './admin';
import { AutoDrainer, type AutoDrainOptions } from './failover';
import { RouterMetrics } from './metrics';
import { API_PATHS, proxyGeneration, type ClientApi, type ProxyDeps } from './proxy';
import { RouteStore, type RouteTableInput } from './routes';
import { ShadowMirror } from './shadow';
import { StatsStore } from './stats';

/** How to run a router. */
export interface RouterOptions {
  /** Listen address (default 127.0.0.1). */
  host?: string;
  /** Listen port; 0 picks a free one (default 8080). */
  port?: number;
  /** Route table persisted across restarts; without it the table lives in memory only. */
  stateFile?: string;
  /** File holding the admin bearer token; without it the admin API refuses every call. */
  adminTokenFile?: string;
  /** Routes to start with when there is no state file yet (a state file always wins: it is the newer truth). */
  initialRoutes?: RouteTableInput;
  /** Longest wait for an engine's first response byte, ms (default 300 000: cold model loads are slow). */
  headersTimeoutMs?: number;
  /** Longest silence inside a streaming response, ms (default 60 000). */
  bodyTimeoutMs?: number;
  /** Samples kept per alias and variant for windowed stats (default 10 000). */
  statsCapacity?: number;
  /** Uniform [0, 1) source for the weighted choice; default Math.random. */
  random?: () => number;
  /** Log sink for admin changes and refusals (default: none). */
  log?: (line: string) => void;
  /** Request size and time limits; unset fields keep ROUTER_LIMITS (idle: the upstream headers timeout + 30 s). */
  limits?: Partial<HttpLimits>;
  /** Engine base URL → node id (gpuops.yaml nodes), for draining a node whose engines all refuse connections. */
  engineNodes?: Record<string, string>;
  /** When the router drains a refusing node by itself (defaults in AUTO_DRAIN_DEFAULTS). */
  autoDrain?: Partial<AutoDrainOptions>;
  /** Longest a shadow copy may run in all, ms, before the router cuts it (default: headersTimeoutMs). */
  shadowDeadlineMs?: number;
}

/**
 * The router's limits. Bodies up to 32 MiB (chat requests carry base64 images). The request timeouts bound only
 * receiving the request: node:http stops timing a request once it has been read, so a healthy stream of any length
 * is never cut by them. What bounds a response is the upstream's own silence (headersTimeoutMs, bodyTimeoutMs) and
 * the idle timeout, which must outlast a cold model load (no byte moves on the client socket while the engine
 * loads): it defaults to the upstream headers timeout plus 30 s, and also ends a response whose client stopped
 * reading.
 */
export const ROUTER_LIMITS: Omit<HttpLimits, 'idleTimeoutMs'> = {
  bodyLimitBytes: 32 * 1024 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  keepAliveTimeoutMs: 5_000,
};

/** A running router. */
export interface RouterHandle {
  /** Base URL of the client endpoint, e.g. http://127.0.0.1:8080. */
  url: string;
  /** Base URL of the admin API (`<url>/admin`). */
  adminUrl: string;
  /** The live route table (for in-process callers and tests). */
  table: RouteStore;
  /** Windowed per-request stats. */
  stats: StatsStore;
  metrics: RouterMetrics;
  /** The router's own drains of refusing nodes. */
  autoDrain: AutoDrainer;
  /** Stop listening, cut open streams, close upstream connections. */
  close(): Promise<void>;
}

/** Start a router; resolves once it listens. */
export async function startRouter(opts: RouterOptions = {}): Promise<RouterHandle> {
  const log = opts.log ?? (() => undefined);
  const table = new RouteStore(opts.stateFile, log);
  if (table.current.version === 0 && opts.initialRoutes) table.replace(opts.initialRoutes);
  const stats = new StatsStore({ ...(opts.statsCapacity !== undefined ? { capacity: opts.statsCapacity } : {}) });
  const metrics = new RouterMetrics();
  metrics.routesChanged(table.current);
  // The mirror (deps.shadow, below) hears of every route change and drain: it cuts the copies they ended.
  table.onChange((snap) => deps.shadow?.routesChanged(snap));
  const autoDrain = new AutoDrainer({
    store: table,
    metrics,
    log,
    onChange: () => deps.shadow?.routesChanged(table.current),
    ...(opts.engineNodes ? { engineNodes: opts.engineNodes } : {}),
    ...(opts.autoDrain ? { options: opts.autoDrain } : {}),
  });
  // Engines stream for minutes; keep-alive connections are reused across requests to cut connect time.
  const dispatcher = new Agent({ keepAliveTimeout: 4_000, connections: 256 });

  const headersTimeoutMs = opts.headersTimeoutMs ?? 300_000;
  const limits = withLimits({ ...ROUTER_LIMITS, idleTimeoutMs: headersTimeoutMs + 30_000 }, opts.limits);
  const app = Fastify({
    logger: false,
    ...fastifyLimits(limits),
    // Open streams must not hold close() hostage.
    forceCloseConnections: true,
  });
  // fastify's own refusals (a body over the limit, a bad Content-Length) in the client API's error shape, naming
  // what was wrong; the admin API has its own handler.
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const status = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    const message =
      err.code === 'FST_ERR_CTP_BODY_TOO_LARGE'
        ? `request body: must be at most ${limits.bodyLimitBytes} bytes`
        : status < 500
          ? `request: ${err.message}`
          : 'internal error';
    if (status >= 500) log(`router: ${req.method} ${req.url}: ${err.message}`);
    const ollama = req.url.startsWith('/api/');
    return reply
      .code(status)
      .send(
        ollama ? { error: message } : { error: { message, type: 'invalid_request_error', param: null, code: null } },
      );
  });
  // Bodies are parsed by the handlers (zod, with the client API's error shape), whatever the content type: Ollama
  // clients and curl -d often send none or a wrong one.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  const deps: ProxyDeps = {
    store: table,
    stats,
    metrics,
    dispatcher,
    random: opts.random ?? Math.random,
    headersTimeoutMs,
    bodyTimeoutMs: opts.bodyTimeoutMs ?? 60_000,
    autoDrain,
    log,
  };
  deps.shadow = new ShadowMirror(deps, { deadlineMs: opts.shadowDeadlineMs ?? headersTimeoutMs });
  for (const [api, p] of Object.entries(API_PATHS) as [ClientApi, string][]) {
    app.post(p, (req, reply) => proxyGeneration(api, req, reply, deps));
  }

  app.get('/v1/models', async () => {
    const snap = table.current;
    const created = Math.floor(Date.parse(snap.updatedAt) / 1000);
    return {
      object: 'list',
      data: Object.keys(snap.routes).map((id) => ({ id, object: 'model', created, owned_by: 'gpuops' })),
    };
  });
  app.get('/api/tags', async () => {
    const snap = table.current;
    // Only aliases an Ollama client can use: native requests go to Ollama variants only.
    const names = Object.entries(snap.routes)
      .filter(([, r]) => r.variants.some((v) => v.engineType === 'ollama'))
      .map(([a]) => a);
    return {
      models: names.map((name) => ({
        name,
        model: name,
        modified_at: snap.updatedAt,
        size: 0,
        digest: '',
        details: { format: '', family: '', families: null, parameter_size: '', quantization_level: '' },
      })),
    };
  });
  app.get('/metrics', async (_req, reply) => {
    const text = await metrics.registry.metrics();
    return reply.header('content-type', metrics.registry.contentType).send(text);
  });
  app.get('/healthz', async () => ({ ok: true, routesVersion: table.current.version }));

  registerAdmin(app, { store: table, stats, metrics, autoDrain, adminTokenFile: opts.adminTokenFile, log });

  const address = await app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 8080 });
  const url = address.replace('://localhost', '://127.0.0.1');
  return {
    url,
    adminUrl: `${url}/admin`,
    table,
    stats,
    metrics,
    autoDrain,
    async close() {
      autoDrain.close();
      deps.shadow?.close();
      await app.close();
      await dispatcher.destroy();
    },
  };
}
