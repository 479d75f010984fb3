/**
 * mTLS on the production server's frontend. The run-wide server (test/global-setup.ts) runs with mTLS from
 * certificates made at the run's start (the same build, PostgreSQL and environment as compose, plus TEMPORAL_TLS_*),
 * and the whole production suite connects over it. Here: gpuops connects through its own connection code from
 * TEMPORAL_TLS_CERT/KEY/CA, the real node worker (a child process) included; a client or worker without a
 * certificate from the server's CA is refused.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Connection, type Client, type ConnectionOptions } from '@temporalio/client';
import { Worker, type NativeConnection } from '@temporalio/worker';
import { parseConfig } from '../../src/config/load';
import { nodeTaskQueue } from '../../src/contracts';
import type { HealthReport } from '../../src/domain/classify';
import { connectClient, connectWorker, resolveTemporalTarget } from '../../src/temporal/connection';
import { makeTlsFiles, tlsFilesIn, type TlsFiles } from '../../src/temporal/production-server';
import { createControlWorker } from '../../workers/control';
import {
  startTestSandbox,
  testAddress,
  uniqueId,
  waitForPoller,
  workflowBundle,
  type TestSandbox,
} from '../helpers/env';

let certs: TlsFiles;
let other: TlsFiles;
let dir: string;
const minimal = parseConfig('nodes:\n  - id: n1\n', 'inline');

beforeAll(async () => {
  const runTls = process.env.TEMPORAL_TEST_TLS_DIR;
  if (!runTls) throw new Error('TEMPORAL_TEST_TLS_DIR is not set: run through npm run test:production');
  certs = tlsFilesIn(runTls);
  dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-tls-'));
  // A second CA: its client certificate is well formed but not one the server trusts.
  other = await makeTlsFiles(path.join(dir, 'other-ca'));
}, 60_000);

/** The variables an operator sets (deploy/systemd/gpuops.env.example), pointing at this test's certificates. */
function tlsEnv(files: TlsFiles = certs): Record<string, string> {
  return {
    TEMPORAL_ADDRESS: testAddress(),
    TEMPORAL_TLS_CERT: files.clientCert,
    TEMPORAL_TLS_KEY: files.clientKey,
    TEMPORAL_TLS_CA: certs.caCert,
    TEMPORAL_TLS_SERVER_NAME: 'localhost',
  };
}

test('gpuops runs inspectNode over mTLS from TEMPORAL_TLS_CERT/KEY/CA: its client, a control worker and the real node worker', async () => {
  const env = tlsEnv();
  const target = resolveTemporalTarget(minimal, env);
  expect(target.tls).toEqual({
    certFile: certs.clientCert,
    keyFile: certs.clientKey,
    caFile: certs.caCert,
    serverName: 'localhost',
  });
  // The node worker is a child process: it reads the same variables from its environment.
  const saved = { ...process.env };
  Object.assign(process.env, env);
  let sbx: TestSandbox | undefined;
  let client: Client | undefined;
  let connection: NativeConnection | undefined;
  try {
    client = await connectClient(target);
    connection = await connectWorker(target);
    // Its config names only the address: the node worker takes TLS from the variables, as an operator sets them.
    sbx = await startTestSandbox({ configTls: false });
    await waitForPoller(client, nodeTaskQueue(sbx.nodeId));
    const taskQueue = uniqueId('gpuops-control-tls');
    const worker = await createControlWorker({
      connection,
      namespace: 'default',
      loaded: sbx.loaded,
      workflowBundle: await workflowBundle(),
      taskQueue,
      client,
    });
    const c = client;
    const report = await worker.runUntil(
      c.workflow.execute('inspectNode', {
        taskQueue,
        workflowId: uniqueId('inspect-tls'),
        args: [{ node: sbx.nodeId, expectedGpus: 1 }],
      }) as Promise<HealthReport>,
    );
    expect(report.healthy).toBe(true);
    expect(report.observation.engines[0]?.generation?.ok).toBe(true);
  } finally {
    process.env = saved;
    await sbx?.stop();
    await connection?.close();
    await client?.connection.close();
  }
}, 120_000);

/** Connect and make one call: the SDK may connect lazily, the call is what must be refused. */
async function callWith(opts: Pick<ConnectionOptions, 'tls'>): Promise<void> {
  const conn = await Connection.connect({ connectTimeout: 5000, ...opts, address: testAddress() });
  try {
    await conn.workflowService.getSystemInfo({});
  } finally {
    await conn.close();
  }
}

test('a client or worker without a client certificate from the server CA is refused', async () => {
  const ca = readFileSync(certs.caCert);
  const pair = (f: TlsFiles) => ({ crt: readFileSync(f.clientCert), key: readFileSync(f.clientKey) });
  // The control: the server's CA and a certificate it issued are accepted.
  await expect(
    callWith({ tls: { serverRootCACertificate: ca, serverNameOverride: 'localhost', clientCertPair: pair(certs) } }),
  ).resolves.toBeUndefined();
  const refused: [string, Pick<ConnectionOptions, 'tls'>][] = [
    ['TLS without a client certificate', { tls: { serverRootCACertificate: ca, serverNameOverride: 'localhost' } }],
    [
      'a client certificate from a CA the server does not trust',
      { tls: { serverRootCACertificate: ca, serverNameOverride: 'localhost', clientCertPair: pair(other) } },
    ],
    ['plaintext', {}],
  ];
  for (const [what, opts] of refused) {
    await expect(callWith(opts).then(() => `${what}: accepted`)).rejects.toThrow();
  }
  // gpuops's own client and worker connection with only the CA set (no TEMPORAL_TLS_CERT/KEY).
  const noCert = resolveTemporalTarget(minimal, {
    TEMPORAL_ADDRESS: testAddress(),
    TEMPORAL_TLS_CA: certs.caCert,
    TEMPORAL_TLS_SERVER_NAME: 'localhost',
  });
  await expect(connectClient(noCert, { connectTimeoutMs: 5000 }).then((c) => c.connection.close())).rejects.toThrow();
  // A worker: the native connection or, at the latest, the worker's start against the namespace fails.
  const startWorker = async (): Promise<void> => {
    const conn = await connectWorker(noCert);
    try {
      const w = await Worker.create({
        connection: conn,
        namespace: 'default',
        taskQueue: uniqueId('refused'),
        activities: { noop: async () => undefined },
      });
      await w.runUntil(new Promise((r) => setTimeout(r, 3000)));
    } finally {
      await conn.close();
    }
  };
  await expect(startWorker()).rejects.toThrow();
}, 60_000);

test('a bad TLS file is refused naming the variable and path, and never shows its contents', async () => {
  const bad = path.join(dir, 'not-a-key.pem');
  writeFileSync(bad, 'SECRET-7f3a not a key\n');
  const target = resolveTemporalTarget(minimal, { ...tlsEnv(), TEMPORAL_TLS_KEY: bad });
  const err = await connectClient(target).then(
    () => null,
    (e: Error) => e,
  );
  expect(err?.message).toBe(
    `TEMPORAL_TLS_KEY / temporal.tls.keyFile (${bad}): is not a PEM private key (-----BEGIN … PRIVATE KEY-----)`,
  );
  expect(err?.message).not.toContain('SECRET-7f3a');
  const missing = resolveTemporalTarget(minimal, { ...tlsEnv(), TEMPORAL_TLS_CA: path.join(dir, 'nope.pem') });
  await expect(connectWorker(missing)).rejects.toThrow(
    `TEMPORAL_TLS_CA / temporal.tls.caFile (${path.join(dir, 'nope.pem')}): no such file`,
  );
  expect(() => resolveTemporalTarget(minimal, { ...tlsEnv(), TEMPORAL_TLS: 'false' })).toThrow(
    /TEMPORAL_TLS=false contradicts/,
  );
});
