/**
 * Shadow mirroring: for an alias whose route has a `shadow`, a share of its requests is sent a second time to the
 * shadow variant, detached from the client's request. The client only ever gets the answer of the variant it was
 * routed to; the copy's answer is read to the end, measured (TTFT, tokens/s, errors, answer length) and dropped. The
 * two measurements of the same request become one pair in the stats, which a deployment's shadow stage analyses
 * exactly as a canary step. The copy never delays or fails the client's request: it is started after the client's
 * variant was chosen, never awaited by it, its errors end up in the stats only, and at most `maxConcurrent` copies
 * per alias are in flight; a request over the cap is not mirrored (counted as dropped), never queued.
 */
import { request } from 'undici';
import { API_PATHS, TokenTap, apiKey, joinUrl, type ClientApi, type ProxyDeps } from './proxy';
import { eligibleVariants, type AliasRoute, type RouteSnapshot, type Variant } from './routes';
import type { Outcome, Sample } from './stats';

/**
 * What the mirror needs of the router: the proxy's own stats, metrics, connection pool, random source (it picks the
 * mirrored share), timeouts and drains (a drained shadow engine gets no copies either).
 */
export type ShadowDeps = Pick<
  ProxyDeps,
  'stats' | 'metrics' | 'dispatcher' | 'random' | 'headersTimeoutMs' | 'bodyTimeoutMs' | 'autoDrain'
>;

/** The request the client sent, as the proxy parsed it. */
export interface MirroredRequest {
  alias: string;
  route: AliasRoute;
  snap: RouteSnapshot;
  api: ClientApi;
  body: Record<string, unknown>;
  streaming: boolean;
  accept: string;
  /** The variant the client's request goes to. */
  chosen: Variant;
}

/** A request being mirrored: the proxy hands it the client's sample once the client's request has ended. */
export interface MirrorHandle {
  primary(sample: Sample): void;
}

export class ShadowMirror {
  /** alias → copies in flight. */
  private readonly inflight = new Map<string, number>();

  constructor(private readonly deps: ShadowDeps) {}

  /**
   * Start mirroring `r` when its alias has a shadow, the request falls in the mirrored share and the shadow variant
   * can take it (not the client's own variant, not drained, speaks the API). Returns at once; undefined when not
   * mirrored.
   */
  fork(r: MirroredRequest): MirrorHandle | undefined {
    const shadow = r.route.shadow;
    if (!shadow || shadow.variant === r.chosen.name) return undefined;
    if (this.deps.random() * 100 >= shadow.percent) return undefined;
    // Weight does not matter (a shadow variant usually has 0): only whether the engine may get traffic at all.
    const target = r.route.variants.find((v) => v.name === shadow.variant);
    const usable =
      target !== undefined &&
      eligibleVariants(
        { variants: [{ ...target, weight: 1 }] },
        r.snap,
        r.api === 'ollama-chat' || r.api === 'ollama-generate',
        this.deps.autoDrain?.drained,
      ).length > 0;
    if (!target || !usable) return undefined;
    const { alias } = r;
    const n = this.inflight.get(alias) ?? 0;
    if (n >= shadow.maxConcurrent) {
      this.deps.stats.recordShadow(alias, target.name);
      this.deps.metrics.shadow(alias, target.name);
      return undefined;
    }
    this.inflight.set(alias, n + 1);
    let primary: Sample | undefined;
    let copy: Sample | undefined;
    const pair = (): void => {
      if (!primary || !copy) return;
      const at = Math.max(primary.at, copy.at);
      this.deps.stats.recordShadow(alias, target.name, { at, primary, shadow: copy });
    };
    void this.send(r, target)
      .then((s) => {
        copy = s;
        this.deps.metrics.shadow(alias, target.name, s);
        pair();
      })
      // send() turns every failure into a sample; this only guards the bookkeeping above.
      .catch(() => undefined)
      .finally(() => this.inflight.set(alias, (this.inflight.get(alias) ?? 1) - 1));
    return {
      primary(s: Sample): void {
        primary ??= s;
        pair();
      },
    };
  }

  /** Copies in flight for `alias` (for tests and the admin stats). */
  inFlight(alias: string): number {
    return this.inflight.get(alias) ?? 0;
  }

  /** Send the copy, read its answer to the end and drop it; always resolves to the copy's sample. */
  private async send(r: MirroredRequest, v: Variant): Promise<Sample> {
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
