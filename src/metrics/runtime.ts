/**
 * The worker's Prometheus endpoint: the Temporal SDK's Runtime serves /metrics itself (its own worker, poller and
 * workflow-task metrics, and every metric gpuops records through the SDK's meter), so a worker process needs no
 * second HTTP server. Names follow Prometheus's rules: counters end in `_total`, durations are `_seconds`.
 */
import type { MetricTags } from '@temporalio/common';
import { Runtime, type InjectedSinks, type MetricsExporterConfig } from '@temporalio/worker';
import { SocketAddressSchema, type Config } from '../config/schema';
import { ValidationError } from '../domain/validation';
import {
  WORKER_METRICS,
  meterName,
  type GpuopsMetricSinks,
  type MetricKey,
  type MetricDefinition,
} from './definitions';

export type WorkerKind = keyof Config['metrics'];

/** The flag every worker takes: `--metrics-listen <ip:port|off>`, over gpuops.yaml `metrics.<kind>`. */
export const METRICS_LISTEN_FLAG = 'metrics-listen';

/**
 * Where this worker serves /metrics: the flag (`off` turns it off), else `metrics.<kind>` of gpuops.yaml, else
 * nowhere. A bad flag value is a ValidationError naming the flag.
 */
export function metricsListenFor(kind: WorkerKind, config: Config, flag: string | undefined): string | undefined {
  if (flag === undefined) return config.metrics[kind];
  if (flag === 'off') return undefined;
  const r = SocketAddressSchema.safeParse(flag);
  if (!r.success) {
    throw new ValidationError('arguments', [
      `--${METRICS_LISTEN_FLAG}: ${r.error.issues[0]?.message ?? 'invalid'}, or off (got "${flag}")`,
    ]);
  }
  return r.data;
}

/** The Runtime's Prometheus exporter on `listen`, with gpuops's histogram buckets. */
export function prometheusExporter(listen: string): MetricsExporterConfig {
  const buckets: Record<string, number[]> = {};
  for (const d of Object.values(WORKER_METRICS)) {
    if ('buckets' in d) buckets[meterName(d)] = [...d.buckets];
  }
  return {
    // The SDK's own families keep their temporal_ prefix; gpuops's are named gpuops_ already (no prefix is added
    // to metrics created through the meter).
    metricPrefix: 'temporal_',
    prometheus: {
      bindAddress: listen,
      // Prometheus conventions, which promtool's linter checks: `_total` on counters, seconds with the unit in
      // the name (the SDK's defaults are milliseconds and bare names).
      countersTotalSuffix: true,
      unitSuffix: true,
      useSecondsForDurations: true,
      histogramBucketOverrides: buckets,
    },
  };
}

/**
 * Record one value on the Runtime's meter, tagged with the SDK's context (namespace, task_queue, workflow_type or
 * activity_type, snake_case like the SDK's own families) and the family's labels. The SDK caches instruments by
 * name, so creating one per value is a lookup.
 */
export function recordOnRuntime(key: MetricKey, labels: MetricTags, value: number, sdkTags: MetricTags): void {
  const d: MetricDefinition = WORKER_METRICS[key];
  const meter = Runtime.instance().metricMeter;
  const tags = { ...sdkTags, ...labels };
  if (d.kind === 'counter') meter.createCounter(meterName(d), '', d.help).add(value, tags);
  else if (d.kind === 'gauge') meter.createGauge(meterName(d), 'float', '', d.help).set(value, tags);
  else meter.createHistogram(meterName(d), 'float', '', d.help).record(value, tags);
}

/** The sink workflows record gpuops metrics through (workflows/metrics.ts); never called on replay. */
export function workflowMetricSinks(): InjectedSinks<GpuopsMetricSinks> {
  return {
    gpuopsMetrics: {
      record: {
        fn: (info, key, labels, value) =>
          recordOnRuntime(key, labels, value, {
            namespace: info.namespace,
            task_queue: info.taskQueue,
            workflow_type: info.workflowType,
          }),
        callDuringReplay: false,
      },
    },
  };
}
