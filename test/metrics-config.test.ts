/** Where a worker serves /metrics: gpuops.yaml `metrics.<kind>`, the --metrics-listen flag over it, and their errors. */
import { parseConfig } from '../src/config/load';
import { ValidationError } from '../src/domain/validation';
import { WORKER_METRICS } from '../src/metrics/definitions';
import { metricsListenFor, prometheusExporter } from '../src/metrics/runtime';

const config = (metrics: string) => parseConfig(`nodes:\n  - id: n1\nmetrics:\n${metrics}`, 'inline');

function problems(f: () => unknown): string[] {
  try {
    f();
  } catch (e) {
    if (e instanceof ValidationError) return e.problems;
    throw e;
  }
  throw new Error('no ValidationError');
}

test.each(['127.0.0.1:9464', '0.0.0.0:1', '[::]:9464', '[::1]:65535', '10.0.0.7:9100'])(
  'accepts the socket address %s per worker kind',
  (listen) => {
    const c = config(`  control: "${listen}"\n  node: "${listen}"\n  hypervisor: "${listen}"\n`);
    expect(c.metrics).toEqual({ control: listen, node: listen, hypervisor: listen });
  },
);

test.each(['localhost:9464', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:65536', '256.1.1.1:80', '::1:9464', ':9464'])(
  'refuses %s, naming the field and the rule',
  (listen) => {
    expect(problems(() => config(`  node: "${listen}"\n`))).toEqual([
      'metrics.node: must be an IP address and a port 1-65535, e.g. 127.0.0.1:9464 or [::]:9464 (not a host name)',
    ]);
  },
);

test('an unknown worker kind under metrics is refused', () => {
  expect(problems(() => config('  controller: 127.0.0.1:9464\n')).join('\n')).toMatch(/controller/);
});

test('metrics are off unless configured; --metrics-listen overrides the config, and off turns them off', () => {
  const none = parseConfig('nodes:\n  - id: n1\n', 'inline');
  expect(none.metrics).toEqual({});
  expect(metricsListenFor('node', none, undefined)).toBeUndefined();
  const c = config('  control: 127.0.0.1:9464\n  node: 0.0.0.0:9465\n');
  expect(metricsListenFor('control', c, undefined)).toBe('127.0.0.1:9464');
  expect(metricsListenFor('node', c, undefined)).toBe('0.0.0.0:9465');
  expect(metricsListenFor('hypervisor', c, undefined)).toBeUndefined();
  expect(metricsListenFor('node', c, '127.0.0.1:19465')).toBe('127.0.0.1:19465');
  expect(metricsListenFor('node', c, 'off')).toBeUndefined();
  expect(problems(() => metricsListenFor('node', c, 'node-1:9465'))).toEqual([
    '--metrics-listen: must be an IP address and a port 1-65535, e.g. 127.0.0.1:9464 or [::]:9464 (not a host name), or off (got "node-1:9465")',
  ]);
});

test("the exporter follows Prometheus's naming rules and carries gpuops's histogram buckets", () => {
  const e = prometheusExporter('127.0.0.1:9464');
  expect('prometheus' in e && e.prometheus).toMatchObject({
    bindAddress: '127.0.0.1:9464',
    countersTotalSuffix: true,
    unitSuffix: true,
    useSecondsForDurations: true,
    histogramBucketOverrides: { gpuops_restic_duration_seconds: [...WORKER_METRICS.resticDuration.buckets] },
  });
});

test('every gpuops worker family is named by the rules: gpuops_ prefix, _total counters, base units, bounded labels', () => {
  for (const d of Object.values(WORKER_METRICS)) {
    expect(d.name).toMatch(/^gpuops_[a-z][a-z0-9_]*$/);
    expect(d.name.endsWith('_total')).toBe(d.kind === 'counter');
    expect(d.name).not.toMatch(/_(ms|milliseconds|kilobytes|megabytes)(_|$)/);
    for (const l of d.labels)
      expect(['node', 'plan', 'rung', 'stage', 'outcome', 'kind', 'operation', 'alias']).toContain(l);
  }
});
