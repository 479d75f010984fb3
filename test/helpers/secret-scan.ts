/**
 * The secret scan: every byte a test run left under its run directory — the Temporal server's database (raw, and
 * each SQLite record that spills over pages joined up), the exported workflow histories, every log, report, route
 * and state file — searched for every secret the run used, in plain, URL-encoded, JSON-escaped and base64 (standard
 * and URL-safe, at each of the 3 byte alignments) form, and for the free-form test secrets' common prefix. A finding
 * names the file, the offset and the secret's NAME, never its value. test/global-teardown.ts runs it after every
 * jest run that used the run-wide server.
 */
import { closeSync, existsSync, lstatSync, openSync, readFileSync, readSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { REGISTRY_FILE, TEST_SECRET_PREFIX, type RegisteredSecret } from './secrets';
import { isSqlite, spilledPayloads } from './sqlite-payloads';

/** Config fields that name a file holding a secret (src/config/schema.ts). */
export const SECRET_FILE_FIELDS = [
  'adminTokenFile',
  'apiKeyFile',
  'hmacSecretFile',
  'keyFile',
  'passwordFile',
  'tokenFile',
  'tokenSecretFile',
  'urlFile',
];
/** A secret shorter than this is not scanned (its encodings would match random bytes); the report names it. */
export const MIN_SECRET_LENGTH = 8;
/** An encoded form shorter than this is dropped, for the same reason. */
const MIN_FORM_LENGTH = 12;

export interface Finding {
  file: string;
  offset: number;
  /** The secret's name (`unregistered test secret` for a prefix match outside every registered value). */
  name: string;
  form: string;
  /** Set for a match inside a SQLite record joined from its overflow pages. */
  sqlite?: { page: number; cell: number };
}

export interface ScanReport {
  secrets: number;
  tooShort: string[];
  files: number;
  bytes: number;
  sqliteRecords: number;
  findings: Finding[];
}

interface Pattern {
  bytes: Buffer;
  name: string;
  form: string;
  /** The prefix sweep: reported only outside a registered secret's match. */
  prefix?: boolean;
}

/** Base64 of `value` placed at byte offset 0, 1 or 2 of a 3-byte group: only the characters no neighbour shares. */
function base64Forms(value: Buffer, alphabet: 'base64' | 'base64url'): string[] {
  return [0, 1, 2].map((a) => {
    const b = Buffer.concat([Buffer.alloc(a), value])
      .toString(alphabet)
      .replace(/=+$/, '');
    return b.slice(Math.ceil((4 * a) / 3), Math.floor(((a + value.length) * 8) / 6));
  });
}

/**
 * The texts a leaked `value` may take: itself, URL-encoded, JSON-escaped (a string inside a JSON payload), and the
 * base64 of each of those (payload data in a history export is base64 of the JSON text).
 */
export function secretForms(value: string): { form: string; text: string }[] {
  const texts = [
    { form: 'plain', text: value },
    { form: 'url-encoded', text: encodeURIComponent(value) },
    { form: 'json-escaped', text: JSON.stringify(value).slice(1, -1) },
  ].filter((t, i, all) => all.findIndex((u) => u.text === t.text) === i);
  const forms = [
    ...texts,
    ...texts.flatMap(({ form, text }) => {
      const of = form === 'plain' ? '' : `(${form})`;
      const raw = Buffer.from(text, 'utf8');
      return [
        ...base64Forms(raw, 'base64').map((b, a) => ({ form: `base64${of}@${a}`, text: b })),
        ...base64Forms(raw, 'base64url').map((b, a) => ({ form: `base64url${of}@${a}`, text: b })),
      ];
    }),
  ];
  const seen = new Set<string>();
  return forms.filter((f) => {
    if (seen.has(f.text) || (f.form !== 'plain' && f.text.length < MIN_FORM_LENGTH)) return false;
    seen.add(f.text);
    return true;
  });
}

/** Aho–Corasick over bytes: every pattern in one pass, streaming (the state carries across chunks). */
class Matcher {
  private readonly cls = new Uint16Array(256);
  private readonly classes: number;
  private readonly next: Int32Array;
  private readonly out: number[][] = [[]];

  constructor(readonly patterns: Pattern[]) {
    let n = 1;
    for (const p of patterns) for (const b of p.bytes) if (!this.cls[b]) this.cls[b] = n++;
    this.classes = n;
    const trie: Int32Array[] = [new Int32Array(n).fill(-1)];
    patterns.forEach((p, id) => {
      let s = 0;
      for (const b of p.bytes) {
        const c = this.cls[b] ?? 0;
        let t = trie[s]![c]!;
        if (t < 0) {
          t = trie.length;
          trie.push(new Int32Array(n).fill(-1));
          this.out.push([]);
          trie[s]![c] = t;
        }
        s = t;
      }
      this.out[s]!.push(id);
    });
    const fail = new Int32Array(trie.length);
    const queue: number[] = [];
    for (let c = 0; c < n; c++) {
      const t = trie[0]![c]!;
      if (t < 0) trie[0]![c] = 0;
      else queue.push(t);
    }
    for (let q = 0; q < queue.length; q++) {
      const s = queue[q]!;
      this.out[s]!.push(...this.out[fail[s]!]!);
      for (let c = 0; c < n; c++) {
        const t = trie[s]![c]!;
        if (t < 0) trie[s]![c] = trie[fail[s]!]![c]!;
        else {
          fail[t] = trie[fail[s]!]![c]!;
          queue.push(t);
        }
      }
    }
    this.next = new Int32Array(trie.length * n);
    trie.forEach((row, s) => this.next.set(row, s * n));
    this.hits = Uint8Array.from(this.out, (o) => (o.length ? 1 : 0));
  }

  /** 1 where a state ends some pattern: the hot loop reads one byte, not an array. */
  private readonly hits: Uint8Array;

  /** Scan `buf` from `state`; calls `hit(patternId, offsetOfFirstByte)` with offsets from `base`; returns the state. */
  scan(buf: Buffer, state: number, base: number, hit: (id: number, offset: number) => void): number {
    const { next, cls, classes, out, hits } = this;
    let s = state;
    for (let i = 0; i < buf.length; i++) {
      s = next[s * classes + cls[buf[i]!]!]!;
      if (hits[s]) for (const id of out[s]!) hit(id, base + i + 1 - this.patterns[id]!.bytes.length);
    }
    return s;
  }
}

export interface ScanOptions {
  /** Directories (or files) scanned; symlinks are not followed. */
  roots: string[];
  secrets: RegisteredSecret[];
  /** Files that legitimately hold a secret (its own file, the registry), never scanned. */
  exclude?: Iterable<string>;
  /** The free-form secrets' prefix, swept for too; null turns the sweep off. */
  prefix?: string | null;
}

/** Every regular file under `p`, sorted; symbolic links are not followed. */
function* walk(p: string): Generator<string> {
  const st = lstatSync(p, { throwIfNoEntry: false });
  if (!st || st.isSymbolicLink()) return;
  if (st.isFile()) yield p;
  else if (st.isDirectory()) {
    let names: string[] = [];
    try {
      names = readdirSync(p);
    } catch {
      return; // a directory a container made unreadable to us holds nothing gpuops wrote
    }
    for (const n of names.sort()) yield* walk(path.join(p, n));
  }
}

const CHUNK = 8 * 1024 * 1024;

export function scanFiles(opts: ScanOptions): ScanReport {
  const bySecret = new Map<string, RegisteredSecret>();
  const tooShort: string[] = [];
  for (const s of opts.secrets) {
    if (s.value.length < MIN_SECRET_LENGTH) tooShort.push(s.name);
    else if (!bySecret.has(s.value)) bySecret.set(s.value, s);
  }
  tooShort.sort();
  const patterns: Pattern[] = [...bySecret.values()].flatMap((s) =>
    secretForms(s.value).map((f) => ({ bytes: Buffer.from(f.text, 'utf8'), name: s.name, form: f.form })),
  );
  const prefix = opts.prefix === undefined ? TEST_SECRET_PREFIX : opts.prefix;
  if (prefix) {
    for (const f of secretForms(prefix))
      patterns.push({ bytes: Buffer.from(f.text), name: 'unregistered test secret', form: f.form, prefix: true });
  }
  const report: ScanReport = { secrets: bySecret.size, tooShort, files: 0, bytes: 0, sqliteRecords: 0, findings: [] };
  if (patterns.length === 0) return report;
  const matcher = new Matcher(patterns);
  const exclude = new Set([...(opts.exclude ?? [])].map((f) => path.resolve(f)));
  const buf = Buffer.allocUnsafe(CHUNK);

  const collect = (file: string, sqlite?: Finding['sqlite']) => {
    const hits: { id: number; offset: number }[] = [];
    return {
      hit: (id: number, offset: number) => void hits.push({ id, offset }),
      done: () => {
        const named = hits.filter((h) => !patterns[h.id]!.prefix);
        for (const h of hits) {
          const p = patterns[h.id]!;
          // The prefix opens every registered free-form secret: a sweep hit inside a named match is that match.
          const inside = p.prefix && named.some((n) => within(h, p, n, patterns[n.id]!));
          if (!inside)
            report.findings.push({ file, offset: h.offset, name: p.name, form: p.form, ...(sqlite && { sqlite }) });
        }
      },
    };
  };

  for (const root of opts.roots) {
    for (const file of walk(root)) {
      if (exclude.has(path.resolve(file))) continue;
      report.files++;
      const c = collect(file);
      const fd = openSync(file, 'r');
      let head: Buffer | undefined;
      try {
        let state = 0;
        for (let pos = 0; ;) {
          const n = readSync(fd, buf, 0, CHUNK, pos);
          if (n <= 0) break;
          head ??= Buffer.from(buf.subarray(0, 16));
          state = matcher.scan(buf.subarray(0, n), state, pos, c.hit);
          pos += n;
          report.bytes += n;
        }
      } finally {
        closeSync(fd);
      }
      c.done();
      if (head && isSqlite(head)) scanSqlite(file, matcher, collect, report);
    }
  }
  return report;
}

function within(h: { offset: number }, p: Pattern, n: { offset: number }, np: Pattern): boolean {
  return h.offset >= n.offset && h.offset + p.bytes.length <= n.offset + np.bytes.length;
}

function scanSqlite(
  file: string,
  matcher: Matcher,
  collect: (file: string, sqlite: Finding['sqlite']) => { hit: (id: number, o: number) => void; done: () => void },
  report: ScanReport,
): void {
  const wal = `${file}-wal`;
  const db = readFileSync(file);
  for (const r of spilledPayloads(db, existsSync(wal) ? readFileSync(wal) : undefined)) {
    report.sqliteRecords++;
    const c = collect(file, { page: r.page, cell: r.cell });
    matcher.scan(r.payload, 0, 0, c.hit);
    c.done();
  }
}

/** The secrets a run registered (test/helpers/secrets.ts), in `runDir`'s registry. */
export function readRegistry(runDir: string): RegisteredSecret[] {
  const file = path.join(runDir, REGISTRY_FILE);
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as RegisteredSecret);
}

/** Every YAML file under `root` that parses, with its document (a file that does not is no config gpuops reads). */
export function* yamlDocuments(root: string): Generator<{ file: string; doc: unknown }> {
  for (const file of walk(root)) {
    if (!/\.ya?ml$/.test(file)) continue;
    try {
      yield { file, doc: parse(readFileSync(file, 'utf8')) as unknown };
    } catch {
      continue;
    }
  }
}

/**
 * The secrets the gpuops.yaml files under `root` point at, read from their files: the catch-all for a secret that
 * gpuops itself made (`gpuops up`'s restic password and router token, the sandbox Proxmox token secret) or a test
 * wrote without registering. Relative paths are resolved against the config's directory, as gpuops does.
 */
export function discoverConfigSecrets(root: string): RegisteredSecret[] {
  const found: RegisteredSecret[] = [];
  for (const { file, doc } of yamlDocuments(root)) {
    const visit = (v: unknown): void => {
      if (Array.isArray(v)) v.forEach(visit);
      else if (v && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) {
          if (typeof x === 'string' && SECRET_FILE_FIELDS.includes(k)) {
            const target = path.resolve(path.dirname(file), x);
            const st = lstatSync(target, { throwIfNoEntry: false });
            if (st?.isFile()) {
              const value = readFileSync(target, 'utf8').trim();
              if (value) found.push({ name: `${k} of ${path.relative(root, file)}`, value, file: target });
            }
          } else visit(x);
        }
      }
    };
    visit(doc);
  }
  return found;
}

/** The summary: counts and each finding as file:offset and the secret's name — never a value. */
export function formatReport(r: ScanReport, extra: string[] = []): string {
  const lines = [
    `secret scan: ${r.secrets} secrets, ${r.files} files (${(r.bytes / 1e6).toFixed(1)} MB), ` +
      `${r.sqliteRecords} spilled SQLite records${extra.length ? `, ${extra.join(', ')}` : ''}: ` +
      `${r.findings.length} occurrences`,
  ];
  if (r.tooShort.length) lines.push(`  not scanned (shorter than ${MIN_SECRET_LENGTH}): ${r.tooShort.join(', ')}`);
  // One line per file, secret and form: the first occurrence's place and how many more.
  const groups = new Map<string, { first: Finding; count: number }>();
  for (const f of r.findings) {
    const key = `${f.file}\0${f.name}\0${f.form}\0${f.sqlite ? `${f.sqlite.page}/${f.sqlite.cell}` : ''}`;
    const g = groups.get(key);
    if (g) g.count++;
    else groups.set(key, { first: f, count: 1 });
  }
  for (const { first: f, count } of [...groups.values()].slice(0, 50)) {
    const at = f.sqlite
      ? ` (SQLite page ${f.sqlite.page} cell ${f.sqlite.cell}, record offset ${f.offset})`
      : `:${f.offset}`;
    lines.push(`  ${f.file}${at} — ${f.name} (${f.form})${count > 1 ? ` ×${count}` : ''}`);
  }
  if (groups.size > 50) lines.push(`  … and ${groups.size - 50} more places`);
  return lines.join('\n');
}
