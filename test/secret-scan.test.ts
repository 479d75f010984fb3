/**
 * The secret scan (test/helpers/secret-scan.ts) on planted files: every encoding of a registered secret is found and
 * named, never printed; a clean tree has 0 occurrences; the prefix sweep catches an unregistered test secret; a
 * secret cut in two by SQLite's overflow pages is found in the joined record. The temp dirs lie outside the run
 * directory, so the run's own scan never sees these plants.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { formatReport, scanFiles } from './helpers/secret-scan';
import { TEST_SECRET_PREFIX } from './helpers/secrets';

const outside = process.env.GPUOPS_TEST_OUTER_TMPDIR ?? os.tmpdir();
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function tree(files: Record<string, string | Buffer>): string {
  const dir = mkdtempSync(path.join(outside, 'gpuops-scan-'));
  dirs.push(dir);
  for (const [name, body] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    writeFileSync(path.join(dir, name), body);
  }
  return dir;
}

// '/', '+', '=', ' ' and '"' make the URL-encoded and JSON-escaped forms differ from the plain one; six '?' hold a
// whole 3-byte group ('???' is 'Pz8/') at every alignment, so the URL-safe base64 differs from the standard one.
const value = `planted/"token"+${randomBytes(8).toString('hex')}??????= x`;
const secret = { name: 'planted-router-admin-token', value };
const b64 = (pad: number, alphabet: 'base64' | 'base64url') =>
  Buffer.concat([Buffer.from('xyz'.slice(0, pad)), Buffer.from(value), Buffer.from(' tail')]).toString(alphabet);
/** A history as `temporal workflow show --output json` prints it: payload data in base64. */
const historyExport = (note: string) =>
  JSON.stringify({
    events: [
      {
        eventId: '1',
        workflowExecutionStartedEventAttributes: {
          input: {
            payloads: [
              {
                metadata: { encoding: Buffer.from('json/plain').toString('base64') },
                data: Buffer.from(JSON.stringify({ note })).toString('base64'),
              },
            ],
          },
        },
      },
    ],
  });

describe('secret scan', () => {
  test('finds a registered secret plain, URL-encoded, JSON-escaped and in base64 at each alignment, by name only', () => {
    const dir = tree({
      'worker.log': `12:00:00 deploy started with token ${value}\n`,
      'hooks/access.log': `GET /x?token=${encodeURIComponent(value)}\n`,
      'reports/deploy.json': JSON.stringify({ note: value }),
      ...Object.fromEntries([0, 1, 2].map((a) => [`b64-${a}.txt`, b64(a, 'base64')])),
      ...Object.fromEntries([0, 1, 2].map((a) => [`b64url-${a}.txt`, b64(a, 'base64url')])),
      'histories/deploy.json': historyExport(`carry ${value}`),
    });
    const r = scanFiles({ roots: [dir], secrets: [secret] });
    const found = r.findings.map((f) => `${path.relative(dir, f.file)} ${f.name} ${f.form}`).sort();
    expect(found).toEqual(
      [
        'b64-0.txt planted-router-admin-token base64@0',
        'b64-1.txt planted-router-admin-token base64@1',
        'b64-2.txt planted-router-admin-token base64@2',
        'b64url-0.txt planted-router-admin-token base64url@0',
        'b64url-1.txt planted-router-admin-token base64url@1',
        'b64url-2.txt planted-router-admin-token base64url@2',
        // In the payload's JSON text, {"note":"carry …"}, escaped, at byte 15 of the base64 data: alignment 0.
        'histories/deploy.json planted-router-admin-token base64(json-escaped)@0',
        'hooks/access.log planted-router-admin-token url-encoded',
        'reports/deploy.json planted-router-admin-token json-escaped',
        'worker.log planted-router-admin-token plain',
      ].sort(),
    );
    expect(r.findings.find((f) => f.file.endsWith('worker.log'))?.offset).toBe(
      '12:00:00 deploy started with token '.length,
    );
    const text = formatReport(r);
    expect(text).toContain(`${path.join(dir, 'worker.log')}:35 — planted-router-admin-token (plain)`);
    expect(text).toMatch(/: 10 occurrences$/m);
    expect(text).not.toContain(value);
    expect(text).not.toContain(value.slice(-12));
  });

  test('a clean tree, and a secret found only in its own (excluded) file, give 0 occurrences', () => {
    const dir = tree({
      'worker.log': 'deploy started\n',
      'histories/deploy.json': historyExport('nothing secret'),
      'secrets/router-token': `${value}\n`,
    });
    const r = scanFiles({ roots: [dir], secrets: [secret], exclude: [path.join(dir, 'secrets', 'router-token')] });
    expect({ files: r.files, findings: r.findings }).toEqual({ files: 2, findings: [] });
    expect(formatReport(r)).toMatch(/^secret scan: 1 secrets, 2 files .*: 0 occurrences$/);
    expect(scanFiles({ roots: [dir], secrets: [secret] }).findings.map((f) => f.file)).toEqual([
      path.join(dir, 'secrets', 'router-token'),
    ]);
  });

  test('the prefix sweep finds a test secret that was never registered; a registered one is named instead', () => {
    const forgotten = `${TEST_SECRET_PREFIX}forgotten-${randomBytes(6).toString('hex')}`;
    const known = `${TEST_SECRET_PREFIX}restic-password-${randomBytes(6).toString('hex')}`;
    const dir = tree({
      'a.log': `x ${forgotten}\n`,
      'b.json': historyExport(forgotten),
      'c.log': `y ${known}\n`,
    });
    const r = scanFiles({ roots: [dir], secrets: [{ name: 'restic-password', value: known }] });
    expect(r.findings.map((f) => [path.basename(f.file), f.name]).sort()).toEqual([
      ['a.log', 'unregistered test secret'],
      ['b.json', 'unregistered test secret'],
      ['c.log', 'restic-password'],
    ]);
  });

  test('a secret shorter than 8 characters is listed as not scanned, not silently passed', () => {
    const r = scanFiles({ roots: [tree({ 'a.log': 'pw is x\n' })], secrets: [{ name: 'tiny-password', value: 'x' }] });
    expect(formatReport(r)).toContain('not scanned (shorter than 8): tiny-password');
  });

  test('SQLite: a secret cut by overflow page boundaries is found in the record joined from its pages', () => {
    // A hand-made database by the file format (fileformat2.html §1.6), page size 512, no reserved bytes: a table
    // leaf (page 2) with one 1200-byte record whose first 184 bytes stay on the page (M = 39, K = 39 + 1161 % 508)
    // and the rest run over pages 3 and 4 (508 bytes each after the 4-byte next-page number).
    const page = (): Buffer => Buffer.alloc(512);
    const payload = Buffer.alloc(1200, 'r'.charCodeAt(0));
    const v = Buffer.from(value);
    v.copy(payload, 184 - 10); // across the leaf / page 3 boundary
    v.copy(payload, 184 + 508 - 7); // across page 3 / page 4
    const p1 = page();
    p1.write('SQLite format 3\0', 0, 'latin1');
    p1.writeUInt16BE(512, 16);
    p1[100] = 13; // page 1: an empty table leaf
    const p2 = page();
    p2[0] = 13;
    p2.writeUInt16BE(1, 3); // one cell
    const cellAt = 300;
    p2.writeUInt16BE(cellAt, 8);
    Buffer.from([0x89, 0x30, 0x01]).copy(p2, cellAt); // varint 1200, rowid 1
    payload.copy(p2, cellAt + 3, 0, 184);
    p2.writeUInt32BE(3, cellAt + 3 + 184);
    const p3 = page();
    p3.writeUInt32BE(4, 0);
    payload.copy(p3, 4, 184, 184 + 508);
    const p4 = page();
    payload.copy(p4, 4, 184 + 508);
    const dir = tree({ 'temporal.db': Buffer.concat([p1, p2, p3, p4]) });

    const r = scanFiles({ roots: [dir], secrets: [secret] });
    expect(r.sqliteRecords).toBe(1);
    expect(r.findings.filter((f) => f.form === 'plain')).toEqual([
      {
        file: path.join(dir, 'temporal.db'),
        offset: 174,
        name: secret.name,
        form: 'plain',
        sqlite: { page: 2, cell: 0 },
      },
      {
        file: path.join(dir, 'temporal.db'),
        offset: 685,
        name: secret.name,
        form: 'plain',
        sqlite: { page: 2, cell: 0 },
      },
    ]);
    expect(formatReport(r)).toContain(
      'temporal.db (SQLite page 2 cell 0, record offset 174) — planted-router-admin-token',
    );
  });
});
