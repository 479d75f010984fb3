/**
 * The gpuops metric families the workers export, next to the Temporal SDK's own, on the worker's Prometheus
 * endpoint (src/metrics/runtime.ts). Both go through the SDK Runtime's metric meter (workflows reach it through a
 * sink, activities directly), so one listen address per worker process carries all of it.
 *
 * Workflow-safe: data and a thin typed wrapper, no I/O. Labels are bounded: node, plan, rung,
 * stage, outcome, kind, operation and alias come from gpuops.yaml or from fixed enums, never a model name, a digest
 * or free text. gpuops adds the SDK's bounded tags as the SDK's own families name them: namespace, task_queue and workflow_type
 * or activity_type.
 */
import type { Sinks } from '@temporalio/workflow';

export interface MetricDefinition {
  /** The exported name (counters end in `_total`, as Prometheus wants; the exporter appends it). */
  name: string;
  kind: 'counter' | 'gauge' | 'histogram';
  help: string;
  labels: readonly string[];
  /** Histogram bucket upper bounds (the SDK's defaults suit milliseconds, not these). */
  buckets?: readonly number[];
  /** The worker that exports it: workflows run on the control worker, restic on the node's. */
  worker: 'control' | 'node';
}

export const WORKER_METRICS = {
  probeRounds: {
    name: 'gpuops_probe_rounds_total',
    kind: 'counter',
    help: 'Health probe rounds of a node (inspectNode, watchNode, recoverNode), by outcome: healthy, unhealthy, unreachable.',
    labels: ['node', 'outcome'],
    worker: 'control',
  },
  probeProblems: {
    name: 'gpuops_probe_problems_total',
    kind: 'counter',
    help: 'Problems found by health probe rounds, by fault kind (engine-hung, gpu-xid, container-exited, …).',
    labels: ['node', 'kind'],
    worker: 'control',
  },
  recoveries: {
    name: 'gpuops_recoveries_total',
    kind: 'counter',
    help: 'Finished recoverNode incidents, by outcome: recovered, escalated, no-fault-found.',
    labels: ['node', 'outcome'],
    worker: 'control',
  },
  recoveryRungs: {
    name: 'gpuops_recovery_rungs_total',
    kind: 'counter',
    help: 'Rungs climbed by finished incidents, by rung and outcome: healthy, still-faulty, skipped, failed.',
    labels: ['node', 'rung', 'outcome'],
    worker: 'control',
  },
  deployments: {
    name: 'gpuops_deployments_total',
    kind: 'counter',
    help: 'Finished deployModel runs, by outcome (promoted, rolled-back, failed, cancelled) and the stage they reached.',
    labels: ['node', 'alias', 'stage', 'outcome'],
    worker: 'control',
  },
  backupRuns: {
    name: 'gpuops_backup_runs_total',
    kind: 'counter',
    help: 'Finished runBackup runs, by outcome: ok, warning (some files unreadable), failed.',
    labels: ['plan', 'outcome'],
    worker: 'control',
  },
  backupLastSuccess: {
    name: 'gpuops_backup_last_success_timestamp_seconds',
    kind: 'gauge',
    help: 'Unix time of the newest good backup of the plan (set by runBackup and by backupReport); age = time() - this.',
    labels: ['plan'],
    worker: 'control',
  },
  backupRpo: {
    name: 'gpuops_backup_rpo_seconds',
    kind: 'gauge',
    help: 'Recovery point objective of the plan: the newest good backup must be younger than this.',
    labels: ['plan'],
    worker: 'control',
  },
  resticDuration: {
    name: 'gpuops_restic_duration_seconds',
    kind: 'histogram',
    help: 'Wall time of restic operations on the node (backup, forget, check, test-restore, restore), by outcome.',
    labels: ['plan', 'operation', 'outcome'],
    buckets: [0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400],
    worker: 'node',
  },
  resticBytes: {
    name: 'gpuops_restic_bytes_total',
    kind: 'counter',
    help: 'Bytes restic handled: kind processed (read by a backup), added (new data stored), restored.',
    labels: ['plan', 'kind'],
    worker: 'node',
  },
} as const satisfies Record<string, MetricDefinition>;

type Defs = typeof WORKER_METRICS;
export type MetricKey = keyof Defs;
type Labels<K extends MetricKey> = Record<Defs[K]['labels'][number], string>;
type OfKind<T extends MetricDefinition['kind']> = {
  [K in MetricKey]: Defs[K]['kind'] extends T ? K : never;
}[MetricKey];

/** The name to create a counter under: the exporter appends `_total` itself (countersTotalSuffix). */
export function meterName(def: MetricDefinition): string {
  return def.kind === 'counter' ? def.name.replace(/_total$/, '') : def.name;
}

/** Where values go: the worker's Runtime meter (src/metrics/runtime.ts), through a sink from workflows. */
export type RecordMetric = (key: MetricKey, labels: Record<string, string>, value: number) => void;

/**
 * The workflow sink that carries gpuops metrics out of the workflow sandbox to the worker's Runtime meter. Not the
 * SDK's workflow `metricMeter`: that one tags with camelCase `taskQueue`/`workflowType` (TS SDK 1.24), which
 * Prometheus's naming rules (and promtool) reject and which do not join with the SDK's own `task_queue` series.
 * Like the SDK's, it issues no command and is never called on replay.
 */
export interface GpuopsMetricSinks extends Sinks {
  gpuopsMetrics: { record: RecordMetric };
}

/** Typed recording of the gpuops families: the label set is checked by the compiler against the family's. */
export function gpuopsMetrics(record: RecordMetric) {
  return {
    add<K extends OfKind<'counter'>>(key: K, labels: Labels<K>, value = 1): void {
      record(key, labels, value);
    },
    set<K extends OfKind<'gauge'>>(key: K, labels: Labels<K>, value: number): void {
      record(key, labels, value);
    },
    observe<K extends OfKind<'histogram'>>(key: K, labels: Labels<K>, value: number): void {
      record(key, labels, value);
    },
  };
}
