/**
 * Stops the run-wide Temporal server, then runs the secret scan over the run directory (test/global-setup.ts):
 * first, while the server still answers, every workflow history of every namespace is exported to
 * `<run dir>/histories` (all through the SDK, a sample through `temporal workflow show`); then, with the server
 * stopped, every file under the run directory — its database, those exports, and every temp directory of the run —
 * is searched for every registered secret and for the test-secret prefix (test/helpers/secret-scan.ts). An
 * occurrence fails the run: jest exits non-zero when its global teardown throws.
 */
import { Connection } from '@temporalio/client';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { exportHistories, type ExportResult } from './helpers/history-export';
import { discoverConfigSecrets, formatReport, readRegistry, scanFiles } from './helpers/secret-scan';
import { REGISTRY_FILE, RUN_DIR_ENV } from './helpers/secrets';
import { discoverRunKeys, RunKeysDecoder } from './helpers/run-keys';
import { findTemporalCli } from '../src/temporal/cli';
import { tlsFilesIn } from '../src/temporal/production-server';

/** The client options and `temporal` CLI flags for the run-wide server (mTLS on the production target). */
function target(address: string): { options: Parameters<typeof Connection.connect>[0]; cliArgs: string[] } {
  const tlsDir = process.env.TEMPORAL_TEST_TLS_DIR;
  if (!tlsDir) return { options: { address }, cliArgs: ['--address', address] };
  const f = tlsFilesIn(tlsDir);
  return {
    options: {
      address,
      tls: {
        serverNameOverride: f.serverName,
        serverRootCACertificate: readFileSync(f.caCert),
        clientCertPair: { crt: readFileSync(f.clientCert), key: readFileSync(f.clientKey) },
      },
    },
    cliArgs: [
      ...['--address', address, '--tls-cert-path', f.clientCert, '--tls-key-path', f.clientKey],
      ...['--tls-ca-path', f.caCert, '--tls-server-name', f.serverName],
    ],
  };
}

async function exportRunHistories(runDir: string, decoder: RunKeysDecoder): Promise<ExportResult> {
  const address = process.env.TEMPORAL_TEST_ADDRESS;
  if (!address) throw new Error('TEMPORAL_TEST_ADDRESS is not set');
  const t = target(address);
  const connection = await Connection.connect(t.options);
  try {
    const cli = findTemporalCli();
    return await exportHistories({
      connection,
      outDir: path.join(runDir, 'histories'),
      ...(cli ? { cli: { path: cli, args: t.cliArgs } } : {}),
      cliSample: Number(process.env.GPUOPS_SECRET_SCAN_CLI_SAMPLE ?? 5),
      codecs: [decoder],
    });
  } finally {
    await connection.close();
  }
}

async function stopServer(): Promise<void> {
  const child = globalThis.__gpuopsTemporal;
  if (!child || child.exitCode !== null) return;
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

const s = (ms: number): string => (ms / 1000).toFixed(1);

export default async function globalTeardown(): Promise<void> {
  const runDir = process.env[RUN_DIR_ENV];
  let exported: ExportResult | undefined;
  let exportError: unknown;
  // Histories a test encrypted (temporal.encryption) are decoded with the run's own keys before the scan.
  const keys = runDir ? discoverRunKeys(runDir) : [];
  const decoder = new RunKeysDecoder(keys);
  if (runDir && globalThis.__gpuopsTemporal?.exitCode === null) {
    exported = await exportRunHistories(runDir, decoder).catch((err: unknown) => void (exportError = err));
  }
  await stopServer();
  if (!runDir) return;
  const scanStarted = Date.now();
  const registered = readRegistry(runDir);
  const discovered = discoverConfigSecrets(runDir);
  const secrets = [...registered, ...discovered, ...keys.map((k) => k.secret)];
  const report = scanFiles({
    roots: [runDir],
    secrets,
    exclude: [path.join(runDir, REGISTRY_FILE), ...secrets.flatMap((s) => (s.file ? [s.file] : []))],
  });
  const extra = exported
    ? [
        `${exported.histories} histories (${exported.events} events, ${exported.namespaces.length} namespaces; ` +
          `${exported.cliExports} also by temporal workflow show) exported in ${s(exported.sdkMs)} + ${s(exported.cliMs)} s`,
        `${decoder.undecodable} encrypted payloads no key of the run opened`,
      ]
    : [];
  extra.push(`scanned in ${s(Date.now() - scanStarted)} s`);
  process.stdout.write(`\n${formatReport(report, extra)}\n`);
  if (exportError !== undefined) {
    throw new Error(`secret scan: exporting the workflow histories failed: ${(exportError as Error).message}`);
  }
  if (report.findings.length > 0) {
    throw new Error(`secret scan: ${report.findings.length} occurrences of the run's secrets (listed above)`);
  }
}
