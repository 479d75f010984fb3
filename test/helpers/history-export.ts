/**
 * Export every workflow history on a Temporal server to JSON files for the secret scan: each history through the
 * SDK (GetWorkflowExecutionHistory, written as `temporal workflow show --output json` prints it, payload data in
 * base64), and a sample through the real `temporal workflow show` CLI, so the scan also covers the exports an
 * operator makes. With payload codecs given (an encryption codec), payloads are decoded first: a secret must not
 * reach a history at all, encrypted or not.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Connection } from '@temporalio/client';
import type { PayloadCodec } from '@temporalio/common';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import { temporal } from '@temporalio/proto';

const run = promisify(execFile);

export interface ExportOptions {
  connection: Connection;
  outDir: string;
  /** The `temporal` CLI and the flags that reach the server (address, TLS); without it, no CLI sample. */
  cli?: { path: string; args: string[] };
  /** How many histories the CLI exports too (spread over the list; each CLI run takes about a second here). */
  cliSample?: number;
  codecs?: PayloadCodec[];
  concurrency?: number;
}

export interface ExportResult {
  namespaces: string[];
  histories: number;
  cliExports: number;
  events: number;
  /** Wall time of the SDK export (listing included) and of the CLI sample. */
  sdkMs: number;
  cliMs: number;
}

interface Execution {
  namespace: string;
  workflowId: string;
  runId: string;
}

async function listExecutions(conn: Connection): Promise<{ namespaces: string[]; executions: Execution[] }> {
  const namespaces: string[] = [];
  let token: Uint8Array | undefined;
  do {
    const r = await conn.workflowService.listNamespaces({ pageSize: 100, nextPageToken: token });
    for (const n of r.namespaces ?? []) if (n.namespaceInfo?.name) namespaces.push(n.namespaceInfo.name);
    token = r.nextPageToken?.length ? r.nextPageToken : undefined;
  } while (token);
  const executions: Execution[] = [];
  for (const namespace of namespaces) {
    let page: Uint8Array | undefined;
    do {
      const r = await conn.workflowService.listWorkflowExecutions({ namespace, pageSize: 1000, nextPageToken: page });
      for (const e of r.executions ?? []) {
        const { workflowId, runId } = e.execution ?? {};
        if (workflowId && runId) executions.push({ namespace, workflowId, runId });
      }
      page = r.nextPageToken?.length ? r.nextPageToken : undefined;
    } while (page);
  }
  return { namespaces, executions };
}

async function fetchHistory(conn: Connection, x: Execution): Promise<temporal.api.history.v1.IHistoryEvent[]> {
  const events: temporal.api.history.v1.IHistoryEvent[] = [];
  let page: Uint8Array | undefined;
  do {
    const r = await conn.workflowService.getWorkflowExecutionHistory({
      namespace: x.namespace,
      execution: { workflowId: x.workflowId, runId: x.runId },
      maximumPageSize: 1000,
      nextPageToken: page,
    });
    events.push(...(r.history?.events ?? []));
    page = r.nextPageToken?.length ? r.nextPageToken : undefined;
  } while (page);
  return events;
}

/** Decode, in place, every Payload (an object with `metadata` and `data` bytes) under `node` through `codecs`. */
async function decodePayloads(node: unknown, codecs: PayloadCodec[]): Promise<void> {
  const found: { holder: Record<string, unknown>; key: string }[] = [];
  const visit = (v: unknown, holder?: Record<string, unknown>, key?: string): void => {
    if (!v || typeof v !== 'object' || v instanceof Uint8Array) return;
    const o = v as Record<string, unknown>;
    if (o.data instanceof Uint8Array && o.metadata && typeof o.metadata === 'object' && holder && key) {
      found.push({ holder, key });
      return;
    }
    for (const [k, x] of Object.entries(o)) visit(x, o, k);
  };
  visit(node);
  if (found.length === 0) return;
  let payloads = found.map((f) => f.holder[f.key] as temporal.api.common.v1.IPayload);
  for (const codec of [...codecs].reverse()) payloads = await codec.decode(payloads);
  found.forEach((f, i) => (f.holder[f.key] = payloads[i]));
}

const fileName = (x: Execution): string =>
  `${x.workflowId.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 80)}--${x.runId.slice(0, 8)}.json`;

async function pool<T>(items: T[], n: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

export async function exportHistories(opts: ExportOptions): Promise<ExportResult> {
  const t0 = Date.now();
  const { namespaces, executions } = await listExecutions(opts.connection);
  let events = 0;
  await pool(executions, opts.concurrency ?? 16, async (x) => {
    const history = temporal.api.history.v1.History.create({ events: await fetchHistory(opts.connection, x) });
    if (opts.codecs?.length) await decodePayloads(history, opts.codecs);
    events += history.events.length;
    const dir = path.join(opts.outDir, 'sdk', x.namespace);
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, fileName(x)), historyToJSON(history));
  });
  const t1 = Date.now();
  const cli = opts.cli;
  const want = cli ? Math.min(opts.cliSample ?? 5, executions.length) : 0;
  const step = executions.length / Math.max(want, 1);
  const sample = Array.from({ length: want }, (_, i) => executions[Math.floor(i * step)]!);
  await pool(sample, 4, async (x) => {
    const args = [
      ...['workflow', 'show', ...cli!.args, '--namespace', x.namespace],
      ...['--workflow-id', x.workflowId, '--run-id', x.runId, '--output', 'json'],
    ];
    const { stdout } = await run(cli!.path, args, { maxBuffer: 256 * 1024 * 1024 });
    const dir = path.join(opts.outDir, 'cli', x.namespace);
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, fileName(x)), stdout);
  });
  return {
    namespaces,
    histories: executions.length,
    cliExports: sample.length,
    events,
    sdkMs: t1 - t0,
    cliMs: Date.now() - t1,
  };
}
