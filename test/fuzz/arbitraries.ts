/**
 * Shared generators of hostile input for the property-based boundary tests. A fixed seed by default, so CI is
 * reproducible and a failure names the seed and path to replay; FUZZ_SEED and FUZZ_RUNS vary them
 * (`FUZZ_SEED=$RANDOM FUZZ_RUNS=5000 npx jest … test/fuzz`).
 */
import fc from 'fast-check';
import { stringify } from 'yaml';
import { hasControlChars } from '../../src/domain/schemas';

const envInt = (name: string): number | undefined => {
  const v = process.env[name];
  return v !== undefined && /^-?\d+$/.test(v) ? Number(v) : undefined;
};

/** fast-check parameters of one property: `runs` by default, FUZZ_RUNS when set. */
export function fuzzParams(runs: number): fc.Parameters<unknown> {
  return { seed: envInt('FUZZ_SEED') ?? 0x6770_7573, numRuns: envInt('FUZZ_RUNS') ?? runs, endOnFailure: true };
}

/** A string of lone UTF-16 surrogates (not valid Unicode; JSON.stringify escapes them, Buffers replace them). */
const surrogates = fc
  .array(fc.integer({ min: 0xd800, max: 0xdfff }), { minLength: 1, maxLength: 4 })
  .map((cs) => String.fromCharCode(...cs));

/** Values chosen to break names, paths and command lines. */
export const NASTY = [
  '',
  ' ',
  '-rf',
  '--privileged',
  '-',
  '--',
  '../../etc/passwd',
  '..',
  'a/../../b',
  '/etc/shadow',
  '%2e%2e%2f%2e%2e%2fetc',
  '..%2f..%2f',
  'C:\\Windows\\system32',
  'a\u0000b',
  '\u0000',
  'line\nbreak',
  'cr\r\nlf',
  '\u202egnp.exe',
  '\u05e9\u05dc\u05d5\u05dd', // RTL text
  '\ufeffbom',
  '$(reboot)',
  '`id`',
  'a;rm -rf /',
  'a|b',
  'a&&b',
  'x & y',
  '${HOME}',
  "'; DROP TABLE x; --",
  '*',
  '~root',
  '\\',
  '__proto__',
  'constructor',
  'ollama.service',
  'name@inst.service',
  'sk-live-0123456789abcdef',
] as const;

/** Hostile strings: the NASTY list, random Unicode (any code point), lone surrogates, and mixes of them. */
export const hostileString: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...NASTY) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: surrogates },
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.constantFrom(...NASTY), fc.string({ maxLength: 12 }), fc.constantFrom(...NASTY))
      .map(([a, b, c]) => `${a}${b}${c}`),
  },
  { weight: 2, arbitrary: fc.stringMatching(/^[a-z0-9][a-z0-9._:/@-]{0,30}$/) },
);

/** A huge string (up to 200 000 characters). */
export const hugeString: fc.Arbitrary<string> = fc
  .tuple(fc.constantFrom('a', '-', '/', '\u00e9', '../', '\u0000'), fc.integer({ min: 10_000, max: 200_000 }))
  .map(([c, n]) => c.repeat(Math.ceil(n / c.length)));

/** JSON nested `depth` levels deep (arrays or objects), built iteratively. */
export function deep(depth: number, kind: 'array' | 'object' = 'array'): unknown {
  let v: unknown = 'leaf';
  for (let i = 0; i < depth; i++) v = kind === 'array' ? [v] : { a: v };
  return v;
}

/** The same as text, without JSON.stringify (which cannot serialise it). */
export function deepText(depth: number, kind: 'array' | 'object' = 'array'): string {
  return kind === 'array'
    ? `${'['.repeat(depth)}${']'.repeat(depth)}`
    : `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
}

/**
 * Placeholders for JSON nested 10 000 levels deep: no serialiser (JSON.stringify, yaml's) survives the real thing, so
 * documents carry these and {@link toText} / {@link materialize} put the deep value in at the end.
 */
export const DEEP_ARRAY = '__fuzz_deep_array__';
export const DEEP_OBJECT = '__fuzz_deep_object__';
const DEPTH = 10_000;

/** A value of the wrong type for almost any field. */
export const wrongType: fc.Arbitrary<unknown> = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 }),
  fc.dictionary(hostileString, fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 }),
  fc.constant(DEEP_ARRAY),
  fc.constant(DEEP_OBJECT),
);

/** The document as JSON or YAML text, with the deep placeholders expanded (as flow collections, valid in both). */
export function toText(doc: unknown, format: 'json' | 'yaml'): string {
  const text = format === 'json' ? JSON.stringify(doc) : stringify(doc);
  return text
    .replace(format === 'json' ? `"${DEEP_ARRAY}"` : DEEP_ARRAY, deepText(DEPTH))
    .replace(format === 'json' ? `"${DEEP_OBJECT}"` : DEEP_OBJECT, deepText(DEPTH, 'object'))
    .replaceAll(format === 'json' ? `"${DEEP_ARRAY}"` : DEEP_ARRAY, '[]')
    .replaceAll(format === 'json' ? `"${DEEP_OBJECT}"` : DEEP_OBJECT, '{}');
}

/** The document as a value, with the deep placeholders replaced by the deep values themselves. */
export function materialize(doc: unknown): unknown {
  if (doc === DEEP_ARRAY) return deep(DEPTH);
  if (doc === DEEP_OBJECT) return deep(DEPTH, 'object');
  if (Array.isArray(doc)) return doc.map(materialize);
  if (doc !== null && typeof doc === 'object')
    return Object.fromEntries(Object.entries(doc).map(([k, v]) => [k, materialize(v)]));
  return doc;
}

/** Anything that could land in a field: hostile text, a huge string, or the wrong type. */
export const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 6, arbitrary: hostileString },
  { weight: 1, arbitrary: hugeString },
  { weight: 3, arbitrary: wrongType },
);

export type Path = (string | number)[];

/** Every path into a JSON-like value (objects and arrays included, the root excluded). */
export function paths(value: unknown, prefix: Path = []): Path[] {
  if (value === null || typeof value !== 'object') return [];
  const entries: [string | number, unknown][] = Array.isArray(value)
    ? value.map((v, i) => [i, v])
    : Object.entries(value as Record<string, unknown>);
  return entries.flatMap(([k, v]) => [[...prefix, k], ...paths(v, [...prefix, k])]);
}

/** A deep copy of `value` with the value at `path` replaced (or, with `key`, a new field added beside it). */
export function setAt(value: unknown, path: Path, next: unknown, key?: string): unknown {
  const copy = structuredClone(value) as Record<string | number, unknown>;
  let at: Record<string | number, unknown> = copy;
  for (const seg of path.slice(0, -1)) at = at[seg] as Record<string | number, unknown>;
  const last = path[path.length - 1];
  if (last === undefined) return next;
  if (key !== undefined && at[last] !== null && typeof at[last] === 'object' && !Array.isArray(at[last]))
    (at[last] as Record<string, unknown>)[key] = next;
  else at[last] = next;
  return copy;
}

/** One mutation of a valid document: a path to change, what to put there, and sometimes an extra field's name. */
export function mutation(base: unknown): fc.Arbitrary<{ path: Path; value: unknown; key: string | undefined }> {
  const all = paths(base);
  return fc.record({
    path: fc.constantFrom(...all),
    value: hostileValue,
    key: fc.option(hostileString, { nil: undefined, freq: 5 }),
  });
}

/** Up to three mutations of `base`, applied in order. */
export function mutated(base: unknown): fc.Arbitrary<unknown> {
  return fc
    .array(mutation(base), { minLength: 1, maxLength: 3 })
    .map((ms) =>
      ms.reduce<unknown>((doc, m) => (hasPath(doc, m.path) ? setAt(doc, m.path, m.value, m.key) : doc), base),
    );
}

function hasPath(doc: unknown, path: Path): boolean {
  let at: unknown = doc;
  for (const seg of path.slice(0, -1)) {
    if (at === null || typeof at !== 'object') return false;
    at = (at as Record<string | number, unknown>)[seg];
  }
  return at !== null && typeof at === 'object';
}

/** A formatted issue line names a field: `nodes[0].engines[1].container: rule`, or `(root): rule` for the root. */
export const NAMED_ISSUE =
  /^(?:\(root\)|\(body\)|\(request\)|(?:[A-Za-z0-9_$-]+|\[\d+\]|\["(?:[^"\\]|\\.)*"\])(?:\.[A-Za-z0-9_$-]+|\[\d+\]|\["(?:[^"\\]|\\.)*"\])*): \S/;

/** Whether a value that reaches a command line is safe there: no leading "-", no control character. */
export function safeArg(s: string): boolean {
  return !s.startsWith('-') && !hasControlChars(s);
}

/** Fail the test if an unhandled rejection or uncaught exception happened while `fn` ran. */
export async function noUnhandled<T>(fn: () => Promise<T>): Promise<T> {
  const seen: unknown[] = [];
  const trap = (e: unknown): void => {
    seen.push(e);
  };
  process.on('unhandledRejection', trap);
  process.on('uncaughtException', trap);
  try {
    const out = await fn();
    // Rejections are reported after the microtask queue drains.
    await new Promise((r) => setImmediate(r));
    expect(seen).toEqual([]);
    return out;
  } finally {
    process.off('unhandledRejection', trap);
    process.off('uncaughtException', trap);
  }
}
