/**
 * One way to turn zod failures into messages an operator can act on: `nodes[1].engines[0].url: must be an http(s)
 * URL`. Used at every boundary (config, CLI, workflow inputs, updates, webhooks). Workflow-safe.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { z } from 'zod';

/** Longest key shown in a message; a longer (hostile) key is cut, so a refusal stays one short line. */
const MAX_SHOWN_KEY = 64;

/**
 * A key as a message shows it: plain when it is a plain name, else quoted with every character outside printable
 * ASCII escaped, so a key holding ":", a line break or a bidi override cannot forge the path or the log line.
 */
export function showKey(key: string): string {
  if (/^[A-Za-z0-9_$-]+$/.test(key) && key.length <= MAX_SHOWN_KEY) return key;
  const cut = key.length > MAX_SHOWN_KEY ? `${key.slice(0, MAX_SHOWN_KEY)}…` : key;
  return JSON.stringify(cut).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export function issuePath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else {
      const key = showKey(String(seg));
      out += key.startsWith('"') ? `[${key}]` : out === '' ? key : `.${key}`;
    }
  }
  return out === '' ? '(root)' : out;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type': {
      // zod 4 leaves `input` out of issues unless parsing with reportInput, so its absence does not mean the field
      // is missing; zod's own message says what it received ("… received undefined" only when nothing was given).
      const missing = issue.input === undefined && /received undefined$/.test(issue.message);
      return missing ? 'is required' : `must be ${issue.expected}`;
    }
    case 'invalid_key':
      // A record key (e.g. a policy name) broke its rule; zod's own message only says "Invalid key in record".
      return `invalid name: ${issue.issues.map((i) => describeIssue(i)).join('; ')}`;
    case 'unrecognized_keys':
      return `unknown field(s): ${issue.keys.map(showKey).join(', ')}`;
    case 'invalid_value':
      return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'invalid_union':
      return issue.message.startsWith('Invalid') ? 'matches none of the allowed shapes' : issue.message;
    default:
      return issue.message;
  }
}

/** One line per issue, each naming the field path and the rule it broke. */
export function formatIssues(error: z.ZodError, prefix = ''): string[] {
  return error.issues.map((i) => {
    const p = issuePath([...(prefix ? [prefix] : []), ...i.path]);
    return `${p}: ${describeIssue(i)}`;
  });
}

/** Thrown when input at a boundary is invalid; `message` lists every problem, one per line. */
export class ValidationError extends Error {
  constructor(
    readonly what: string,
    readonly problems: string[],
  ) {
    super(`invalid ${what}:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'ValidationError';
  }
}

/** Parse or throw a ValidationError naming every bad field. */
export function parseOrThrow<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  const r = schema.safeParse(input);
  if (!r.success) throw new ValidationError(what, formatIssues(r.error));
  return r.data;
}

/**
 * Parse a workflow or activity input. A bad input fails the workflow (or activity) at once with a non-retryable
 * ApplicationFailure of type ValidationError, never a workflow-task retry loop; details carry one line per field.
 */
export function parseInput<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  const r = schema.safeParse(input);
  if (!r.success) {
    const problems = formatIssues(r.error);
    throw ApplicationFailure.create({
      type: 'ValidationError',
      message: `invalid ${what}: ${problems.join('; ')}`,
      nonRetryable: true,
      details: [problems],
    });
  }
  return r.data;
}

/**
 * Deepest nesting gpuops accepts in a JSON document it re-serialises (a generation body it forwards, a JSON Schema in
 * a policy): JSON.stringify recurses, and a body of ten thousand nested arrays overflows its stack.
 */
export const MAX_JSON_DEPTH = 128;

/** Whether `value` nests arrays and objects deeper than `max` levels (iterative: any depth is safe to ask about). */
export function jsonDeeperThan(value: unknown, max = MAX_JSON_DEPTH): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop() as [unknown, number];
    if (v === null || typeof v !== 'object') continue;
    if (depth + 1 > max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, depth + 1]);
  }
  return false;
}
