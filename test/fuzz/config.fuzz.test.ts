/**
 * Property-based tests of the config loader: every example gpuops.yaml, mutated with hostile values (huge, deeply
 * nested, wrong types, any Unicode, shell metacharacters, path traversal, leading dashes), is either accepted, and
 * then every value that reaches a command line is safe there, or refused with a ValidationError whose every line
 * names a field and never echoes a secret-looking value. Nothing else is ever thrown.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { parse } from 'yaml';
import { parseConfig } from '../../src/config/load';
import type { Config } from '../../src/config/schema';
import { ValidationError } from '../../src/domain/validation';
import { NAMED_ISSUE, deepText, fuzzParams, hostileString, mutated, safeArg, toText } from './arbitraries';

const EXAMPLES = path.join(__dirname, '..', '..', 'examples');
const bases: [string, unknown][] = readdirSync(EXAMPLES)
  .filter((f) => f.endsWith('.yaml'))
  .map((f) => [f, parse(readFileSync(path.join(EXAMPLES, f), 'utf8')) as unknown]);

/** Every value of a config that gpuops passes to a command (as an argument, or as the binary itself). */
function commandLineValues(c: Config): string[] {
  const out: string[] = [];
  for (const n of c.nodes) {
    out.push(...Object.values(n.tools), ...n.modelStores);
    for (const e of n.engines) {
      out.push(e.container);
      if (e.process) out.push(e.process.command, ...(e.process.cwd !== undefined ? [e.process.cwd] : []));
      if (e.real?.image) out.push(e.real.image);
    }
  }
  for (const h of c.hypervisors) if (h.type === 'qm') out.push(h.qm);
  for (const b of c.backups) out.push(...b.paths, b.repository, b.passwordFile, b.verify.readDataSubset);
  return out;
}

/** Parse, and return the accepted config or the refusal; anything else thrown fails the property. */
function load(text: string): { config: Config } | { refused: ValidationError } {
  try {
    return { config: parseConfig(text, 'fuzz.yaml') };
  } catch (err) {
    if (err instanceof ValidationError) return { refused: err };
    throw err;
  }
}

function checkOutcome(text: string, secret?: string): void {
  const r = load(text);
  if ('config' in r) {
    for (const v of commandLineValues(r.config))
      expect({ value: v, safe: safeArg(v) }).toEqual({ value: v, safe: true });
    for (const n of r.config.nodes)
      for (const e of n.engines)
        if (e.runtime === 'docker') expect(e.container).toMatch(/^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/);
    return;
  }
  expect(r.refused.problems.length).toBeGreaterThan(0);
  for (const p of r.refused.problems) expect(p).toMatch(p.startsWith('YAML: ') ? /^YAML: \S/ : NAMED_ISSUE);
  if (secret !== undefined) expect(r.refused.message).not.toContain(secret);
}

describe.each(bases)('config loader over mutated %s', (_file, base) => {
  test('accepts safely or refuses naming the field, as YAML and as JSON', () => {
    fc.assert(
      fc.property(mutated(base), fc.boolean(), (doc, asJson) => {
        checkOutcome(toText(doc, asJson ? 'json' : 'yaml'));
      }),
      fuzzParams(25),
    );
  });
});

test('a secret pasted into any field is never echoed in the refusal', () => {
  const base = bases[0]?.[1];
  const token = fc.stringMatching(/^[A-Za-z0-9]{24}$/).map((t) => `sk-SECRET-${t}`);
  fc.assert(
    fc.property(mutated(base), token, fc.nat(), (doc, secret, pick) => {
      // Put the secret where a hostile value landed first, i.e. into a random string field.
      const text = toText(doc, 'yaml');
      const strings = [...text.matchAll(/: (\S.*)$/gm)].map((m) => m.index + 2);
      const at = strings.length > 0 ? (strings[pick % strings.length] ?? 0) : 0;
      const withSecret = `${text.slice(0, at)}${JSON.stringify(`${secret} ${text.slice(at, text.indexOf('\n', at))}`)}${text.slice(text.indexOf('\n', at))}`;
      checkOutcome(withSecret, secret);
    }),
    fuzzParams(60),
  );
});

test('raw hostile text (not YAML, deep nesting, alias bombs, NUL) is refused naming the YAML problem', () => {
  const bomb = [
    'a: &a ["x","x","x","x","x","x","x","x","x"]',
    'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]',
    'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]',
    'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]',
    'e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]',
    'nodes: [*e]',
  ].join('\n');
  const fixed = [
    bomb,
    `nodes: ${deepText(10_000)}`,
    `nodes: ${deepText(10_000, 'object')}`,
    Array.from({ length: 3000 }, (_, i) => `${' '.repeat(i)}a:`).join('\n'),
    'nodes:\n  - id: "n1\\0"\n',
    '\u0000\u0001\u0002',
    'nodes: !!binary aGVsbG8=',
    '42',
  ];
  for (const text of fixed) checkOutcome(text);
  fc.assert(
    fc.property(fc.oneof(hostileString, fc.string({ unit: 'binary', maxLength: 400 })), (text) => checkOutcome(text)),
    fuzzParams(300),
  );
});
