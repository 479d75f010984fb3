/**
 * Prometheus metrics of the router, on a registry of its own (several routers can live in one process, as in tests).
 * Labels are alias and variant, so a dashboard can put canary and stable side by side.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AutoDrainEntry } from './failover';
import { normalizeEngineUrl, type RouteSnapshot } from './routes';
import { ERROR_OUTCOMES, type Sample, type ShadowAbort, type ShadowSkip } from './stats';

/** Seconds; time to first token spans tens of ms (small models) to tens of seconds (cold loads). */
const TTFT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const DURATION_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const TPS_BUCKETS = [5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500];
/** Help texts of the failover and auto-drain families. */
const FAILOVER_HELP = {
  failovers: 'Requests retried on another variant after the chosen one refused the connection or answered 503.',
  autoDrains: 'Times the router drained a node by itself (every routed engine of it refused connections).',
  drained:
    'Engines the router has drained by itself (1 each), until the watcher, an operator or a recheck releases them.',
} as const;
/** Help texts of the shadow families. */
const SHADOW_HELP = {
  requests:
    'Mirrored requests that ended as a pair, by the shadow copy\'s outcome (answers dropped); "dropped": not ' +
    'mirrored, the cap was full.',
  ttft: 'Time to first token of mirrored requests on the shadow variant (completed requests).',
  skipped:
    'Requests picked for mirroring but not sent, by reason (failover, api, drained, shared_engine: the one copy ' +
    'allowed on an engine that carries client traffic was in flight).',
  aborted:
    'Mirrored requests that ended without a pair, by reason (shadow_removed, drained, closed: cut by the router; ' +
    'client_abort: the client went away, never judged). A copy past its deadline is a timeout in its pair.',
} as const;
/** The labels of the per-variant families. */
const BY_VARIANT = ['alias', 'variant'] as const;

/** The router's metric families. */
export class RouterMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'alias' | 'variant' | 'outcome'>;
  private readonly errors: Counter<'alias' | 'variant' | 'kind'>;
  private readonly ttft: Histogram<'alias' | 'variant'>;
  private readonly duration: Histogram<'alias' | 'variant'>;
  private readonly tokens: Counter<'alias' | 'variant'>;
  private readonly tps: Histogram<'alias' | 'variant'>;
  readonly inflight: Gauge<'alias'>;
  private readonly weight: Gauge<'alias' | 'variant'>;
  private readonly version: Gauge;
  private readonly failovers: Counter<'alias' | 'from' | 'to'>;
  private readonly autoDrains: Counter<'node'>;
  private readonly autoDrainedEngines: Gauge<'node' | 'engine'>;
  private readonly shadowRequests: Counter<'alias' | 'variant' | 'outcome'>;
  private readonly shadowTtft: Histogram<'alias' | 'variant'>;
  private readonly shadowSkipped: Counter<'alias' | 'variant' | 'reason'>;
  private readonly shadowAborted: Counter<'alias' | 'variant' | 'reason'>;
  /** Engines the router drained by itself (the AutoDrainer's live set); the weight gauge shows them at 0. */
  private autoDrained: ReadonlySet<string> = new Set();

  constructor() {
    const registers = [this.registry];
    const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]): Counter<L> =>
      new Counter({ name, help, labelNames, registers });
    const histogram = <L extends string>(
      name: string,
      help: string,
      labelNames: readonly L[],
      buckets: number[],
    ): Histogram<L> => new Histogram({ name, help, labelNames, buckets, registers });
    const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[]): Gauge<L> =>
      new Gauge({ name, help, labelNames, registers });

    this.requests = counter('gpuops_router_requests_total', 'Proxied requests by alias, variant and outcome.', [
      'alias',
      'variant',
      'outcome',
    ]);
    this.errors = counter(
      'gpuops_router_errors_total',
      'Requests that failed on the variant (upstream 5xx, timeout, connect, broken stream).',
      ['alias', 'variant', 'kind'],
    );
    this.ttft = histogram(
      'gpuops_router_time_to_first_token_seconds',
      'Time from request to the first response body byte from the engine (completed requests).',
      BY_VARIANT,
      TTFT_BUCKETS,
    );
    this.duration = histogram(
      'gpuops_router_request_duration_seconds',
      'Time from request to the end of the response (completed requests).',
      BY_VARIANT,
      DURATION_BUCKETS,
    );
    this.tokens = counter(
      'gpuops_router_output_tokens_total',
      'Output tokens (engine usage / eval_count, else streamed chunks).',
      BY_VARIANT,
    );
    this.tps = histogram(
      'gpuops_router_output_tokens_per_second',
      'Output tokens per second of generation, per request.',
      BY_VARIANT,
      TPS_BUCKETS,
    );
    this.inflight = gauge('gpuops_router_inflight_requests', 'Requests being proxied now.', ['alias']);
    this.weight = gauge(
      'gpuops_router_route_weight',
      'Configured weight of each variant (0 when its engine is drained, by an operator or by the router).',
      BY_VARIANT,
    );
    this.version = new Gauge({ name: 'gpuops_router_routes_version', help: 'Route table version.', registers });
    // Failover and auto-drain (src/router/failover.ts).
    this.failovers = counter('gpuops_router_failovers_total', FAILOVER_HELP.failovers, ['alias', 'from', 'to']);
    this.autoDrains = counter('gpuops_router_auto_drains_total', FAILOVER_HELP.autoDrains, ['node']);
    this.autoDrainedEngines = gauge('gpuops_router_engine_auto_drained', FAILOVER_HELP.drained, ['node', 'engine']);
    // Mirrored requests (src/router/shadow.ts): never in the families above, which count what clients were served.
    this.shadowRequests = counter('gpuops_router_shadow_requests_total', SHADOW_HELP.requests, [
      ...BY_VARIANT,
      'outcome',
    ]);
    this.shadowTtft = histogram(
      'gpuops_router_shadow_time_to_first_token_seconds',
      SHADOW_HELP.ttft,
      BY_VARIANT,
      TTFT_BUCKETS,
    );
    this.shadowSkipped = counter('gpuops_router_shadow_skipped_total', SHADOW_HELP.skipped, [...BY_VARIANT, 'reason']);
    this.shadowAborted = counter('gpuops_router_shadow_aborted_total', SHADOW_HELP.aborted, [...BY_VARIANT, 'reason']);
  }

  /** Count one request picked for mirroring and not sent. */
  shadowSkip(alias: string, variant: string, reason: ShadowSkip): void {
    this.shadowSkipped.inc({ alias, variant, reason });
  }

  /** Count one mirrored request that ended without a pair. */
  shadowAbort(alias: string, variant: string, reason: ShadowAbort): void {
    this.shadowAborted.inc({ alias, variant, reason });
  }

  /** Count one mirrored request on its shadow variant (`s` undefined: dropped at the cap). */
  shadow(alias: string, variant: string, s?: Sample): void {
    this.shadowRequests.inc({ alias, variant, outcome: s ? s.outcome : 'dropped' });
    if (s?.outcome === 'ok' && s.ttftMs !== undefined) this.shadowTtft.observe({ alias, variant }, s.ttftMs / 1000);
  }

  /** Count one failover. */
  failover(alias: string, from: string, to: string): void {
    this.failovers.inc({ alias, from, to });
  }

  /** Count one auto-drain of a node. */
  autoDrainedNode(node: string): void {
    this.autoDrains.inc({ node });
  }

  /** Follow the auto-drainer's live set (the weight gauge reads it). */
  trackAutoDrained(set: ReadonlySet<string>): void {
    this.autoDrained = set;
  }

  /** Mirror the auto-drained engines into their gauge, and the weights (an auto-drained engine's read 0). */
  autoDrainsChanged(entries: readonly AutoDrainEntry[], snap: RouteSnapshot): void {
    this.autoDrainedEngines.reset();
    for (const e of entries) this.autoDrainedEngines.set({ node: e.node, engine: e.engine }, 1);
    this.routesChanged(snap);
  }

  /** Count one finished request. */
  observe(alias: string, variant: string, s: Sample): void {
    const l = { alias, variant };
    this.requests.inc({ ...l, outcome: s.outcome });
    if (ERROR_OUTCOMES.has(s.outcome)) this.errors.inc({ ...l, kind: s.outcome });
    if (s.outcome !== 'ok') return;
    if (s.ttftMs !== undefined) this.ttft.observe(l, s.ttftMs / 1000);
    this.duration.observe(l, s.durationMs / 1000);
    if (s.outputTokens !== undefined) this.tokens.inc(l, s.outputTokens);
    if (s.tokensPerSecond !== undefined) this.tps.observe(l, s.tokensPerSecond);
  }

  /** Mirror the route table into the weight and version gauges. */
  routesChanged(snap: RouteSnapshot): void {
    this.weight.reset();
    for (const [alias, r] of Object.entries(snap.routes)) {
      for (const v of r.variants) {
        const url = normalizeEngineUrl(v.engine);
        const drained = snap.drained.includes(url) || this.autoDrained.has(url);
        this.weight.set({ alias, variant: v.name }, drained ? 0 : v.weight);
      }
    }
    this.version.set(snap.version);
  }
}
