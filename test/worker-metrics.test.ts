/**
 * The workers' Prometheus endpoints, for real: a control worker process (workers/control.ts, --metrics-listen) and a
 * sandbox node's worker process (gpuops.yaml metrics.node) run inspectNode, recoverNode, deployModel and runBackup
 * against the real Temporal server and restic; their /metrics carry the SDK's families and gpuops's with the values
 * the workflows recorded, and pass `promtool check metrics`.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { parse, stringify } from 'yaml';
import { parseConfig } from '../src/config/load';
import type { Config } from '../src/config/schema';
import type { BackupRecord, DeploymentStatus, IncidentRecord } from '../src/contracts';
import { CONTROL_TASK_QUEUE, nodeTaskQueue, workflowIds } from '../src/contracts';
import type { HealthReport } from '../src/domain/classify';
import { WORKER_METRICS } from '../src/metrics/definitions';
import { ManagedProcess, tsxCommand } from '../src/cli/processes';
import { freePort } from '../src/sandbox/node';
import { backupInputFor } from '../src/temporal/schedules';
import * as helpers from './helpers/env';
import { writeTestSecret } from './helpers/secrets';
import { dashboardQueries, metricNames } from './helpers/dashboard';
import { parsePrometheusText, type PromSample } from '../src/hosts/engines/openai-compat';
import { promtoolLint, samplesOf } from './helpers/prometheus';

let env: helpers.TestEnv;
let sbx: helpers.TestSandbox;
let control: ManagedProcess;
let config: Config;
const controlQueue = helpers.uniqueId('gpuops-control-metrics');
let controlListen = '';
let nodeListen = '';
const repoDir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-metrics-'));
const plan = helpers.uniqueId('cfg').toLowerCase();
const controlLog: string[] = [];

async function scrape(listen: string): Promise<{ text: string; samples: PromSample[] }> {
  const res = await fetch(`http://${listen}/metrics`);
  expect(res.status).toBe(200);
  const text = await res.text();
  return { text, samples: parsePrometheusText(text) };
}

/** The one sample of `name` with these labels (fails naming what there is when there is not exactly one). */
function one(samples: PromSample[], name: string, labels: Record<string, string>): number {
  const found = samplesOf(samples, name, labels);
  if (found.length !== 1) {
    const have = samplesOf(samples, name).map((s) => JSON.stringify(s.labels));
    throw new Error(`${found.length} samples of ${name} ${JSON.stringify(labels)}; there are: ${have.join(' ')}`);
  }
  return found[0]!.value;
}

beforeAll(async () => {
  env = await helpers.openTestEnv();
  writeTestSecret(path.join(repoDir, 'pw'), 'restic-password');
  nodeListen = `127.0.0.1:${await freePort()}`;
  controlListen = `127.0.0.1:${await freePort()}`;
  sbx = await helpers.startTestSandbox({ extra: { metrics: { node: nodeListen } } });
  // A backup plan on the sandbox node, whose id is known only now (the control worker reads it from this file).
  const raw = parse(readFileSync(sbx.loaded.path, 'utf8')) as Record<string, unknown>;
  raw.backups = [
    {
      id: plan,
      node: sbx.nodeId,
      what: 'gpuops-config',
      repository: path.join(repoDir, 'repo'),
      passwordFile: path.join(repoDir, 'pw'),
      schedule: { cron: '0 3 1 1 *' },
      rpo: '6h',
      verify: { readDataSubset: '100%' },
    },
  ];
  writeFileSync(sbx.loaded.path, stringify(raw));
  config = parseConfig(stringify(raw), sbx.loaded.path);
  control = new ManagedProcess({
    name: 'control',
    ...tsxCommand('workers/control.ts', ['--task-queue', controlQueue, '--metrics-listen', controlListen]),
    env: { GPUOPS_CONFIG: sbx.loaded.path, GPUOPS_LOG_LEVEL: 'WARN' },
    log: (l) => controlLog.push(l),
  });
  control.start();
  await helpers.waitForPoller(env.client, nodeTaskQueue(sbx.nodeId));
  // The control worker bundles the workflows at start (webpack): allow it time on a loaded machine.
  await helpers.waitForPoller(env.client, controlQueue, 90_000);
}, 150_000);

afterAll(async () => {
  await control?.stop();
  await sbx?.stop();
  await env?.close();
  rmSync(repoDir, { recursive: true, force: true });
});

test('the control and node workers export the SDK and gpuops families with the values the workflows recorded, lint-clean', async () => {
  const node = sbx.nodeId;
  const run = <T>(type: string, workflowId: string, input: unknown): Promise<T> =>
    env.client.workflow.execute(type, { taskQueue: controlQueue, workflowId, args: [input] });

  const report = await run<HealthReport>('inspectNode', helpers.uniqueId('inspect'), { node, expectedGpus: 1 });
  expect(report.healthy).toBe(true);
  const incident = await run<IncidentRecord>('recoverNode', workflowIds.recover(node), {
    node,
    reason: 'metrics test',
    startRung: 'restart-container',
    ...helpers.FAST_RECOVERY,
  });
  expect(incident.outcome).toBe('recovered');
  const deployment = await run<DeploymentStatus>('deployModel', workflowIds.deploy(node, 'chat'), {
    node,
    alias: 'chat',
    engine: 'no-such-engine',
    model: 'llama3.2:1b',
  });
  expect(deployment.outcome).toBe('failed');
  const record = await run<BackupRecord>(
    'runBackup',
    `${workflowIds.backupSchedule(plan)}:${helpers.uniqueId('t')}`,
    backupInputFor(config, config.backups[0]!),
  );
  expect(record.status).toBe('ok');

  const ctl = await scrape(controlListen);
  // gpuops's series carry the SDK's context tags as the SDK's own families name them, so the two join.
  const wf = (workflowType: string) => ({
    namespace: 'default',
    task_queue: controlQueue,
    workflow_type: workflowType,
  });
  // inspectNode probed once (healthy); recoverNode probes to diagnose and to verify.
  expect(one(ctl.samples, 'gpuops_probe_rounds_total', { ...wf('inspectNode'), node, outcome: 'healthy' })).toBe(1);
  expect(
    one(ctl.samples, 'gpuops_probe_rounds_total', { ...wf('recoverNode'), node, outcome: 'healthy' }),
  ).toBeGreaterThanOrEqual(2);
  expect(one(ctl.samples, 'gpuops_recoveries_total', { ...wf('recoverNode'), node, outcome: 'recovered' })).toBe(1);
  for (const a of incident.rungs) {
    expect(one(ctl.samples, 'gpuops_recovery_rungs_total', { node, rung: a.rung, outcome: a.outcome })).toBe(1);
  }
  expect(incident.rungs.map((a) => a.rung)).toEqual(['restart-container']);
  // An unknown engine fails in planning, before the first stage it records: the stage it reached is "starting".
  expect(deployment.timings.stages.map((s) => s.stage)).toEqual(['rolling-back', 'failed']);
  const deployed = samplesOf(ctl.samples, 'gpuops_deployments_total', { ...wf('deployModel'), node, alias: 'chat' });
  expect(deployed.map((s) => [s.labels.stage, s.labels.outcome, s.value])).toEqual([['starting', 'failed', 1]]);
  expect(one(ctl.samples, 'gpuops_backup_runs_total', { ...wf('runBackup'), plan, outcome: 'ok' })).toBe(1);
  expect(one(ctl.samples, 'gpuops_backup_rpo_seconds', { plan })).toBe(6 * 3600);
  expect(one(ctl.samples, 'gpuops_backup_last_success_timestamp_seconds', { plan })).toBeCloseTo(
    Date.parse(record.startedAt) / 1000,
    2,
  );
  // The SDK's own families, named the Prometheus way (seconds, _total), on the same endpoint.
  expect(one(ctl.samples, 'temporal_workflow_completed_total', wf('inspectNode'))).toBe(1);
  expect(
    samplesOf(ctl.samples, 'temporal_workflow_task_execution_latency_seconds_count', { task_queue: controlQueue })
      .length,
  ).toBeGreaterThan(0);
  expect(
    samplesOf(ctl.samples, 'temporal_activity_execution_latency_seconds_count', { task_queue: controlQueue }).length,
  ).toBeGreaterThan(0);

  const nod = await scrape(nodeListen);
  const restic = (operation: string) => ({ plan, operation, outcome: 'ok', task_queue: nodeTaskQueue(node) });
  expect(
    one(nod.samples, 'gpuops_restic_duration_seconds_count', {
      ...restic('backup'),
      activity_type: 'resticPrecheckAndBackup',
    }),
  ).toBe(1);
  expect(
    one(nod.samples, 'gpuops_restic_duration_seconds_count', {
      ...restic('check'),
      activity_type: 'resticForgetAndCheck',
    }),
  ).toBe(1);
  for (const op of ['backup', 'check']) {
    expect(one(nod.samples, 'gpuops_restic_duration_seconds_count', restic(op))).toBe(1);
    expect(one(nod.samples, 'gpuops_restic_duration_seconds_sum', restic(op))).toBeGreaterThan(0);
  }
  expect(one(nod.samples, 'gpuops_restic_bytes_total', { plan, kind: 'processed' })).toBe(
    record.backup?.bytesProcessed,
  );
  expect(one(nod.samples, 'gpuops_restic_bytes_total', { plan, kind: 'added' })).toBe(record.backup?.dataAdded);
  expect(
    samplesOf(nod.samples, 'temporal_activity_execution_latency_seconds_count', {
      activity_type: 'resticPrecheckAndBackup',
    }),
  ).toHaveLength(1);
  // Buckets are gpuops's (seconds up to hours), not the SDK's millisecond defaults.
  const les = samplesOf(nod.samples, 'gpuops_restic_duration_seconds_bucket', restic('backup')).map((s) => s.labels.le);
  expect(les).toEqual([...WORKER_METRICS.resticDuration.buckets.map(String), '+Inf']);

  // The dashboard's SDK panels read families (and group by labels) that a real worker exports.
  const sdkSeries = [...ctl.samples, ...nod.samples].filter((x) => x.name.startsWith('temporal_'));
  for (const q of dashboardQueries()) {
    for (const name of metricNames(q.expr).filter((n) => n.startsWith('temporal_'))) {
      const series = sdkSeries.filter((x) => x.name === name);
      expect({ where: q.where, name, exported: series.length > 0 }).toEqual({ where: q.where, name, exported: true });
      for (const by of q.expr.matchAll(/by \(([^)]*)\)/g)) {
        for (const label of by[1]!
          .split(',')
          .map((l) => l.trim())
          .filter((l) => l !== 'le')) {
          expect({ name, label, present: series.some((x) => label in x.labels) }).toEqual({
            name,
            label,
            present: true,
          });
        }
      }
    }
  }
  for (const page of [ctl, nod]) {
    const lint = await promtoolLint(page.text);
    expect(lint).toEqual({ exitCode: 0, problems: '' });
  }
  // Only the control worker runs workflows: nothing of theirs on the node's page, and no restic on the control's.
  expect(samplesOf(nod.samples, 'gpuops_probe_rounds_total')).toEqual([]);
  expect(samplesOf(ctl.samples, 'gpuops_restic_bytes_total')).toEqual([]);
  expect(controlLog.join('\n')).toContain(`control worker metrics on http://${controlListen}/metrics`);
}, 120_000);

describe('a metrics address the worker cannot use ends it at once with exit code 2, naming it', () => {
  const worker = (args: string[]) => {
    const cmd = tsxCommand('workers/control.ts', args);
    return execa(cmd.command, cmd.args, {
      env: { GPUOPS_CONFIG: sbx.loaded.path },
      reject: false,
      timeout: 60_000,
    });
  };

  test('a host name instead of an IP address', async () => {
    const r = await worker(['--task-queue', CONTROL_TASK_QUEUE, '--metrics-listen', 'localhost:9464']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('--metrics-listen: must be an IP address and a port 1-65535');
    expect(r.stderr).toContain('(got "localhost:9464")');
  });

  test('a port another process holds', async () => {
    const r = await worker(['--task-queue', helpers.uniqueId('unused'), '--metrics-listen', controlListen]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`invalid metrics:\\s+listen ${controlListen}: .*Address already in use`));
  });
});
