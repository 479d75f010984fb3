/**
 * Payload encryption end to end, on the run-wide dev server: a deployModel on a sandbox node (its real node worker a
 * child process reading temporal.encryption from its gpuops.yaml) and a scheduled backup plan, started by clients
 * with the codec. The server's own bytes — the history and the schedule as the frontend returns them, not decoded —
 * hold none of their inputs; the real `gpuops codec-server` decodes them for a caller with the token (and the
 * temporal CLI through it) and refuses everyone else; rotated keys still read old history.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Client } from '@temporalio/client';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { Worker, bundleWorkflowCode, type WorkflowBundle } from '@temporalio/worker';
import { parse, stringify } from 'yaml';
import { parseConfig, type LoadedConfig } from '../src/config/load';
import { workflowIds, type BackupRecord, type DeploymentStatus } from '../src/contracts';
import { freePort } from '../src/net';
import * as codec from '../src/temporal/codec';
import { backupInputFor, syncSchedules } from '../src/temporal/schedules';
import { createControlWorker } from '../workers/control';
import type { deployModel } from '../workflows/deploy';
import { routedAlias } from './production/fixtures/deployments';
import { quietLogger, testAddress, uniqueId, useSandboxEnv } from './helpers/env';
import { logOutputOf } from './helpers/run-log';
import { writeSecretFile, writeTestSecret } from './helpers/secrets';

const run = promisify(execFile);
const GPUOPS = path.resolve(__dirname, '..', 'bin', 'gpuops');
const TEMPORAL = process.env.TEMPORAL_CLI_PATH ?? path.resolve(__dirname, '..', '.gpuops', 'tools', 'bin', 'temporal');
const UI = 'http://localhost:8233';
const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-enc-'));
const keyFile = (name: string): string => {
  const f = path.join(dir, name);
  writeSecretFile(f, `encryption key ${name}`, randomBytes(32).toString('base64'));
  return f;
};
const keyA = keyFile('a.key');
const keyB = keyFile('b.key');
const token = writeTestSecret(path.join(dir, 'codec-token'), 'codec server token');
const encryption = {
  keys: [{ id: 'key-a', file: keyA }],
  encryptWith: 'key-a',
  codecServer: { tokenFile: path.join(dir, 'codec-token'), corsOrigins: [UI] },
};
const ctx = useSandboxEnv({
  router: true,
  sandbox: { extra: { temporal: { encryption } } },
  async beforeStop() {
    await client.schedule
      .getHandle(workflowIds.backupSchedule(PLAN))
      .delete()
      .catch(() => undefined);
    codecServer?.kill('SIGTERM');
  },
});
const PLAN = uniqueId('enc').toLowerCase();
/** In every input below, and nowhere in what the server stores unless encryption is broken. */
const marker = uniqueId('secret-marker');
let loaded: LoadedConfig;
let client: Client;
let bundle: WorkflowBundle;
let codecServer: ChildProcess | undefined;
let codecUrl = '';
let deployId = '';
let backupRunId = '';

const History = temporal.api.history.v1.History;
type RawHistory = temporal.api.history.v1.IHistory;

/** The history exactly as the server stores and returns it (no data converter between). */
async function rawHistory(workflowId: string): Promise<RawHistory> {
  const events: temporal.api.history.v1.IHistoryEvent[] = [];
  let nextPageToken: Uint8Array | undefined;
  do {
    const r = await ctx.env.client.workflowService.getWorkflowExecutionHistory({
      namespace: 'default',
      execution: { workflowId },
      ...(nextPageToken?.length ? { nextPageToken } : {}),
    });
    events.push(...(r.history?.events ?? []));
    nextPageToken = r.nextPageToken ?? undefined;
  } while (nextPageToken?.length);
  return { events };
}

/** Every byte of a history (its protobuf encoding: all strings and payload data as stored), searchable as text. */
const bytesOf = (h: RawHistory): string => Buffer.from(History.encode(h).finish()).toString('latin1');

/**
 * Where `text` occurs in a history: "<event id> <event type>" of each event whose bytes hold it (a readable failure,
 * instead of the whole history's bytes).
 */
const eventsHolding = (h: RawHistory, text: string): string[] =>
  (h.events ?? [])
    .filter((e) => bytesOf({ events: [e] }).includes(text))
    .map((e) => `${String(e.eventId)} ${temporal.api.enums.v1.EventType[e.eventType ?? 0]}`);

/**
 * The history without what stays plaintext by design: search attributes (the server indexes them) and the markers
 * of patched() (the SDK's core writes them, with the patch id, past the data converter).
 */
function withoutPlaintextByDesign(h: RawHistory): RawHistory {
  return {
    events: (h.events ?? []).map((e) => ({
      ...e,
      upsertWorkflowSearchAttributesEventAttributes: null,
      markerRecordedEventAttributes:
        e.markerRecordedEventAttributes?.markerName === 'core_patch' ? null : e.markerRecordedEventAttributes,
      workflowExecutionStartedEventAttributes: e.workflowExecutionStartedEventAttributes
        ? { ...e.workflowExecutionStartedEventAttributes, searchAttributes: null }
        : null,
    })),
  };
}

const startedInput = (h: RawHistory): Payload[] =>
  (h.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads ?? []) as Payload[];
const keyIdOf = (p: Payload | undefined): string => Buffer.from(p?.metadata?.['encryption-key-id'] ?? []).toString();

/** A control worker of this file's queue with the config's codec and a bundle that encrypts workflow failures. */
async function withControlWorker<T>(fn: () => Promise<T>): Promise<T> {
  const worker = await createControlWorker({
    connection: ctx.env.connection,
    namespace: 'default',
    loaded,
    workflowBundle: bundle,
    taskQueue: ctx.env.controlQueue,
    client,
  });
  return worker.runUntil(fn());
}

beforeAll(async () => {
  const store = path.join(ctx.sbx.dir, 'store');
  mkdirSync(store);
  writeFileSync(path.join(store, 'weights.bin'), randomBytes(64 * 1024));
  writeTestSecret(path.join(ctx.sbx.dir, 'pw'), 'restic password (encrypted backup plan)');
  const raw = parse(readFileSync(ctx.sbx.loaded.path, 'utf8')) as Record<string, unknown>;
  raw.backups = [
    {
      id: PLAN,
      node: ctx.sbx.nodeId,
      what: 'model-store',
      paths: [store],
      repository: path.join(ctx.sbx.dir, `repo-${marker}`),
      passwordFile: path.join(ctx.sbx.dir, 'pw'),
      schedule: { cron: '0 3 1 1 *' },
      rpo: '1h',
    },
  ];
  writeFileSync(ctx.sbx.loaded.path, stringify(raw));
  loaded = { path: ctx.sbx.loaded.path, config: parseConfig(stringify(raw), ctx.sbx.loaded.path) };
  client = new Client({
    connection: ctx.env.client.connection,
    namespace: 'default',
    dataConverter: codec.gpuopsDataConverter(loaded),
  });
  bundle = await bundleWorkflowCode({
    workflowsPath: require.resolve('../workflows'),
    failureConverterPath: codec.ENCRYPTED_FAILURE_CONVERTER_PATH,
    logger: quietLogger,
  });
}, 120_000);

test('a deployment started with encryption on: the stored history holds none of its input or record in clear, only its search attributes', async () => {
  const alias = routedAlias(ctx.router, ctx.sbx);
  deployId = workflowIds.deploy(ctx.sbx.nodeId, alias);
  const record = await withControlWorker(async () => {
    const h = await client.workflow.start<typeof deployModel>('deployModel', {
      taskQueue: ctx.env.controlQueue,
      workflowId: deployId,
      staticSummary: `Deploy for ${marker}`,
      args: [
        {
          node: ctx.sbx.nodeId,
          alias,
          engine: 'ollama',
          model: 'qwen2.5:0.5b-bad',
          requestedBy: marker,
          policy: { canarySteps: [50], stepDuration: '2s', analysisInterval: '1s', minSamples: 10 },
        },
      ],
    });
    return h.result();
  });
  // The node worker (a child process with the same config) decoded its activities' inputs: the run went through.
  expect(record).toMatchObject({ outcome: 'rolled-back', riskTier: 'high', requestedBy: marker });

  const h = await rawHistory(deployId);
  expect(bytesOf(h)).toContain('binary/encrypted');
  expect(keyIdOf(startedInput(h)[0])).toBe('key-a');
  expect(eventsHolding(h, marker)).toEqual([]);
  expect(eventsHolding(h, 'leaked')).toEqual([]); // the safety probes' findings, in activity results and the record
  // Search attributes are the server's index: the model is there (GpuopsModel), and nowhere else.
  expect(eventsHolding(h, 'qwen2.5:0.5b-bad')).not.toEqual([]);
  const rest = withoutPlaintextByDesign(h);
  expect(eventsHolding(rest, 'qwen2.5:0.5b-bad')).toEqual([]);
  expect(eventsHolding(rest, 'json/plain')).toEqual([]);

  // The workflow replays from that history with the codec; without it the worker cannot read its input.
  await expect(
    Worker.runReplayHistory({ workflowBundle: bundle, dataConverter: codec.gpuopsDataConverter(loaded) }, h, deployId),
  ).resolves.toBeUndefined();
  await expect(Worker.runReplayHistory({ workflowBundle: bundle }, h, deployId)).rejects.toThrow();
}, 90_000);

test('a backup plan: its schedule action and its run are stored encrypted; the client with the codec reads them back', async () => {
  const sid = workflowIds.backupSchedule(PLAN);
  const timings = { pickupTimeout: '20s', heartbeatTimeout: '6s' };
  await syncSchedules(client, loaded.config, {
    taskQueue: ctx.env.controlQueue,
    idPrefix: sid,
    inputOverrides: { timings },
  });
  const rawSchedule = await ctx.env.client.workflowService.describeSchedule({ namespace: 'default', scheduleId: sid });
  const scheduleBytes = Buffer.from(
    temporal.api.workflowservice.v1.DescribeScheduleResponse.encode(rawSchedule).finish(),
  ).toString('latin1');
  expect(scheduleBytes).toContain('binary/encrypted');
  expect(scheduleBytes).not.toContain(marker);
  const described = await client.schedule.getHandle(sid).describe();
  const args = described.action.type === 'startWorkflow' ? described.action.args : [];
  expect(args).toEqual([expect.objectContaining({ plan: expect.objectContaining({ id: PLAN }) })]);
  expect(JSON.stringify(args)).toContain(`repo-${marker}`);

  const plan = loaded.config.backups[0];
  if (!plan) throw new Error('no plan');
  const runId = `${sid}:${uniqueId('t')}`;
  backupRunId = runId;
  const record = await withControlWorker(() =>
    client.workflow.execute('runBackup', {
      taskQueue: ctx.env.controlQueue,
      workflowId: runId,
      args: [{ ...backupInputFor(loaded.config, plan), timings }],
    }),
  );
  expect((record as BackupRecord).status).toBe('ok');
  const h = await rawHistory(runId);
  expect(eventsHolding(h, marker)).toEqual([]);
  expect(eventsHolding(h, path.join(ctx.sbx.dir, 'store'))).toEqual([]);
  expect(eventsHolding(withoutPlaintextByDesign(h), 'json/plain')).toEqual([]);
}, 90_000);

/** POST to the codec server. */
function post(pathname: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${codecUrl}${pathname}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

const toJson = (p: Payload) => ({
  metadata: Object.fromEntries(
    Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')]),
  ),
  data: Buffer.from(p.data ?? []).toString('base64'),
});

type JsonPayload = ReturnType<typeof toJson>;

/** Decode payloads through the codec server with the bearer token, and read each as JSON. */
async function decodeThroughServer<T>(payloads: JsonPayload[]): Promise<{ status: number; values: T[] }> {
  const r = await post('/decode', { payloads }, { authorization: `Bearer ${token}`, 'x-namespace': 'default' });
  if (r.status !== 200) return { status: r.status, values: [] };
  const body = (await r.json()) as { payloads: JsonPayload[] };
  const values = body.payloads.map((p) =>
    defaultPayloadConverter.fromPayload<T>({
      metadata: Object.fromEntries(Object.entries(p.metadata).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
      data: Buffer.from(p.data, 'base64'),
    }),
  );
  return { status: r.status, values };
}

describe('gpuops codec-server', () => {
  beforeAll(async () => {
    const port = await freePort();
    codecServer = spawn(GPUOPS, ['codec-server', '--listen', `127.0.0.1:${port}`], {
      env: { ...process.env, GPUOPS_CONFIG: loaded.path },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // Everything it prints goes to the run's logs, which the secret scan reads (test/helpers/run-log.ts).
    logOutputOf(codecServer, 'codec-server');
    await new Promise<void>((resolve, reject) => {
      let out = '';
      codecServer?.stdout?.on('data', (b: Buffer) => {
        if (out.includes('listening on')) return;
        out += b.toString();
        if (out.includes('listening on')) resolve();
      });
      codecServer?.once('exit', (code) => reject(new Error(`gpuops codec-server exited ${code}: ${out}`)));
    });
    codecUrl = `http://127.0.0.1:${port}`;
  }, 60_000);

  test('decodes the stored input for the bearer token; no token or a wrong one is 401', async () => {
    const payloads = startedInput(await rawHistory(deployId)).map(toJson);
    const ok = await decodeThroughServer<{ requestedBy: string; model: string }>(payloads);
    expect(ok.status).toBe(200);
    expect(ok.values).toEqual([expect.objectContaining({ requestedBy: marker, model: 'qwen2.5:0.5b-bad' })]);
    // The namespace-templated path the CLI may use answers the same.
    expect((await post('/default/decode', { payloads }, { authorization: `Bearer ${token}` })).status).toBe(200);

    expect((await post('/decode', { payloads })).status).toBe(401);
    expect((await post('/decode', { payloads }, { authorization: `Bearer ${token}x` })).status).toBe(401);
    expect((await post('/encode', { payloads }, { authorization: 'Bearer nope' })).status).toBe(401);
    // Percent-encoded paths reach the same routes (the router decodes them): they are refused all the same.
    for (const p of ['/decod%65', '/%64ecode', '/default/decod%65', '/encod%65'])
      expect([p, (await post(p, { payloads })).status]).toEqual([p, 401]);
  });

  test('decodes a backup plan for the token holder: the schedule action as the server stores it, and the run it started', async () => {
    const rawSchedule = await ctx.env.client.workflowService.describeSchedule({
      namespace: 'default',
      scheduleId: workflowIds.backupSchedule(PLAN),
    });
    const actionInput = (rawSchedule.schedule?.action?.startWorkflow?.input?.payloads ?? []) as Payload[];
    expect(actionInput.map(keyIdOf)).toEqual(['key-a']);
    type PlanInput = { plan: { id: string; repository: string } };
    const schedule = await decodeThroughServer<PlanInput>(actionInput.map(toJson));
    expect(schedule.status).toBe(200);
    expect(schedule.values).toEqual([
      expect.objectContaining({
        plan: expect.objectContaining({ id: PLAN, repository: expect.stringContaining(marker) }),
      }),
    ]);
    const started = await decodeThroughServer<PlanInput>(startedInput(await rawHistory(backupRunId)).map(toJson));
    expect(started.values).toEqual(schedule.values.map((v) => expect.objectContaining({ plan: v.plan }) as unknown));
    // Without the token: refused, the plan stays ciphertext.
    expect((await post('/decode', { payloads: actionInput.map(toJson) })).status).toBe(401);
  });

  test('answers CORS preflight for the UI origin only; a browser logs in for a cookie the UI sends along', async () => {
    const preflight = (origin: string) =>
      fetch(`${codecUrl}/decode`, {
        method: 'OPTIONS',
        headers: {
          origin,
          'access-control-request-method': 'POST',
          'access-control-request-headers': 'authorization,content-type,x-namespace',
        },
      });
    const ok = await preflight(UI);
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-origin')).toBe(UI);
    expect(ok.headers.get('access-control-allow-credentials')).toBe('true');
    expect(ok.headers.get('access-control-allow-headers')).toBe('Authorization, Content-Type, X-Namespace');
    const other = await preflight('http://evil.example:8233');
    expect(other.status).toBe(403);
    expect(other.headers.get('access-control-allow-origin')).toBeNull();

    const badLogin = await fetch(`${codecUrl}/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: 'wrong' }),
    });
    expect(badLogin.status).toBe(401);
    expect(badLogin.headers.get('set-cookie')).toBeNull();
    // As a browser submits the login page's form: with the page's own origin.
    const login = await fetch(`${codecUrl}/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin: codecUrl },
      body: new URLSearchParams({ token }),
    });
    expect(login.status).toBe(200);
    const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0] ?? '';
    expect(cookie).toMatch(/^gpuops_codec=/);
    expect(cookie).not.toContain(token);
    const payloads = startedInput(await rawHistory(deployId)).map(toJson);
    const viaCookie = await post('/decode', { payloads }, { cookie, origin: UI });
    expect(viaCookie.status).toBe(200);
    expect(viaCookie.headers.get('access-control-allow-origin')).toBe(UI);
    expect((await post('/decode', { payloads }, { cookie, origin: 'http://evil.example' })).status).toBe(403);
  });

  test('`temporal workflow show --codec-endpoint --codec-auth` prints the decoded input; without them it is ciphertext', async () => {
    const show = async (extra: string[]) => {
      const { stdout } = await run(
        TEMPORAL,
        ['workflow', 'show', '--address', testAddress(), '-w', deployId, '--output', 'json', ...extra],
        { maxBuffer: 64 * 1024 * 1024 },
      );
      const json = JSON.parse(stdout) as RawJsonHistory;
      const p = json.events[0]?.workflowExecutionStartedEventAttributes?.input?.payloads[0];
      return {
        encoding: Buffer.from(p?.metadata.encoding ?? '', 'base64').toString(),
        data: Buffer.from(p?.data ?? '', 'base64').toString(),
      };
    };
    const decoded = await show(['--codec-endpoint', codecUrl, '--codec-auth', `Bearer ${token}`]);
    expect(decoded.encoding).toBe('json/plain');
    expect(JSON.parse(decoded.data)).toMatchObject({ requestedBy: marker, model: 'qwen2.5:0.5b-bad' });
    const plain = await show([]);
    expect(plain.encoding).toBe('binary/encrypted');
    expect(plain.data).not.toContain(marker);
  });
});

interface RawJsonHistory {
  events: {
    workflowExecutionStartedEventAttributes?: {
      input?: { payloads: { metadata: Record<string, string>; data: string }[] };
    };
  }[];
}

test('key rotation: encryptWith B with A kept reads the old run and encodes new payloads with B; without A it names A', async () => {
  // The rotated config as an operator would write it, so the run's secret scan finds key B and opens B's payloads.
  const rotatedEncryption = {
    keys: [
      { id: 'key-b', file: keyB },
      { id: 'key-a', file: keyA },
    ],
    encryptWith: 'key-b',
  };
  writeFileSync(path.join(dir, 'rotated.yaml'), stringify({ temporal: { encryption: rotatedEncryption } }));
  const rotated = new Client({
    connection: ctx.env.client.connection,
    namespace: 'default',
    dataConverter: codec.gpuopsDataConverter({
      path: loaded.path,
      config: {
        ...loaded.config,
        temporal: {
          ...loaded.config.temporal,
          encryption: rotatedEncryption,
        },
      },
    }),
  });
  const old = (await rotated.workflow.getHandle(deployId).result()) as DeploymentStatus;
  expect(old.requestedBy).toBe(marker);

  // A new run's input: encrypted with B (nothing polls the queue; the run is terminated at once).
  const fresh = await rotated.workflow.start('inspectNode', {
    taskQueue: uniqueId('nobody'),
    workflowId: uniqueId('enc-rotated'),
    args: [{ node: ctx.sbx.nodeId }],
  });
  await fresh.terminate('test done');
  expect(keyIdOf(startedInput(await rawHistory(fresh.workflowId))[0])).toBe('key-b');

  const withoutA = new Client({
    connection: ctx.env.client.connection,
    namespace: 'default',
    dataConverter: codec.dataConverterWith(
      codec.encryptionCodec({ keys: [{ id: 'key-b', file: keyB }], encryptWith: 'key-b' }, loaded.path),
    ),
  });
  await expect(withoutA.workflow.getHandle(deployId).result()).rejects.toThrow(
    'payload encrypted with key "key-a", which is not configured',
  );
});
