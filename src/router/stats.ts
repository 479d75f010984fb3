/**
 * Windowed per-request samples for canary analysis: one bounded ring per alias and variant, so "canary vs stable in
 * the same window" is a query over the same time range of both rings. Memory is bounded by `capacity` samples per
 * ring; when a window holds more requests than that, the answer says so (`truncated`).
 */

/** How a proxied request ended. */
export type Outcome =
  /** A 2xx (or 3xx) answer that streamed to the end. */
  | 'ok'
  /** The engine refused the request (4xx): the client's fault, not the variant's. */
  | 'client_error'
  /** The client went away before the end; not held against the variant. */
  | 'client_abort'
  /** Upstream answered 5xx. */
  | 'upstream_5xx'
  /** No first byte within the headers timeout, or the stream stalled past the body timeout. */
  | 'timeout'
  /** Could not connect to the engine (refused, reset before an answer). */
  | 'connect'
  /** The stream broke after it started (reset, truncated body). */
  | 'broken_stream';

/** Outcomes that count as the variant's errors. */
export const ERROR_OUTCOMES: ReadonlySet<Outcome> = new Set(['upstream_5xx', 'timeout', 'connect', 'broken_stream']);

/** One finished request. */
export interface Sample {
  /** When it finished (ms since epoch). */
  at: number;
  outcome: Outcome;
  status: number;
  /** Time from the router receiving the request to the first response body byte from the engine. */
  ttftMs?: number;
  /** Time from the router receiving the request to the end of the response. */
  durationMs: number;
  /** Output tokens (engine-reported usage / eval_count, else streamed content chunks). */
  outputTokens?: number;
  /** Output tokens per second of generation (after the first token), when measurable. */
  tokensPerSecond?: number;
}

/** Statistics of one variant over a window. Latencies in ms; null where no sample had the value. */
export interface VariantStats {
  requests: number;
  /** Requests counted as errors (upstream 5xx, timeouts, connect failures, broken streams). */
  errors: number;
  /** errors / (requests − client aborts − client errors); 0 when none. */
  errorRate: number;
  /** Breakdown by outcome. */
  outcomes: Partial<Record<Outcome, number>>;
  ttftMs: { p50: number | null; p95: number | null; p99: number | null };
  durationMs: { p50: number | null; p95: number | null; p99: number | null };
  tokensPerSecond: { mean: number | null; p50: number | null };
  outputTokens: number;
  /** True when the ring dropped samples that fell inside the window (more traffic than `capacity`). */
  truncated: boolean;
}

/** Answer of GET /admin/stats. */
export interface AliasStats {
  alias: string;
  windowMs: number;
  /** Window start and end, ISO timestamps. */
  from: string;
  to: string;
  /** Variant name → stats; variants with no sample in the window are absent. */
  variants: Record<string, VariantStats>;
  /**
   * Shadow variant name → its mirrored pairs in the window (absent when the alias mirrored nothing in it). Mirrored
   * copies are never counted in `variants`: those are the requests clients were served.
   */
  shadow?: Record<string, ShadowStats>;
}

/** One mirrored request: the answer the client got (`primary`) and the shadow variant's copy of the same request. */
export interface ShadowPair {
  /** When the later of the two finished. */
  at: number;
  primary: Sample;
  shadow: Sample;
}

/**
 * Why a request picked for mirroring was not sent: its client's request failed over to another variant (its answer
 * is no measure of the variant the pair compares against), it is Ollama-native and the shadow variant is not Ollama,
 * the shadow variant's engine is drained, or that engine carries client traffic and already has its one copy in
 * flight (see SHARED_ENGINE_CAP in src/router/shadow.ts).
 */
export type ShadowSkip = 'failover' | 'api' | 'drained' | 'shared_engine';

/**
 * Why a sent copy ended without a pair, for a reason of the router's or the client's, never the shadow variant's: the
 * route stopped mirroring to it (shadow removed or changed, variant or alias removed), its engine was drained, the
 * router closed; or its client went away (`client_abort`: never judged, the copy is cut if still running). A copy
 * cut at its deadline is the shadow variant's `timeout`, in its pair.
 */
export type ShadowAbort = 'shadow_removed' | 'drained' | 'closed' | 'client_abort';

/** A mirrored request that produced no pair, as the stats keep it. */
export type ShadowMiss =
  { kind: 'dropped' } | { kind: 'skipped'; reason: ShadowSkip } | { kind: 'aborted'; reason: ShadowAbort };

/** A shadow variant's pairs over a window: both sides summarised over the same requests. */
export interface ShadowStats {
  pairs: number;
  /** Requests that were picked for mirroring but not mirrored: the alias's concurrency cap was full. */
  dropped: number;
  /** Requests picked for mirroring but not sent, by reason (absent reasons: none). */
  skipped: Partial<Record<ShadowSkip, number>>;
  /** Copies sent that ended without a pair, by reason (absent reasons: none). */
  aborted: Partial<Record<ShadowAbort, number>>;
  /** What the clients got for the mirrored requests (the variant they were routed to). */
  primary: VariantStats;
  /** What the shadow variant answered to the same requests (never sent to a client). */
  shadow: VariantStats;
  /** Answer length: mean output tokens of the completed answers on each side, and shadow / primary. */
  answerTokens: { primary: number | null; shadow: number | null; ratio: number | null };
}

class Ring<T extends { at: number } = Sample> {
  private readonly buf: (T | undefined)[];
  private next = 0;
  private size = 0;
  /** Finish time of the newest sample overwritten (0 = none dropped yet). */
  droppedUntil = 0;
  constructor(readonly capacity: number) {
    this.buf = new Array<T | undefined>(capacity);
  }
  push(s: T): void {
    const old = this.buf[this.next];
    if (old) this.droppedUntil = Math.max(this.droppedUntil, old.at);
    this.buf[this.next] = s;
    this.next = (this.next + 1) % this.capacity;
    this.size = Math.min(this.size + 1, this.capacity);
  }
  since(from: number, to: number): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.size; i++) {
      const s = this.buf[i];
      if (s && s.at >= from && s.at <= to) out.push(s);
    }
    return out;
  }
}

/** Nearest-rank percentile of a sorted array. */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))] ?? null;
}

function round(n: number | null): number | null {
  return n === null ? null : Math.round(n * 100) / 100;
}

export interface StatsStoreOptions {
  /** Samples kept per alias and variant (default 10 000). */
  capacity?: number;
  /** Clock, for tests. */
  now?: () => number;
}

/** Per alias+variant rings of samples. */
export class StatsStore {
  private readonly rings = new Map<string, Map<string, Ring>>();
  /** alias → shadow variant → mirrored pairs, and the mirrored requests that produced none. */
  private readonly pairs = new Map<
    string,
    Map<string, { pairs: Ring<ShadowPair>; misses: Ring<ShadowMiss & { at: number }> }>
  >();
  readonly capacity: number;
  private readonly now: () => number;

  constructor(opts: StatsStoreOptions = {}) {
    this.capacity = opts.capacity ?? 10_000;
    this.now = opts.now ?? Date.now;
  }

  /** Record one finished request. */
  record(alias: string, variant: string, sample: Sample): void {
    let byVariant = this.rings.get(alias);
    if (!byVariant) this.rings.set(alias, (byVariant = new Map()));
    let ring = byVariant.get(variant);
    if (!ring) byVariant.set(variant, (ring = new Ring(this.capacity)));
    ring.push(sample);
  }

  /** Record one mirrored pair (a ShadowPair), or one mirrored request that produced none (a ShadowMiss). */
  recordShadow(alias: string, variant: string, entry: ShadowPair | ShadowMiss): void {
    let byVariant = this.pairs.get(alias);
    if (!byVariant) this.pairs.set(alias, (byVariant = new Map()));
    let rings = byVariant.get(variant);
    if (!rings) byVariant.set(variant, (rings = { pairs: new Ring(this.capacity), misses: new Ring(this.capacity) }));
    if ('kind' in entry) rings.misses.push({ ...entry, at: this.now() });
    else rings.pairs.push(entry);
  }

  /** Aliases with at least one sample ever. */
  aliases(): string[] {
    return [...this.rings.keys()];
  }

  private shadowQuery(alias: string, from: number, to: number): Record<string, ShadowStats> | undefined {
    const out: Record<string, ShadowStats> = {};
    for (const [name, rings] of this.pairs.get(alias) ?? []) {
      const pairs = rings.pairs.since(from, to);
      const misses = rings.misses.since(from, to);
      if (pairs.length === 0 && misses.length === 0) continue;
      let dropped = 0;
      const skipped: Partial<Record<ShadowSkip, number>> = {};
      const aborted: Partial<Record<ShadowAbort, number>> = {};
      for (const m of misses) {
        if (m.kind === 'dropped') dropped += 1;
        else if (m.kind === 'skipped') skipped[m.reason] = (skipped[m.reason] ?? 0) + 1;
        else aborted[m.reason] = (aborted[m.reason] ?? 0) + 1;
      }
      const truncated = rings.pairs.droppedUntil >= from;
      const primary = summarize(
        pairs.map((p) => p.primary),
        truncated,
      );
      const shadow = summarize(
        pairs.map((p) => p.shadow),
        truncated,
      );
      const mean = (v: VariantStats): number | null => {
        const ok = v.outcomes.ok ?? 0;
        return ok > 0 ? round(v.outputTokens / ok) : null;
      };
      const p = mean(primary);
      const sh = mean(shadow);
      const ratio = p !== null && sh !== null && p > 0 ? round(sh / p) : null;
      out[name] = {
        pairs: pairs.length,
        dropped,
        skipped,
        aborted,
        primary,
        shadow,
        answerTokens: { primary: p, shadow: sh, ratio },
      };
    }
    return Object.keys(out).length > 0 ? out : undefined;
  }

  /** Stats of every variant of `alias` over the last `windowMs`, ending now. */
  query(alias: string, windowMs: number): AliasStats {
    const to = this.now();
    const from = to - windowMs;
    const variants: Record<string, VariantStats> = {};
    for (const [name, ring] of this.rings.get(alias) ?? []) {
      const samples = ring.since(from, to);
      if (samples.length === 0) continue;
      variants[name] = summarize(samples, ring.droppedUntil >= from);
    }
    const shadow = this.shadowQuery(alias, from, to);
    return {
      alias,
      windowMs,
      from: new Date(from).toISOString(),
      to: new Date(to).toISOString(),
      variants,
      ...(shadow ? { shadow } : {}),
    };
  }
}

/** Stats of a set of samples. */
export function summarize(samples: readonly Sample[], truncated = false): VariantStats {
  const outcomes: Partial<Record<Outcome, number>> = {};
  let errors = 0;
  let outputTokens = 0;
  const ttft: number[] = [];
  const dur: number[] = [];
  const tps: number[] = [];
  for (const s of samples) {
    outcomes[s.outcome] = (outcomes[s.outcome] ?? 0) + 1;
    if (ERROR_OUTCOMES.has(s.outcome)) errors += 1;
    if (s.outcome !== 'ok') continue;
    // Latency and throughput describe completed answers only: a fast 500 must not make a variant look quick.
    if (s.ttftMs !== undefined) ttft.push(s.ttftMs);
    dur.push(s.durationMs);
    if (s.outputTokens !== undefined) outputTokens += s.outputTokens;
    if (s.tokensPerSecond !== undefined) tps.push(s.tokensPerSecond);
  }
  const judged = samples.length - (outcomes.client_abort ?? 0) - (outcomes.client_error ?? 0);
  const asc = (a: number, b: number): number => a - b;
  ttft.sort(asc);
  dur.sort(asc);
  tps.sort(asc);
  return {
    requests: samples.length,
    errors,
    errorRate: judged > 0 ? errors / judged : 0,
    outcomes,
    ttftMs: { p50: round(percentile(ttft, 50)), p95: round(percentile(ttft, 95)), p99: round(percentile(ttft, 99)) },
    durationMs: { p50: round(percentile(dur, 50)), p95: round(percentile(dur, 95)), p99: round(percentile(dur, 99)) },
    tokensPerSecond: {
      mean: tps.length > 0 ? round(tps.reduce((a, b) => a + b, 0) / tps.length) : null,
      p50: round(percentile(tps, 50)),
    },
    outputTokens,
    truncated,
  };
}
