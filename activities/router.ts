/**
 * Control-side activities that talk to the inference router's admin API (bearer token from router.adminTokenFile,
 * read here and never logged). Escalation drains a sick node's engines, so aliases served elsewhere fail over.
 */
import { readFile } from 'node:fs/promises';
import { ApplicationFailure } from '@temporalio/common';
import type { Config } from '../src/config/schema';
import { applyRouteOp, sameRoute, type RouteOp } from '../src/domain/route-ops';
import type { AliasRoute } from '../src/router/routes';
import type { AliasStats } from '../src/router/stats';

export interface RouterActivityDeps {
  config: Config;
  resolvePath?: (p: string) => string;
  timeoutMs?: number;
}

export interface DrainResult {
  /** Engine URLs the router now has drained. */
  drained: string[];
  /** Why nothing (or not everything) was drained, for the incident record. */
  note: string | null;
}

export function createRouterActivities({ config, resolvePath = (p) => p, timeoutMs = 10_000 }: RouterActivityDeps) {
  async function setDrained(engines: string[], drain: boolean): Promise<DrainResult> {
    const base = `http://${config.router.listen.replace(/^0\.0\.0\.0:/, '127.0.0.1:')}`;
    if (!config.router.adminTokenFile) {
      return { drained: [], note: 'router admin API not configured (router.adminTokenFile): router left as is' };
    }
    const token = (await readFile(resolvePath(config.router.adminTokenFile), 'utf8')).trim();
    const done: string[] = [];
    const failed: string[] = [];
    for (const engine of engines) {
      try {
        const res = await fetch(`${base}/admin/${drain ? 'drain' : 'undrain'}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ engine }),
          signal: AbortSignal.timeout(timeoutMs),
        });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        done.push(engine);
      } catch (err) {
        failed.push(`${engine}: ${(err as Error).message}`);
      }
    }
    return { drained: done, note: failed.length ? `router ${base} refused: ${failed.join('; ')}` : null };
  }

  const routerBase = (): string => `http://${config.router.listen.replace(/^0\.0\.0\.0:/, '127.0.0.1:')}`;

  /** One admin call. 409/400/404 are answers no retry changes: they fail non-retryably, typed for workflows. */
  async function admin<T>(method: string, p: string, opts: { body?: unknown; ifMatch?: string; actor?: string } = {}) {
    if (!config.router.adminTokenFile) {
      throw ApplicationFailure.nonRetryable(
        'router admin API not configured (router.adminTokenFile)',
        'RouterNotConfigured',
      );
    }
    const token = (await readFile(resolvePath(config.router.adminTokenFile), 'utf8')).trim();
    const res = await fetch(`${routerBase()}/admin${p}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(opts.ifMatch ? { 'if-match': opts.ifMatch } : {}),
        ...(opts.actor ? { 'x-gpuops-actor': opts.actor } : {}),
      },
      ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    if (res.ok) return JSON.parse(text) as T;
    const type = {
      409: 'RouteConflict',
      412: 'RouteConflict',
      400: 'InvalidRoutes',
      404: 'UnknownAlias',
      401: 'RouterUnauthorized',
    }[res.status];
    const message = `router ${method} /admin${p}: HTTP ${res.status}: ${text.slice(0, 500)}`;
    if (type) throw ApplicationFailure.nonRetryable(message, type);
    throw new Error(message);
  }

  return {
    /** Take a node's engines out of the router (idempotent: draining a drained engine changes nothing). */
    async drainEngines(input: { node: string; engines: string[]; reason: string }): Promise<DrainResult> {
      return setDrained(input.engines, true);
    },
    /** Put a recovered node's engines back into the router. */
    async undrainEngines(input: { node: string; engines: string[] }): Promise<DrainResult> {
      return setDrained(input.engines, false);
    },

    /**
     * Put back the engines the router drained by itself (POST /admin/auto-drain/release): watchNode calls it when
     * it sees the node healthy after an unhealthy probe. Operator drains stay. A router that is not configured,
     * unreachable or too old to know the call is a note, never a failure: the watcher goes on probing.
     */
    async releaseAutoDrain(input: { node: string; engines: string[] }): Promise<AutoDrainRelease> {
      if (input.engines.length === 0) return { released: [], note: 'node has no engines' };
      try {
        const r = await admin<{ released: string[] }>('POST', '/auto-drain/release', {
          body: { node: input.node, engines: input.engines },
          actor: `watch:${input.node}`,
        });
        return { released: r.released, note: null };
      } catch (err) {
        return { released: [], note: (err as Error).message };
      }
    },

    /** The router's route table with its ETag (GET /admin/routes). */
    async getRoutes(): Promise<RoutesDocument> {
      return admin<RoutesDocument>('GET', '/routes');
    },

    /**
     * Replace the route table if it is still at `ifMatch` (compare-and-swap). A stale ETag fails non-retryably with
     * type RouteConflict: the caller re-reads and decides again, never overwrites someone else's change.
     */
    async putRoutes(input: {
      routes: Record<string, AliasRoute>;
      drained: string[];
      ifMatch: string;
      actor: string;
    }): Promise<RoutesDocument> {
      return admin<RoutesDocument>('PUT', '/routes', {
        body: { routes: input.routes, drained: input.drained },
        ifMatch: input.ifMatch,
        actor: input.actor,
      });
    },

    /**
     * Apply one route operation (src/domain/route-ops) to an alias: read the table, apply `op`, PUT it back with
     * If-Match. Idempotent: an operation already applied writes nothing. A concurrent change between the read and
     * the write (the router answers 409; 412 too, as HTTP has it) fails *retryably* as RouteConflict, so the
     * activity's retry policy reads again and applies `op` to the new table; nobody else's change is overwritten.
     */
    async changeRoute(input: { alias: string; op: RouteOp; actor: string }): Promise<RouteChange> {
      const doc = await admin<RoutesDocument>('GET', '/routes');
      const route = doc.routes[input.alias];
      if (!route) throw ApplicationFailure.nonRetryable(`alias ${input.alias} is not in the router`, 'UnknownAlias');
      const next = applyRouteOp(route, input.op);
      if (next === null || sameRoute(next, route)) return { changed: false, version: doc.version };
      try {
        const put = await admin<RoutesDocument>('PUT', '/routes', {
          body: { routes: { ...doc.routes, [input.alias]: next }, drained: doc.drained },
          ifMatch: doc.etag,
          actor: input.actor,
        });
        return { changed: true, version: put.version };
      } catch (err) {
        if (err instanceof ApplicationFailure && err.type === 'RouteConflict') {
          throw ApplicationFailure.retryable(err.message, 'RouteConflict');
        }
        throw err;
      }
    },

    /** Atomically set the named variants' weights of one alias (idempotent). */
    async setWeights(input: {
      alias: string;
      weights: Record<string, number>;
      actor: string;
    }): Promise<RoutesDocument> {
      return admin<RoutesDocument>('PATCH', `/routes/${encodeURIComponent(input.alias)}/weights`, {
        body: { weights: input.weights },
        actor: input.actor,
      });
    },

    /** Windowed per-variant stats of one alias (window such as "30s" or "2500ms"). */
    async getStats(input: { alias: string; window: string }): Promise<AliasStats> {
      const q = new URLSearchParams({ alias: input.alias, window: input.window });
      return admin<AliasStats>('GET', `/stats?${q.toString()}`);
    },

    /**
     * Send `count` synthetic requests for `alias` through the router's client endpoint (Ollama /api/generate), so a
     * canary step has samples when real traffic is thin. Engine errors are what the router measures, not failures
     * of this activity; the answer counts them by HTTP status.
     */
    async sendSyntheticTraffic(input: {
      alias: string;
      prompts: string[];
      count: number;
      concurrency?: number;
      maxTokens?: number;
      /** The API to send through the router: Ollama's (default) or OpenAI's, which every engine type speaks. */
      api?: 'ollama' | 'openai';
    }): Promise<{ sent: number; byStatus: Record<string, number> }> {
      const byStatus: Record<string, number> = {};
      let next = 0;
      const maxTokens = input.maxTokens ?? 16;
      const worker = async (): Promise<void> => {
        while (next < input.count) {
          const i = next++;
          const prompt = input.prompts[i % Math.max(1, input.prompts.length)] ?? 'ping';
          let key: string;
          try {
            const [pathname, body] =
              input.api === 'openai'
                ? [
                    '/v1/chat/completions',
                    { model: input.alias, messages: [{ role: 'user', content: prompt }], max_tokens: maxTokens },
                  ]
                : ['/api/generate', { model: input.alias, prompt, stream: false, options: { num_predict: maxTokens } }];
            const res = await fetch(`${routerBase()}${pathname}`, {
              method: 'POST',
              headers: { 'content-type': 'application/json', 'x-gpuops-synthetic': '1' },
              body: JSON.stringify(body),
              signal: AbortSignal.timeout(timeoutMs * 3),
            });
            await res.arrayBuffer();
            key = String(res.status);
          } catch (err) {
            key = `error: ${(err as Error).name}`;
          }
          byStatus[key] = (byStatus[key] ?? 0) + 1;
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, input.concurrency ?? 4) }, () => worker()));
      return { sent: input.count, byStatus };
    },
  };
}

/** What releaseAutoDrain did. */
export interface AutoDrainRelease {
  /** Engines the router had drained by itself and now routes to again. */
  released: string[];
  /** Why nothing could be released (router not configured or unreachable), for the watcher's status. */
  note: string | null;
}

/** GET /admin/routes, as the router answers it. */
export interface RoutesDocument {
  version: number;
  etag: string;
  updatedAt: string;
  routes: Record<string, AliasRoute>;
  drained: string[];
  /** Engines the router drained by itself (absent from routers older than auto-drain). */
  autoDrained?: { engine: string; node: string; by: 'router'; reason: string; since: string }[];
}

/** What changeRoute did: whether it wrote the table, and the table's version after it. */
export interface RouteChange {
  changed: boolean;
  version: number;
}
