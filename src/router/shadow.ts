/**
 * Shadow mirroring: for an alias whose route has a `shadow`, a share of its requests is sent a second time to the
 * shadow variant, detached from the client's request. The client only ever gets the answer of the variant it was
 * routed to; the copy's answer is read to the end, measured (TTFT, tokens/s, errors, answer length) and dropped. The
 * two measurements of the same request become one pair in the stats, which a deployment's shadow stage analyses
 * exactly as a canary step.
 *
 * The copy never delays or fails the client's request: it starts only once the client's answer has (its first body
 * byte came from the engine), so it never competes with the client's own first token; it is never awaited, its
 * errors end up in the stats only; at most `maxConcurrent` copies per alias are in flight (a request over the cap is
 * dropped, never queued), and at most SHARED_ENGINE_CAP when the shadow variant's engine also serves the client's
 * variant (Ollama's canary usually shares stable's engine). Every copy can be cut: at its deadline, when the route
 * stops mirroring to it or its engine is drained, when the client goes away, and when the router closes. Every
 * request picked for mirroring ends as exactly one of: a pair, dropped, skipped (with a reason) or aborted (with a
 * reason), in the stats and the metrics.
 */
import { request } from 'undici';
import { API_PATHS, TokenTap, apiKey, joinUrl, type ClientApi, type ProxyDeps } from './proxy';
import { normalizeEngineUrl, type RouteSnapshot, type Variant } from './routes';
import type { Outcome, Sample, ShadowAbort, ShadowSkip } from './stats';

/**
 * What the mirror needs of the router: the proxy's own stats, metrics, connection pool, random source (it picks the
 * mirrored share), timeouts, route table and drains (a drained shadow engine gets no copies either).
 */
export type ShadowDeps = Pick<
  ProxyDeps,
  'store' | 'stats' | 'metrics' | 'dispatcher' | 'random' | 'headersTimeoutMs' | 'bodyTimeoutMs' | 'autoDrain'
>;

export interface ShadowOptions {
  /** Longest a copy may run in all before the router cuts it (counted as aborted: `deadline`, never judged). */
  deadlineMs: number;
}

/**
 * Copies in flight at most to an engine that also serves the client's variant (same origin: scheme, host and port).
 * One: the engine then runs at most one extra generation for the mirror, however many clients it serves; the rest are
 * skipped (`shared_engine`), never queued. Engines of their own get the route's `maxConcurrent`.
 */
export const SHARED_ENGINE_CAP = 1;

/** The request the client sent, as the proxy parsed it, once the client's answer has started. */
export interface MirroredRequest {
  alias: string;
  api: ClientApi;
  body: Record<string, unknown>;
  streaming: boolean;
  accept: string;
  /** The variant the weighted choice picked for the client. */
  chosen: Variant;
  /** The variant whose answer the client is getting (not `chosen` after a failover). */
  served: Variant;
}

/** A request being mirrored: the proxy hands it the client's sample once the client's request has ended. */
export interface MirrorHandle {
  primary(sample: Sample): void;
}

/** One copy in flight, and how far its pair got. */
interface Copy {
  alias: string;
  variant: Variant;
  /** Origin key counted against SHARED_ENGINE_CAP, when the copy shares the client's engine. */
  shared: string | undefined;
  ac: AbortController;
  /** The copy's sample, or why it was cut; undefined while it runs. */
  result: Sample | ShadowAbort | undefined;
  primary: Sample | undefined;
  /** Recorded (pair, or aborted): nothing more happens to it. */
  settled: boolean;
}

const origins = new Map<string, string>();
/** `http://h:11434/x` → `http://h:11434` (memoised: engine URLs are few). */
function originOf(engine: string): string {
  let o = origins.get(engine);
  if (o === undefined) {
    o = new URL(engine).origin;
    if (origins.size > 10_000) origins.clear();
    origins.set(engine, o);
  }
  return o;
}

export class ShadowMirror {
  /** alias → copies in flight. */
  private readonly inflight = new Map<string, number>();
  /** engine origin → copies in flight that share it with the client's variant. */
  private readonly shared = new Map<string, number>();
  private readonly copies = new Set<Copy>();
  private closed = false;

  constructor(
    private readonly deps: ShadowDeps,
    private readonly opts: ShadowOptions,
  ) {}

  /**
   * Start mirroring `r` when its alias has a shadow, the request falls in the mirrored share and the shadow variant
   * can take it (not the client's own variant, not drained, speaks the API, under the caps). Returns at once;
   * undefined when not mirrored. Call it once the client's answer has started, never before. It reads the route table
   * as it is now: a shadow removed while the client waited for its first token mirrors nothing.
   */
  fork(r: MirroredRequest): MirrorHandle | undefined {
    const snap = this.deps.store.current;
    const route = snap.routes[r.alias];
    const shadow = route?.shadow;
    if (this.closed || !route || !shadow || shadow.variant === r.served.name) return undefined;
    if (this.deps.random() * 100 >= shadow.percent) return undefined;
    const target = route.variants.find((v) => v.name === shadow.variant);
    if (!target) return undefined;
    const { alias } = r;
    const skip = (reason: ShadowSkip): undefined => {
      this.deps.stats.recordShadow(alias, target.name, { kind: 'skipped', reason });
      this.deps.metrics.shadowSkip(alias, target.name, reason);
      return undefined;
    };
    // A failed-over answer is another variant's, and its time includes the failed attempt: no fair pair.
    if (r.served !== r.chosen) return skip('failover');
    if ((r.api === 'ollama-chat' || r.api === 'ollama-generate') && target.engineType !== 'ollama') return skip('api');
    // Weight does not matter (a shadow variant usually has 0): only whether the engine may get traffic at all.
    if (this.isDrained(target, snap)) return skip('drained');
    const n = this.inflight.get(alias) ?? 0;
    if (n >= shadow.maxConcurrent) {
      this.deps.stats.recordShadow(alias, target.name, { kind: 'dropped' });
      this.deps.metrics.shadow(alias, target.name);
      return undefined;
    }
    const origin = originOf(target.engine);
    const shared = origin === originOf(r.served.engine) ? origin : undefined;
    if (shared !== undefined && (this.shared.get(shared) ?? 0) >= SHARED_ENGINE_CAP) return skip('shared_engine');

    this.inflight.set(alias, n + 1);
    if (shared !== undefined) this.shared.set(shared, (this.shared.get(shared) ?? 0) + 1);
    const copy: Copy = {
      alias,
      variant: target,
      shared,
      ac: new AbortController(),
      result: undefined,
      primary: undefined,
      settled: false,
    };
    this.copies.add(copy);
    const deadline = setTimeout(() => this.cut(copy, 'deadline'), this.opts.deadlineMs);
    deadline.unref();
    void this.send(r, target, copy.ac.signal)
      .then((s) => {
        if (copy.result !== undefined) return; // cut: already recorded
        copy.result = s;
        this.deps.metrics.shadow(alias, target.name, s);
        this.settle(copy);
      })
      // send() turns every failure into a sample; this only guards the bookkeeping above.
      .catch(() => undefined)
      .finally(() => {
        clearTimeout(deadline);
        this.copies.delete(copy);
        this.inflight.set(alias, (this.inflight.get(alias) ?? 1) - 1);
        if (shared !== undefined) this.shared.set(shared, (this.shared.get(shared) ?? 1) - 1);
      });
    return {
      primary: (s: Sample): void => {
        copy.primary ??= s;
        this.settle(copy);
      },
    };
  }

  /** Copies in flight for `alias` (for tests and the admin stats). */
  inFlight(alias: string): number {
    return this.inflight.get(alias) ?? 0;
  }

  /**
   * The route table or the drains changed: cut the copies whose alias no longer mirrors to their variant (shadow
   * removed or pointing elsewhere, variant or alias gone, variant moved to another engine) or whose engine is drained.
   */
  routesChanged(snap: RouteSnapshot): void {
    for (const c of this.copies) {
      const route = snap.routes[c.alias];
      const v =
        route?.shadow?.variant === c.variant.name ? route.variants.find((x) => x.name === c.variant.name) : undefined;
      if (!v || v.engine !== c.variant.engine) this.cut(c, 'shadow_removed');
      else if (this.isDrained(v, snap)) this.cut(c, 'drained');
    }
  }

  /** Cut every copy and mirror no more (the router is closing). */
  close(): void {
    this.closed = true;
    for (const c of this.copies) this.cut(c, 'closed');
  }

  private isDrained(v: Variant, snap: RouteSnapshot): boolean {
    const url = normalizeEngineUrl(v.engine);
    const auto = this.deps.autoDrain?.drained;
    return snap.drained.includes(url) || (auto !== undefined && auto.size > 0 && auto.has(url));
  }

  /** Stop a running copy; it is recorded as aborted for `reason` at once. */
  private cut(c: Copy, reason: ShadowAbort): void {
    if (c.result !== undefined) return;
    c.result = reason;
    this.settle(c);
    c.ac.abort(new Error(`shadow copy cut: ${reason}`));
  }

  /** Record the copy's end once both sides are known: a pair, or aborted (cut, or the client went away). */
  private settle(c: Copy): void {
    if (c.settled) return;
    const name = c.variant.name;
    let aborted: ShadowAbort | undefined;
    // A client that went away says nothing of stable: the pair is never judged, and the copy is cut if it runs.
    if (c.primary?.outcome === 'client_abort') aborted = 'client_abort';
    else if (typeof c.result === 'string') aborted = c.result;
    if (aborted !== undefined) {
      c.settled = true;
      this.deps.stats.recordShadow(c.alias, name, { kind: 'aborted', reason: aborted });
      this.deps.metrics.shadowAbort(c.alias, name, aborted);
      if (c.result === undefined) {
        c.result = aborted;
        c.ac.abort(new Error(`shadow copy cut: ${aborted}`));
      }
      return;
    }
    const copy = c.result;
    if (!c.primary || copy === undefined || typeof copy === 'string') return;
    c.settled = true;
    this.deps.stats.recordShadow(c.alias, name, {
      at: Math.max(c.primary.at, copy.at),
      primary: c.primary,
      shadow: copy,
    });
  }

  /** Send the copy, read its answer to the end and drop it; resolves to the copy's sample (or anything when cut). */
  private async send(r: MirroredRequest, v: Variant, signal: AbortSignal): Promise<Sample> {
    const started = performance.now();
    const sample = (outcome: Outcome, status: number, extra: Partial<Sample> = {}): Sample => ({
      at: Date.now(),
      outcome,
      status,
      durationMs: performance.now() - started,
      ...extra,
    });
    let status = 0;
    let firstByteAt: number | undefined;
    try {
      const up = await request(joinUrl(v.engine, API_PATHS[r.api]), {
        method: 'POST',
        dispatcher: this.deps.dispatcher,
        signal,
        headers: {
          'content-type': 'application/json',
          accept: r.accept,
          ...(v.apiKeyFile ? { authorization: `Bearer ${apiKey(v.apiKeyFile)}` } : {}),
        },
        body: JSON.stringify({ ...r.body, model: v.model }),
        headersTimeout: this.deps.headersTimeoutMs,
        bodyTimeout: this.deps.bodyTimeoutMs,
      });
      status = up.statusCode;
      const type = up.headers['content-type'];
      const sse = typeof type === 'string' ? /^text\/event-stream\b/i.test(type) : !r.api.startsWith('ollama');
      const tap = new TokenTap(r.streaming, sse ? 'sse' : 'ndjson');
      for await (const chunk of up.body as AsyncIterable<Buffer>) {
        firstByteAt ??= performance.now();
        tap.push(chunk);
      }
      tap.end();
      const outcome: Outcome =
        status >= 500 ? 'upstream_5xx' : status >= 400 ? 'client_error' : tap.streamError ? 'broken_stream' : 'ok';
      const tokens = tap.tokens();
      if (outcome !== 'ok') return sample(outcome, status);
      // Streamed: generation speed after the first token; whole answers: tokens over the request's time.
      const from = r.streaming ? firstByteAt : started;
      const count = r.streaming ? (tokens ?? 0) - 1 : (tokens ?? 0);
      const seconds = from !== undefined ? (performance.now() - from) / 1000 : 0;
      return sample('ok', status, {
        ...(firstByteAt !== undefined ? { ttftMs: firstByteAt - started } : {}),
        ...(tokens !== undefined ? { outputTokens: tokens } : {}),
        ...(count > 0 && seconds > 0 ? { tokensPerSecond: count / seconds } : {}),
      });
    } catch (err) {
      const code = String((err as { code?: unknown } | null)?.code ?? '');
      if (/^UND_ERR_\w*TIMEOUT$/.test(code)) return sample('timeout', status || 504);
      return firstByteAt !== undefined ? sample('broken_stream', status) : sample('connect', 502);
    }
  }
}
