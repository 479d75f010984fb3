/** Helpers shared by the shims: locating the node's state file, argv parsing and a tiny Go-template evaluator. */
import type { SandboxState } from '../../state';
import * as core from './core';

export const out = (s: string): void => void process.stdout.write(s);
export const err = (s: string): void => void process.stderr.write(s);

/** The node's state file: $GPUOPS_SANDBOX_STATE (set by the supervisor for the node worker). */
export function stateFile(tool: string): string {
  const file = process.env.GPUOPS_SANDBOX_STATE;
  if (!file) {
    err(`${tool} (gpuops sandbox shim): GPUOPS_SANDBOX_STATE is not set\n`);
    process.exit(127);
  }
  return file;
}

export function loadState(tool: string): { file: string; state: SandboxState } {
  const file = stateFile(tool);
  const state = core.tryReadState(file);
  if (!state) {
    err(`${tool} (gpuops sandbox shim): no sandbox state at ${file}\n`);
    process.exit(127);
  }
  return { file, state };
}

function lookupPath(value: unknown, pathText: string): unknown {
  if (pathText === '.' || pathText === '') return value;
  let v = value;
  for (const part of pathText.replace(/^\./, '').split('.')) {
    if (v === null || v === undefined || typeof v !== 'object') return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

/** How Go's text/template prints a value without `json`: maps and slices in Go syntax, nil as <nil>. */
function goPrint(v: unknown): string {
  if (v === null || v === undefined) return '<no value>';
  if (Array.isArray(v)) return `[${v.map(goPrint).join(' ')}]`;
  if (typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o).sort();
    return `map[${keys.map((k) => `${k}:${goPrint(o[k])}`).join(' ')}]`;
  }
  return String(v as string | number | boolean);
}

/**
 * Render the subset of Go templates gpuops and operators use with docker: `{{json .Path}}`, `{{.Path}}`,
 * `{{json .}}` and literal text. Anything else is a template error, as docker would report one.
 */
export function renderTemplate(template: string, value: unknown): string {
  let result = '';
  let rest = template;
  for (;;) {
    const open = rest.indexOf('{{');
    if (open < 0) {
      result += rest;
      break;
    }
    result += rest.slice(0, open);
    const close = rest.indexOf('}}', open);
    if (close < 0) throw new Error(`template parsing error: template: :1: unclosed action`);
    const expr = rest
      .slice(open + 2, close)
      .replace(/^-?\s*/, '')
      .replace(/\s*-?$/, '');
    let m: RegExpExecArray | null;
    if ((m = /^json\s+(\.[\w.]*)$/.exec(expr))) result += JSON.stringify(lookupPath(value, m[1] ?? '') ?? null);
    else if ((m = /^(\.[\w.]*)$/.exec(expr))) result += goPrint(lookupPath(value, m[1] ?? ''));
    else throw new Error(`template parsing error: template: :1: function "${expr.split(/\s+/)[0]}" not defined`);
    rest = rest.slice(close + 2);
  }
  return result.replace(/\\n/g, '\n').replace(/\\t/g, '\t');
}

/** Parse "10m", "1h30m", "45s", an RFC 3339 time or a unix timestamp, as docker logs --since/--until do. */
export function parseSince(text: string, now: number): number {
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text) * 1000;
  const rel = /^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$/.exec(text);
  if (rel && text !== '') {
    const [, h, mi, s, ms] = rel;
    return now - ((Number(h || 0) * 60 + Number(mi || 0)) * 60 + Number(s || 0)) * 1000 - Number(ms || 0);
  }
  const t = Date.parse(text.replace(/(\.\d{3})\d+/, '$1'));
  if (Number.isNaN(t))
    throw new Error(`invalid value for "since": failed to parse value as time or duration: "${text}"`);
  return t;
}

/** A flag's value: the text after it (or after `=`), true for a flag without one, undefined when argv ran out. */
export type FlagValue = string | true | undefined;

/** Split argv into flags (with values for the flags that take one) and positionals, like docker's cobra parser. */
export function parseArgs(
  argv: readonly string[],
  valueFlags: ReadonlySet<string>,
): { flags: Record<string, FlagValue>; positional: string[] } {
  const flags: Record<string, FlagValue> = {};
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
      if (eq > 0) flags[name] = a.slice(eq + 1);
      else if (valueFlags.has(name)) flags[name] = argv[++i];
      else flags[name] = true;
    } else if (a.startsWith('-') && a.length > 1) {
      const name = a.slice(1, 2);
      if (valueFlags.has(name)) flags[name] = a.length > 2 ? a.slice(2).replace(/^=/, '') : argv[++i];
      else for (const ch of a.slice(1)) flags[ch] = true;
    } else {
      positional.push(a);
    }
  }
  return { flags, positional };
}

/** The message of a thrown value. */
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
