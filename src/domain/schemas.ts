/** zod field schemas shared by workflow inputs, the config and the CLI. Pure; safe in workflows. */
import { z } from 'zod';
import { parseDuration } from './durations';

/** Ids in gpuops.yaml (nodes, hypervisors, plans): lowercase letters, digits and dashes, at most 63. */
export const ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** An id that must name something in gpuops.yaml, e.g. `gpuopsId('a node id')`. */
export function gpuopsId(what: string) {
  return z.string().regex(ID_PATTERN, { message: `must be ${what} from gpuops.yaml` });
}

/** A duration as parseDuration reads it: a number and ms, s, m, h or d. */
export const DurationSchema = z
  .string()
  .regex(/^\d+(ms|s|m|h|d)$/, { message: 'must be a duration such as 500ms, 30s, 5m, 1h or 7d' });

/** Smallest test-generation deadline, ms: under it even a healthy engine on loopback cannot answer 2 tokens. */
export const MIN_GENERATE_TIMEOUT_MS = 50;

/** A test generation's deadline: a duration of at least 50 ms. */
export const GenerateTimeoutSchema = DurationSchema.refine(
  // zod runs this check after a failed pattern too: a malformed duration is the pattern's to report.
  (d) => !DurationSchema.safeParse(d).success || parseDuration(d) >= MIN_GENERATE_TIMEOUT_MS,
  { message: `must be at least ${MIN_GENERATE_TIMEOUT_MS}ms` },
);

/** Whether `s` holds a control character (NUL, line breaks, escape, DEL): never part of a name, path or argument. */
export function hasControlChars(s: string): boolean {
  // eslint-disable-next-line no-control-regex -- matching control characters is the point
  return /[\u0000-\u001f\u007f]/.test(s);
}

/**
 * A string that reaches a command line (a container or unit name, a path, an image or model reference, a binary):
 * the one rule every such field shares, added to its own. It never starts with `-`, so no tool can read it as an
 * option however the command is built (`docker rm -f NAME`, `restic restore ID --target DIR`), and it holds no
 * control character (a NUL cannot even be passed to exec; a line break forges log and env-file lines).
 */
export function commandArg<S extends z.ZodString>(schema: S): S {
  return schema
    .refine((s) => !s.startsWith('-'), {
      message: 'must not start with "-" (it is passed to a command, which would read it as an option)',
    })
    .refine((s) => !hasControlChars(s), { message: 'must not contain control characters (NUL, line breaks, …)' });
}

/**
 * A name that becomes part of a path (a model reference, an alias): no `..` segment, so `a/../../etc/x.gguf` can
 * never walk out of the directory it is joined to.
 */
export function noDotDotSegment<S extends z.ZodString>(schema: S): S {
  return schema.refine((s) => !s.split(/[/\\]/).includes('..'), { message: 'must not contain a ".." path segment' });
}

// The runtime naming rules below never accept a leading "-" or a control character by themselves; the config field
// adds commandArg too, so its message says which rule a value broke.

/**
 * A Docker container name, as dockerd checks it (`Invalid container name (…), only [a-zA-Z0-9][a-zA-Z0-9_.-] are
 * allowed`): a letter or digit, then at least one more of letters, digits, `_ . -`.
 */
export const DockerContainerNameSchema = z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/, {
  message: 'must be a Docker container name: [a-zA-Z0-9][a-zA-Z0-9_.-]+ (2 characters at least, as dockerd checks)',
});

/**
 * A systemd service unit that can be started, by systemd's own rules (unit_name_is_valid in src/basic/unit-name.c,
 * systemd.unit(5)): at most 255 characters of ASCII letters, digits and `: _ . - \`, then `.service`; a template
 * instance `name@instance.service` (the instance may hold `@` too). A bare template `name@.service` cannot be started.
 * systemd allows a leading `-`; gpuops does not (commandArg).
 */
export const SystemdServiceUnitSchema = z
  .string()
  .max(255, { message: 'must be at most 255 characters (systemd unit name limit)' })
  .regex(/^(?!-)[A-Za-z0-9:_.\\-]+(?:@[A-Za-z0-9:_.\\@-]+)?\.service$/, {
    message:
      'must be a systemd service unit name: [A-Za-z0-9:_.\\-]+ then .service, or a template instance name@instance.service',
  });

/** A process name of runtime process engines: it names files in tools.processDir, so no slash and no dot-only name. */
export const ProcessNameSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, {
  message: 'must be a process name: a letter or digit, then letters, digits, _ . - (max 128; it names files)',
});

/** Byte multipliers of a size's unit: SI (KB = 1000) and IEC (KiB = 1024). */
const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

// Case spelled out (no /i flag): the JSON Schema written from it has no flags either.
const SIZE_PATTERN = /^(\d+(?:\.\d+)?)\s*((?:[kKmMgGtT][iI]?[bB]|[bB])?)$/;

/** Bytes of a size as ByteSizeSchema accepts it (a whole number of bytes, or a number and a unit); NaN otherwise. */
export function byteSize(v: number | string): number {
  if (typeof v === 'number') return v;
  const m = SIZE_PATTERN.exec(v);
  return m ? Math.round(Number(m[1]) * (SIZE_UNITS[(m[2] || 'b').toLowerCase()] ?? NaN)) : NaN;
}

/**
 * A size: a whole number of bytes, or a number and a unit ("20GiB", "500MB", "1.5TB"); byteSize() reads it. Kept
 * as written (no transform), so the generated JSON Schema keeps the defaults around it.
 */
export const ByteSizeSchema = z.union([
  z.int().min(0),
  z
    .string()
    .regex(SIZE_PATTERN, {
      message: 'must be a size: bytes, or a number and B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (e.g. 20GiB)',
    })
    // zod runs this check after a failed pattern too: a malformed size is the pattern's to report.
    .refine((v) => !SIZE_PATTERN.test(v) || Number.isSafeInteger(byteSize(v)), {
      message: 'must be a size of at most 8 PiB',
    }),
]);

/** restic check --read-data-subset: `n/t` (a part), `x%` (a share of packs) or a size with K, M, G or T. */
export const ReadDataSubsetSchema = z.string().regex(/^(?:[1-9]\d*\/[1-9]\d*|\d+(?:\.\d+)?%|\d+[KMGT]?)$/i, {
  message: 'must be a restic --read-data-subset value: n/t (e.g. 1/5), a percentage (5%) or a size (50M)',
});
