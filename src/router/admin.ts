/**
 * The admin API under /admin: read and atomically replace the route table (with If-Match compare-and-swap), change
 * one alias's weights, drain and undrain engines, release the router's own drains, read windowed stats. Every call needs `Authorization: Bearer
 * <token>` (the token read from router.adminTokenFile, compared in constant time); anything else gets 401 and changes
 * nothing. Every change is logged with who made it and what changed, never the token.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { parseDuration } from '../domain/durations';
import { formatIssues, ValidationError } from '../domain/validation';
import type { AutoDrainer } from './failover';
import type { RouterMetrics } from './metrics';
import {
  etagOf,
  UnknownAliasError,
  VersionConflictError,
  type RouteSnapshot,
  type RouteStore,
  DrainSchema,
} from './routes';
import type { StatsStore } from './stats';

/** What the admin API works on. */
export interface AdminDeps {
  store: RouteStore;
  stats: StatsStore;
  metrics: RouterMetrics;
  /** The router's own drains (listed in GET /admin/routes, released by the watcher or an undrain). */
  autoDrain?: AutoDrainer;
  /** File holding the bearer token; without it every admin call is refused. */
  adminTokenFile: string | undefined;
  log: (line: string) => void;
}

/** Longest stats window (the rings hold at most their capacity anyway). */
const MAX_WINDOW_MS = 24 * 3_600_000;

const StatsQuerySchema = z.strictObject({
  alias: z.string().min(1).optional(),
  window: z
    .string()
    .regex(/^\d+(ms|s|m|h)$/, { message: 'must be a duration such as 30s, 5m or 1h' })
    // zod runs this even when the regex failed; only a well-formed duration is range-checked.
    .refine((w) => !/^\d+(ms|s|m|h)$/.test(w) || (parseDuration(w) > 0 && parseDuration(w) <= MAX_WINDOW_MS), {
      message: 'must be > 0 and at most 24h',
    })
    .default('60s'),
});

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** Constant-time check of an Authorization header against the token file (re-read per call, so rotation works). */
function authorized(header: string | undefined, tokenFile: string | undefined): boolean {
  if (!tokenFile || !header) return false;
  let token: string;
  try {
    token = readFileSync(tokenFile, 'utf8').trim();
  } catch {
    return false;
  }
  if (token === '') return false;
  const m = /^Bearer\s+(.+)$/i.exec(header.trim());
  // Hashing first makes both sides the same length, so timingSafeEqual never leaks the token's length either.
  return timingSafeEqual(digest(m?.[1]?.trim() ?? ''), digest(token)) && m !== null;
}

/**
 * The JSON form of a snapshot, as GET /admin/routes returns it, with the engines the router drained by itself
 * (`autoDrained`: not part of the versioned table; PUT never takes or changes it).
 */
export function routesDocument(snap: RouteSnapshot, autoDrain?: AutoDrainer): Record<string, unknown> {
  return {
    version: snap.version,
    etag: etagOf(snap.version),
    updatedAt: snap.updatedAt,
    routes: snap.routes,
    drained: snap.drained,
    autoDrained: autoDrain?.list() ?? [],
  };
}

/** Body of POST /admin/auto-drain/release: the engines (of a node the watcher saw healthy) to put back. */
const ReleaseSchema = z.strictObject({
  engines: z.array(DrainSchema.shape.engine).min(1, { message: 'must list at least one engine URL' }),
  /** The node, for the log. */
  node: z.string().min(1).max(200).optional(),
});

function parseBody(req: FastifyRequest): unknown {
  const text = Buffer.isBuffer(req.body) ? req.body.toString('utf8') : '';
  try {
    return JSON.parse(text);
  } catch {
    throw new ValidationError('request body', ['(root): must be JSON']);
  }
}

function ifMatch(req: FastifyRequest): string | undefined {
  const h = req.headers['if-match'];
  return typeof h === 'string' ? h : undefined;
}

/** Who asked: the caller's self-description (x-gpuops-actor, e.g. a workflow ID) and address. */
function actor(req: FastifyRequest): string {
  const a = req.headers['x-gpuops-actor'];
  const name = typeof a === 'string' && a.length <= 200 ? a.replace(/[^\x20-\x7e]/g, '?') : 'unnamed';
  return `${name}@${req.ip}`;
}

/** Register the /admin routes on `app`. */
export function registerAdmin(app: FastifyInstance, deps: AdminDeps): void {
  const { store } = deps;

  const changed = (req: FastifyRequest, reply: FastifyReply, before: number, snap: RouteSnapshot, what: string) => {
    if (snap.version !== before) {
      deps.metrics.routesChanged(snap);
      deps.log(`router admin: ${actor(req)} ${req.method} ${req.url}: version ${before} → ${snap.version}: ${what}`);
    }
    void reply.header('etag', etagOf(snap.version)).send(routesDocument(snap, deps.autoDrain));
  };

  app.register(
    (admin, _opts, done) => {
      admin.addHook('onRequest', async (req, reply) => {
        if (!authorized(req.headers.authorization, deps.adminTokenFile)) {
          deps.log(`router admin: refused ${req.method} ${req.url} from ${req.ip} (no or wrong bearer token)`);
          await reply
            .code(401)
            .header('www-authenticate', 'Bearer realm="gpuops-router"')
            .send({
              error: deps.adminTokenFile
                ? 'unauthorized: send Authorization: Bearer <token from router.adminTokenFile>'
                : 'unauthorized: the admin API is disabled (router.adminTokenFile is not set)',
            });
        }
      });

      admin.setErrorHandler((err, _req, reply) => {
        if (err instanceof ValidationError)
          return reply.code(400).send({ error: `invalid ${err.what}`, problems: err.problems });
        if (err instanceof VersionConflictError)
          return reply.code(409).send({
            error: err.message,
            version: err.current,
            etag: etagOf(err.current),
          });
        if (err instanceof UnknownAliasError) return reply.code(404).send({ error: err.message });
        const status = (err as { statusCode?: number }).statusCode;
        if (status && status < 500) return reply.code(status).send({ error: (err as Error).message });
        deps.log(`router admin: ${(err as Error).message}`);
        return reply.code(500).send({ error: 'internal error' });
      });

      admin.get('/routes', async (_req, reply) => {
        const snap = store.current;
        return reply.header('etag', etagOf(snap.version)).send(routesDocument(snap, deps.autoDrain));
      });

      admin.put('/routes', async (req, reply) => {
        const before = store.current.version;
        const snap = store.replace(parseBody(req), ifMatch(req));
        const aliases = Object.entries(snap.routes)
          .map(([a, r]) => `${a}[${r.variants.map((v) => `${v.name}=${v.weight}`).join(',')}]`)
          .join(' ');
        changed(req, reply, before, snap, `routes ${aliases || '(none)'}; drained ${snap.drained.length}`);
      });

      admin.patch<{ Params: { alias: string } }>('/routes/:alias/weights', async (req, reply) => {
        const before = store.current.version;
        const snap = store.patchWeights(req.params.alias, parseBody(req), ifMatch(req));
        const r = snap.routes[req.params.alias];
        changed(
          req,
          reply,
          before,
          snap,
          `${req.params.alias} weights ${r?.variants.map((v) => `${v.name}=${v.weight}`).join(',')}`,
        );
      });

      admin.post('/drain', async (req, reply) => {
        const before = store.current.version;
        const snap = store.setDrained(parseBody(req), true, ifMatch(req));
        changed(req, reply, before, snap, `drained ${snap.drained.join(', ')}`);
      });

      admin.post('/undrain', async (req, reply) => {
        const before = store.current.version;
        const body = parseBody(req);
        const snap = store.setDrained(body, false, ifMatch(req));
        // The operator's word wins over the router's own drain: an undrain releases both, and the engine's refusal
        // count starts over (setDrained validated the body).
        deps.autoDrain?.release([(body as { engine: string }).engine], `operator ${actor(req)}`);
        changed(req, reply, before, snap, `drained ${snap.drained.join(', ') || '(none)'}`);
      });

      admin.post('/auto-drain/release', async (req, reply) => {
        const r = ReleaseSchema.safeParse(parseBody(req));
        if (!r.success) throw new ValidationError('auto-drain release', formatIssues(r.error));
        const who = `${actor(req)}${r.data.node ? ` (node ${r.data.node} healthy)` : ''}`;
        const released = deps.autoDrain?.release(r.data.engines, who) ?? [];
        return reply.send({ released, autoDrained: deps.autoDrain?.list() ?? [] });
      });

      admin.get('/stats', async (req, reply) => {
        const q = StatsQuerySchema.safeParse(req.query);
        if (!q.success) throw new ValidationError('stats query', formatIssues(q.error));
        const windowMs = parseDuration(q.data.window);
        if (q.data.alias) return reply.send(deps.stats.query(q.data.alias, windowMs));
        const aliases = [...new Set([...Object.keys(store.current.routes), ...deps.stats.aliases()])].sort();
        return reply.send({ windowMs, aliases: aliases.map((a) => deps.stats.query(a, windowMs)) });
      });

      done();
    },
    { prefix: '/admin' },
  );
}
