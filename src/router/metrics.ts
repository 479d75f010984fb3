/**
 * Prometheus metrics of the router, on a registry of its own (several routers can live in one process, as in tests).
 * Labels are alias and variant, so a dashboard can put canary and stable side by side.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { normalizeEngineUrl, type RouteSnapshot } from './routes';
import { ERROR_OUTCOMES, type Sample } from './stats';

/** Seconds; time to first token spans tens of ms (small models) to tens of seconds (cold loads). */
const TTFT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const DURATION_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const TPS_BUCKETS = [5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500];
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
      'Configured weight of each variant (0 when its engine is drained).',
      BY_VARIANT,
    );
    this.version = new Gauge({ name: 'gpuops_router_routes_version', help: 'Route table version.', registers });
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
        const drained = snap.drained.includes(normalizeEngineUrl(v.engine));
        this.weight.set({ alias, variant: v.name }, drained ? 0 : v.weight);
      }
    }
    this.version.set(snap.version);
  }
}
