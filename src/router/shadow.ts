/**
 * Shadow mirroring: for an alias whose route has a `shadow`, a share of its requests is sent a second time to the
 * shadow variant, detached from the client's request. The client only ever gets the answer of the variant it was
 * routed to; the copy's answer is read to the end, measured (TTFT, tokens/s, errors, answer length) and dropped. The
 * two measurements of the same request become one pair in the stats, which a deployment's shadow stage analyses
 * exactly as a canary step.
 *
 * Only requests the weighted choice gave to `stable` are mirrored: a pair compares the canary with stable on the same
 * request, never with another weighted variant an operator added.
 *
 * The copy never delays or fails the client's request: it is forked once the client's first body byte has been
 * written (or, for an answer without a body byte, once it has been written in full), and sent from a later turn of
 * the event loop (its key file, body serialisation and dispatch never run before the client's bytes); it is never
 * awaited, its errors end up in the stats only; at most `maxConcurrent` copies per alias are in flight (a request over
 * the cap is dropped, never queued), and at most SHARED_ENGINE_CAP to an engine that carries client traffic (Ollama's
 * canary usually shares stable's engine). Every copy can be cut: at its deadline (the canary's `timeout`, judged in
 * the pair), when the route stops mirroring to it or its engine is drained, when the client goes away, and when the
 * router closes. Every request picked for mirroring ends as exactly one of: a pair, dropped, skipped (with a reason)
 * or aborted (with a reason), in the stats and the metrics, each counted once.
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
  'store' | 'stats' | 'metrics' | 'dispatcher' | 'random' | 'headersTimeoutMs' | 'bodyTimeoutMs' | 'autoDrain' | 'log'
>;

export interface ShadowOptions {
  /**
   * Longest a copy may run in all before the router cuts it: recorded in its pair as the shadow variant's `timeout`
   * (a canary that never answers is judged, not lost).
   */
  deadlineMs: number;
}

/**
 * Copies in flight at most to an engine that carries client traffic (same origin: scheme, host and port as a variant,
 * of any alias, with weight > 0 on an engine not drained). One: the engine then runs at most one extra generation for
 * the mirror, however many clients it serves; the rest are skipped (`shared_engine`), never queued. Engines of their
 * own get the route's `maxConcurrent`.
 */
export const SHARED_ENGINE_CAP = 1;

/** The variant whose requests are mirrored: the pairs compare the shadow variant with it. */
export const MIRRORED_VARIANT = 'stable';

/** The request the client sent, as the proxy parsed it, once the client's answer has started. */
export interface MirroredRequest {
  alias: string;
  api: ClientApi;
  body: Record<string, unknown>;
  streaming: boolean;
  accept: string;
  /** The variant the weighted choice picked for the client (mirrored only when it is MIRRORED_VARIANT). */
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
  /** engine origin → copies in flight to it (every copy counts there, whatever engine served its client). */
  private readonly perOrigin = new Map<string, number>();
  /** Origins of the engines that carry client traffic, per route snapshot (auto-drains are checked per copy). */
  private serving: { snap: RouteSnapshot; origins: Map<string, string[]> } | undefined;
  private readonly copies = new Set<Copy>();
  private closed = false;

  constructor(
    private readonly deps: ShadowDeps,
    private readonly opts: ShadowOptions,
  ) {}

  /**
   * Start mirroring `r` when its alias has a shadow, the request falls in the mirrored share and the shadow variant
   * can take it (not the client's own variant, not drained, speaks the API, under the caps). Returns at once (the copy
   * is sent from a later turn of the event loop); undefined when not mirrored. Call it once the client's first byte
   * (or its whole answer) has been written, never before. It reads the route table as it is now: a shadow removed
   * while the client waited for its first token mirrors nothing.
   */
  fork(r: MirroredRequest): MirrorHandle | undefined {
    const snap = this.deps.store.current;
    const route = snap.routes[r.alias];
    const shadow = route?.shadow;
    if (this.closed || !route || !shadow || r.chosen.name !== MIRRORED_VARIANT) return undefined;
    if (shadow.variant === r.served.name) return undefined;
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
    const onOrigin = this.perOrigin.get(origin) ?? 0;
    if (onOrigin >= SHARED_ENGINE_CAP && this.carriesTraffic(origin, snap)) return skip('shared_engine');

    this.inflight.set(alias, n + 1);
    this.perOrigin.set(origin, onOrigin + 1);
    const copy: Copy = {
      alias,
      variant: target,
      ac: new AbortController(),
      result: undefined,
      primary: undefined,
      settled: false,
    };
    this.copies.add(copy);
    const started = performance.now();
    const deadline = setTimeout(() => this.timedOut(copy, started), this.opts.deadlineMs);
    deadline.unref();
    // Counted and cuttable from now on; sent from the next turn of the event loop, so that the key file, the body's
    // serialisation and the dispatch never run before the client's bytes are on their way.
    setImmediate(() => {
      const sent = copy.ac.signal.aborted ? Promise.resolve(undefined) : this.send(r, target, copy.ac.signal);
      void sent
        .then((s) => {
          if (s === undefined || copy.result !== undefined) return; // cut: already recorded
          copy.result = s;
          this.settle(copy);
        })
        // send() turns every failure into a sample; this only guards the bookkeeping above.
        .catch((err: unknown) => this.deps.log?.(`router: shadow copy of ${alias}: ${String(err)}`))
        .finally(() => {
          clearTimeout(deadline);
          this.copies.delete(copy);
          this.inflight.set(alias, (this.inflight.get(alias) ?? 1) - 1);
          this.perOrigin.set(origin, (this.perOrigin.get(origin) ?? 1) - 1);
        });
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

  /**
   * Whether an engine origin carries client traffic now: a variant of any alias on it has weight > 0 and its engine
   * is drained neither by an operator nor by the router.
   */
  private carriesTraffic(origin: string, snap: RouteSnapshot): boolean {
    if (this.serving?.snap !== snap) {
      const origins = new Map<string, string[]>();
      for (const route of Object.values(snap.routes)) {
        for (const v of route.variants) {
          const url = normalizeEngineUrl(v.engine);
          if (v.weight <= 0 || snap.drained.includes(url)) continue;
          const o = originOf(v.engine);
          const urls = origins.get(o);
          if (!urls) origins.set(o, [url]);
          else if (!urls.includes(url)) urls.push(url);
        }
      }
      this.serving = { snap, origins };
    }
    const urls = this.serving.origins.get(origin);
    const auto = this.deps.autoDrain?.drained;
    return urls !== undefined && urls.some((u) => auto === undefined || !auto.has(u));
  }

  private isDrained(v: Variant, snap: RouteSnapshot): boolean {
    const url = normalizeEngineUrl(v.engine);
    const auto = this.deps.autoDrain?.drained;
    return snap.drained.includes(url) || (auto !== undefined && auto.size > 0 && auto.has(url));
  }

  /** The copy ran past its deadline: the shadow variant's timeout, judged in its pair like any other answer. */
  private timedOut(c: Copy, started: number): void {
    if (c.result !== undefined) return;
    const durationMs = performance.now() - started;
    c.result = { at: Date.now(), outcome: 'timeout', status: 504, durationMs };
    this.settle(c);
    c.ac.abort(new Error('shadow copy cut: deadline'));
  }

  /** Stop a running copy for a reason of the router's (or its client's); it is recorded as aborted at once. */
  private cut(c: Copy, reason: ShadowAbort): void {
    if (c.result !== undefined) return;
    c.result = reason;
    this.settle(c);
    c.ac.abort(new Error(`shadow copy cut: ${reason}`));
  }

  /**
   * Record the copy's end once both sides are known: a pair, or aborted (cut, or the client went away), counted once
   * in the stats and once in the metrics (a pair under its copy's outcome).
   */
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
    this.deps.metrics.shadow(c.alias, name, copy);
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
