/** The committed Grafana dashboard (deploy/grafana/gpuops.json) and the metric names its PromQL queries read. */
import { readFileSync } from 'node:fs';
import path from 'node:path';

export interface DashboardQuery {
  /** Panel title, or `variable <name>`. */
  where: string;
  expr: string;
}

interface Panel {
  title: string;
  type: string;
  targets?: { expr: string; datasource?: { uid?: string } }[];
  datasource?: { uid?: string };
  panels?: Panel[];
}

export interface Dashboard {
  schemaVersion: number;
  __inputs: { name: string; type: string; pluginId: string }[];
  panels: Panel[];
  templating: { list: { name: string; query: { query: string }; datasource: { uid: string } }[] };
}

export const DASHBOARD_PATH = path.join(__dirname, '..', '..', 'deploy', 'grafana', 'gpuops.json');

export function loadDashboard(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD_PATH, 'utf8')) as Dashboard;
}

/** Every panel's PromQL and every query variable's, with where it is. */
export function dashboardQueries(d: Dashboard = loadDashboard()): DashboardQuery[] {
  const panels = d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
  return [
    ...panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: p.title, expr: t.expr }))),
    ...d.templating.list.map((v) => ({ where: `variable ${v.name}`, expr: v.query.query })),
  ];
}

/** PromQL functions, aggregations and keywords: identifiers that are not metric names. */
const NOT_METRICS = new Set(
  (
    'sum min max avg count stddev stdvar topk bottomk quantile count_values group by without on ignoring ' +
    'group_left group_right bool and or unless offset rate irate increase delta idelta deriv histogram_quantile ' +
    'time clamp_min clamp_max clamp abs ceil floor round label_replace label_join vector scalar absent ' +
    'absent_over_time sum_over_time avg_over_time max_over_time min_over_time count_over_time last_over_time ' +
    'label_values query_result'
  ).split(' '),
);

/**
 * The metric names a PromQL expression reads: what is left once strings, label matchers, grouping clauses, range
 * selectors, Grafana variables, numbers, functions and keywords are taken out.
 */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\$\{?\w+\}?/g, ' ')
    .replace(/(?<![\w:])\d+(?:\.\d+)?(?:e[-+]?\d+)?/gi, ' ');
  // label_values(metric, label): the second argument is a label name.
  const labelValues = /label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)/.exec(stripped);
  if (labelValues) return [labelValues[1]!];
  const names = stripped.match(/[a-zA-Z_:][a-zA-Z0-9_:]*/g) ?? [];
  return [...new Set(names.filter((n) => !NOT_METRICS.has(n)))];
}
