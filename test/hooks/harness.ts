/**
 * Plumbing for the receiver tests: a client and worker connection to the run-wide Temporal dev server, the stand-in
 * recoverNode bundled once per file, a config with fresh node ids, secret files, and Alertmanager-shaped payloads.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { Worker, bundleWorkflowCode, type NativeConnection, type WorkflowBundle } from '@temporalio/worker';
import { stringify } from 'yaml';
import { parseConfig, type LoadedConfig } from '../../src/config/load';
import { ALERTMANAGER_PATH } from '../../src/hooks/server';

// ../helpers/env installs the quiet (WARN) runtime logger for every test file that uses it.
import { openTestEnv, quietLogger, uniqueId } from '../helpers/env';
import { testSecret, writeSecretFile } from '../helpers/secrets';

export { uniqueId };

export const TOKEN = testSecret('hooks-token');
export const HMAC_SECRET = testSecret('hooks-hmac-key');

export interface Temporal {
  client: Client;
  connection: NativeConnection;
  /** A task queue of this file's own, so no other test file's control worker takes our runs. */
  taskQueue: string;
  close(): Promise<void>;
}

export async function openTemporal(): Promise<Temporal> {
  const env = await openTestEnv();
  return { client: env.client, connection: env.connection, taskQueue: env.controlQueue, close: () => env.close() };
}

let bundle: Promise<WorkflowBundle> | undefined;
/** The stand-in recoverNode, bundled once per test file. */
export function fakeRecoverBundle(): Promise<WorkflowBundle> {
  bundle ??= bundleWorkflowCode({ workflowsPath: require.resolve('./fake-recover-workflow'), logger: quietLogger });
  return bundle;
}

/** Run `fn` while a fresh control worker with the stand-in recoverNode polls the test queue. */
export async function withWorker<T>(t: Temporal, fn: () => Promise<T>): Promise<T> {
  const worker = await Worker.create({
    connection: t.connection,
    namespace: 'default',
    taskQueue: t.taskQueue,
    workflowBundle: await fakeRecoverBundle(),
  });
  return worker.runUntil(fn);
}

export interface Fixture {
  loaded: LoadedConfig;
  dir: string;
  tokenFile: string;
  hmacSecretFile: string;
  stateFile: string;
  /** Configured node ids, fresh per fixture so workflow IDs recover:<node> never collide across tests or runs. */
  nodes: string[];
}

/** A temp dir with a gpuops.yaml naming `count` fresh nodes, a hooks section with both secrets, and the secrets. */
export function fixture(count = 2): Fixture {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-hooks-'));
  const tokenFile = path.join(dir, 'hooks-token');
  const hmacSecretFile = path.join(dir, 'hooks-hmac');
  // A trailing newline, as `echo secret > file` leaves: it must not be part of the secret.
  writeSecretFile(tokenFile, 'hooks-token', TOKEN);
  writeSecretFile(hmacSecretFile, 'hooks-hmac-key', HMAC_SECRET);
  const nodes = Array.from({ length: count }, () => uniqueId('n'));
  const raw = {
    nodes: nodes.map((id) => ({ id })),
    hooks: { listen: '127.0.0.1:0', tokenFile: 'hooks-token', hmacSecretFile: 'hooks-hmac' },
  };
  const configPath = path.join(dir, 'gpuops.yaml');
  writeFileSync(configPath, stringify(raw));
  return {
    loaded: { path: configPath, config: parseConfig(stringify(raw), configPath) },
    dir,
    tokenFile,
    hmacSecretFile,
    stateFile: path.join(dir, '.gpuops', 'hooks-seen.json'),
    nodes,
  };
}

export interface AlertSpec {
  labels: Record<string, string>;
  status?: 'firing' | 'resolved';
  fingerprint?: string;
  startsAt?: string;
  annotations?: Record<string, string>;
}

/** An alert as Alertmanager's webhook notifier renders it (`.Alerts[]`). */
export function alert(spec: AlertSpec): Record<string, unknown> {
  const status = spec.status ?? 'firing';
  return {
    status,
    labels: { alertname: 'GpuXidError', severity: 'critical', ...spec.labels },
    annotations: spec.annotations ?? { summary: 'Xid 79: GPU has fallen off the bus', description: 'See dmesg.' },
    startsAt: spec.startsAt ?? '2025-05-04T10:15:30.123Z',
    endsAt: status === 'resolved' ? '2025-05-04T10:25:30.123Z' : '0001-01-01T00:00:00Z',
    generatorURL: 'http://prometheus.lan:9090/graph?g0.expr=gpu_xid_errors+%3E+0',
    fingerprint: spec.fingerprint ?? randomUUID().replace(/-/g, '').slice(0, 16),
  };
}

/** A version 4 webhook payload around the given alerts. */
export function payload(alerts: Record<string, unknown>[]): Record<string, unknown> {
  const firing = alerts.some((a) => a.status === 'firing');
  return {
    version: '4',
    groupKey: '{}:{alertname="GpuXidError"}',
    truncatedAlerts: 0,
    status: firing ? 'firing' : 'resolved',
    receiver: 'gpuops',
    groupLabels: { alertname: 'GpuXidError' },
    commonLabels: { alertname: 'GpuXidError' },
    commonAnnotations: {},
    externalURL: 'http://alertmanager.lan:9093',
    alerts,
  };
}

export interface Delivery {
  status: number;
  body: Record<string, unknown>;
}

/** POST a body to the receiver as Alertmanager does; `auth` adds headers (none: no credentials at all). */
export async function deliver(
  url: string,
  body: unknown,
  headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` },
): Promise<Delivery> {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const r = await fetch(`${url}${ALERTMANAGER_PATH}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: text,
  });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

/** Whether any run of the workflow ID exists (describe reads the server's own state: no visibility lag). */
export async function exists(client: Client, workflowId: string): Promise<boolean> {
  try {
    await client.workflow.getHandle(workflowId).describe();
    return true;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return false;
    throw err;
  }
}

/**
 * Run IDs of every run with this workflow ID, from visibility. Visibility is written asynchronously, so wait until at
 * least `atLeast` runs are listed, then list once more after a short settle so a late extra run shows too.
 */
export async function runIds(client: Client, workflowId: string, atLeast: number): Promise<string[]> {
  const list = async (): Promise<string[]> => {
    const ids: string[] = [];
    for await (const wf of client.workflow.list({ query: `WorkflowId = "${workflowId}"` })) ids.push(wf.runId);
    return ids;
  };
  const deadline = Date.now() + 5000;
  let ids = await list();
  while (ids.length < atLeast && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    ids = await list();
  }
  await new Promise((r) => setTimeout(r, 300));
  return list();
}
