/**
 * The secret scan on Temporal's own storage: a real dev server of this test's (outside the run directory, so the
 * run's scan never sees the plant) is given a workflow whose input wrongly carries a secret; its SQLite file and its
 * history exports (SDK and `temporal workflow show`) must then show the leak, by the secret's name.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { privateDevServerOptions, startDevServer, type DevServer } from '../src/temporal/dev-server';
import { findTemporalCli } from '../src/temporal/cli';
import { exportHistories, type ExportResult } from './helpers/history-export';
import { formatReport, scanFiles, type ScanReport } from './helpers/secret-scan';

const dir = mkdtempSync(path.join(process.env.GPUOPS_TEST_OUTER_TMPDIR ?? os.tmpdir(), 'gpuops-scan-server-'));
const value = `planted-${randomBytes(12).toString('hex')}`;
const COPIES = 400; // ~30 KB of input: the history record runs over several 4 KiB pages
let server: DevServer | undefined;
let exported: ExportResult;
let report: ScanReport;
let clean: ScanReport;

beforeAll(async () => {
  server = await startDevServer(await privateDevServerOptions(dir));
  const connection = await Connection.connect({ address: server.address });
  try {
    const client = new Client({ connection });
    // No worker polls this queue: the start alone writes the input to the history and the database.
    const start = (id: string, note: string) =>
      client.workflow.start('deployModel', { workflowId: id, taskQueue: 'secret-scan-nobody', args: [{ note }] });
    await start('leaky-small', `token ${value}`);
    await start('leaky-large', Array.from({ length: COPIES }, (_, i) => `${i}:${value}`).join(' '));
    // The export lists executions through visibility, which lags the start a little: wait until both are listed.
    for (let seen = 0, tries = 0; seen < 2; tries++) {
      if (tries === 100) throw new Error('the two started workflows never showed up in visibility');
      seen = 0;
      for await (const x of client.workflow.list({ query: "WorkflowId STARTS_WITH 'leaky-'" })) if (x) seen++;
      if (seen < 2) await new Promise((r) => setTimeout(r, 100));
    }
    const cli = findTemporalCli();
    if (!cli) throw new Error('the temporal CLI is needed (npm test installs it)');
    exported = await exportHistories({
      connection,
      outDir: path.join(dir, 'histories'),
      cli: { path: cli, args: ['--address', server.address] },
      cliSample: 10, // all of them: ours and the server's own system workflows
    });
  } finally {
    await connection.close();
  }
  await server.stop();
  server = undefined;
  report = scanFiles({ roots: [dir], secrets: [{ name: 'planted-router-admin-token', value }], prefix: null });
  clean = scanFiles({
    roots: [dir],
    secrets: [{ name: 'unused', value: `unused-${randomBytes(12).toString('hex')}` }],
  });
}, 120_000);

afterAll(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const where = (r: ScanReport) => new Set(r.findings.map((f) => path.relative(dir, f.file).split(path.sep)[0]));

test('a secret in a workflow input is found in the SQLite file, raw and in records joined from overflow pages', () => {
  const db = report.findings.filter((f) => f.file === path.join(dir, 'temporal.db') && f.form === 'plain');
  expect(db.filter((f) => !f.sqlite).length).toBeGreaterThan(0);
  // The large input spills: some record, joined from its pages, holds every copy — those a page boundary cut too.
  const perRecord = new Map<string, number>();
  for (const f of db.filter((x) => x.sqlite)) {
    const k = `${f.sqlite!.page}/${f.sqlite!.cell}`;
    perRecord.set(k, (perRecord.get(k) ?? 0) + 1);
  }
  expect(Math.max(0, ...perRecord.values())).toBeGreaterThanOrEqual(COPIES);
  expect(report.sqliteRecords).toBeGreaterThan(0);
});

test('it is found in every history export, SDK and `temporal workflow show`, as base64 payload data', () => {
  expect(exported.namespaces).toContain('default');
  expect(exported.histories).toBeGreaterThanOrEqual(2);
  expect(exported.cliExports).toBe(exported.histories);
  for (const kind of ['sdk', 'cli']) {
    const files = new Set(
      report.findings
        .filter((f) => f.file.startsWith(path.join(dir, 'histories', kind)) && f.form.startsWith('base64'))
        .map((f) => path.basename(f.file).split('--')[0]),
    );
    expect([kind, [...files].sort()]).toEqual([kind, ['leaky-large', 'leaky-small']]);
  }
  expect(where(report)).toEqual(new Set(['temporal.db', 'histories']));
});

test('the report names the secret and never prints its value; a secret the server never saw gives 0', () => {
  const text = formatReport(report);
  expect(text).toContain('— planted-router-admin-token (plain)');
  expect(text).not.toContain(value);
  expect(clean.findings).toEqual([]);
  expect(clean.files).toBeGreaterThanOrEqual(report.files);
});
