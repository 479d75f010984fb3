/**
 * deploy/grafana/gpuops.json is a Grafana dashboard model whose every query names a series that gpuops exports (the
 * router's registry, the workers' families) or that the engines export (real vLLM and llama.cpp /metrics captures
 * under test/fixtures/<engine>/real/). The Temporal SDK's families are checked against a real worker's scrape in
 * test/worker-metrics.test.ts.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { RouterMetrics } from '../src/router/metrics';
import { WORKER_METRICS } from '../src/metrics/definitions';
import { dashboardQueries, loadDashboard, metricNames } from './helpers/dashboard';
import { parsePrometheusText } from '../src/hosts/engines/openai-compat';

/** The series names of a family: a histogram's _bucket, _sum and _count besides its own name. */
function seriesOf(name: string, kind: string): string[] {
  return kind === 'histogram' ? [name, `${name}_bucket`, `${name}_sum`, `${name}_count`] : [name];
}

async function gpuopsSeries(): Promise<Set<string>> {
  const router = await new RouterMetrics().registry.getMetricsAsJSON();
  return new Set([
    ...router.flatMap((m) => seriesOf(m.name, String(m.type))),
    ...Object.values(WORKER_METRICS).flatMap((d) => seriesOf(d.name, d.kind)),
  ]);
}

function engineSeries(): Set<string> {
  const names = new Set<string>();
  for (const engine of ['vllm', 'llamacpp']) {
    const dir = path.join(__dirname, 'fixtures', engine, 'real');
    for (const f of readdirSync(dir).filter((n) => n.startsWith('metrics'))) {
      for (const s of parsePrometheusText(readFileSync(path.join(dir, f), 'utf8'))) names.add(s.name);
    }
  }
  return names;
}

test('is a Grafana dashboard model on a ${DS_PROMETHEUS} input', () => {
  const d = loadDashboard();
  expect(d.schemaVersion).toBe(39);
  expect(d.__inputs).toEqual([
    expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' }),
  ]);
  const queried = d.panels.filter((p) => p.type !== 'row');
  expect(queried.length).toBeGreaterThan(10);
  for (const p of queried) {
    expect(p.datasource?.uid).toBe('${DS_PROMETHEUS}');
    expect(p.targets?.length).toBeGreaterThan(0);
    for (const t of p.targets ?? []) expect(t.datasource?.uid).toBe('${DS_PROMETHEUS}');
  }
  for (const v of d.templating.list) expect(v.datasource.uid).toBe('${DS_PROMETHEUS}');
});

test('the PromQL reader finds metric names and nothing else', () => {
  expect(
    metricNames(
      'histogram_quantile(0.95, sum by (alias, variant, le) (rate(gpuops_router_time_to_first_token_seconds_bucket{alias=~"$alias"}[$__rate_interval])))',
    ),
  ).toEqual(['gpuops_router_time_to_first_token_seconds_bucket']);
  expect(metricNames('(time() - max by (plan) (a_seconds{plan=~"$plan"})) / max by (plan) (b_seconds) > 1e-9')).toEqual(
    ['a_seconds', 'b_seconds'],
  );
  expect(metricNames('max by (instance) (vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)')).toEqual([
    'vllm:kv_cache_usage_perc',
    'vllm:gpu_cache_usage_perc',
  ]);
  expect(metricNames('label_values(gpuops_probe_rounds_total, node)')).toEqual(['gpuops_probe_rounds_total']);
});

test('every query names a series gpuops or the engines export', async () => {
  const known = new Set([...(await gpuopsSeries()), ...engineSeries()]);
  const unknown: string[] = [];
  const used = new Set<string>();
  for (const q of dashboardQueries()) {
    const names = metricNames(q.expr);
    expect(names.length).toBeGreaterThan(0);
    for (const n of names) {
      used.add(n);
      // The SDK's temporal_* families: checked against a live worker (test/worker-metrics.test.ts).
      if (!n.startsWith('temporal_') && !known.has(n)) unknown.push(`${q.where}: ${n}`);
    }
  }
  expect(unknown).toEqual([]);
  // What the issue asks the dashboard to show is there: canary vs stable TTFT, tokens/s and errors; recoveries; RPO.
  for (const n of [
    'gpuops_router_time_to_first_token_seconds_bucket',
    'gpuops_router_output_tokens_total',
    'gpuops_router_errors_total',
    'gpuops_router_shadow_requests_total',
    'gpuops_router_shadow_time_to_first_token_seconds_bucket',
    'gpuops_recoveries_total',
    'gpuops_recovery_rungs_total',
    'gpuops_backup_last_success_timestamp_seconds',
    'gpuops_backup_rpo_seconds',
    'vllm:generation_tokens_total',
    'llamacpp:tokens_predicted_total',
  ]) {
    expect(used).toContain(n);
  }
});
