/**
 * `journalctl` for the sandbox node: the journal of its simulated units ($GPUOPS_SANDBOX_STATE; lib/systemd.ts) with
 * `-u/--unit`, `-n/--lines`, `-o/--output cat|short|short-iso`, `-S/--since`, `-U/--until`, `-r`, `-q`,
 * `--no-pager` and field matches (`_SYSTEMD_INVOCATION_ID=`, `_SYSTEMD_UNIT=`), as journalctl prints them: `-o cat`
 * is the message alone, and implies --quiet (no "-- No entries --" when nothing matches). Times without a zone are
 * local time, so `TZ` decides; like older journalctl, an RFC 3339 "T" separator is refused.
 */
import * as core from './lib/core';
import { err, loadState, out } from './lib/shim';
import * as sd from './lib/systemd';

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const OUTPUTS = new Set(['short', 'short-iso', 'cat']);
const MATCH_FIELDS = new Set(['_SYSTEMD_INVOCATION_ID', '_SYSTEMD_UNIT']);
const SPAN_MS: Readonly<Record<string, number>> = {
  us: 0.001,
  ms: 1,
  s: 1000,
  sec: 1000,
  m: 60_000,
  min: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

function pad(n: number, w = 2): string {
  return String(n).padStart(w, '0');
}

/** systemd.time(7) timestamps: "YYYY-MM-DD [HH:MM[:SS[.frac]]] [UTC]", "HH:MM[:SS]", "@epoch", now/today/yesterday, ±span. */
function parseTime(text: string, now: number): number | undefined {
  const t = text.trim();
  const midnight = (days: number): number => {
    const d = new Date(now);
    return new Date(d.getFullYear(), d.getMonth(), d.getDate() + days).getTime();
  };
  if (t === 'now') return now;
  if (t === 'today') return midnight(0);
  if (t === 'yesterday') return midnight(-1);
  if (t === 'tomorrow') return midnight(1);
  let m = /^@(\d+(?:\.\d+)?)$/.exec(t);
  if (m) return Number(m[1]) * 1000;
  m = /^([+-])\s*(\d+(?:\.\d+)?)\s*(us|ms|s|sec|m|min|h|d)?$/.exec(t) ?? /^()(\d+)\s*(s|sec|min|h|d) ago$/.exec(t);
  if (m) return now + (m[1] === '+' ? 1 : -1) * Number(m[2]) * (SPAN_MS[m[3] || 's'] ?? 1000);
  m = /^(?:(\d{4})-(\d\d)-(\d\d))?(?: ?(\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,6}))?)?)?(?: (UTC))?$/.exec(t);
  if (!m || (m[1] === undefined && m[4] === undefined)) return undefined;
  const base = new Date(now);
  const parts = [
    m[1] !== undefined ? Number(m[1]) : base.getFullYear(),
    m[1] !== undefined ? Number(m[2]) - 1 : base.getMonth(),
    m[1] !== undefined ? Number(m[3]) : base.getDate(),
    Number(m[4] || 0),
    Number(m[5] || 0),
    Number(m[6] || 0),
    Math.floor(Number(`0.${m[7] || '0'}`) * 1000),
  ] as const;
  return m[8] === 'UTC' ? Date.UTC(...parts) : new Date(...parts).getTime();
}

interface JournalOptions {
  units: (string | undefined)[];
  matches: [field: string, value: string][];
  lines: string | undefined;
  output: string | undefined;
  quiet: boolean;
  reverse: boolean;
  since?: string | undefined;
  until?: string | undefined;
}

/** The next word is -n's value when it is a number (journalctl's rule for its optional argument). */
function parseArgv(argv: string[]): JournalOptions | { error: string } {
  const o: JournalOptions = { units: [], matches: [], lines: undefined, output: 'short', quiet: false, reverse: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const name = eq > 0 ? a.slice(0, eq) : a;
    const inline = eq > 0 ? a.slice(eq + 1) : /^-[unoSU]./.test(a) ? a.slice(2) : undefined;
    const flag = inline !== undefined && !a.startsWith('--') ? a.slice(0, 2) : name;
    const value = (): string | undefined => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case '-u':
      case '--unit':
        o.units.push(value());
        break;
      case '-n':
      case '--lines':
        if (inline !== undefined) o.lines = inline;
        else if (/^(\+?\d+|all)$/.test(argv[i + 1] ?? '')) o.lines = argv[++i];
        else o.lines = '10';
        break;
      case '-o':
      case '--output':
        o.output = value();
        break;
      case '-S':
      case '--since':
        o.since = value();
        break;
      case '-U':
      case '--until':
        o.until = value();
        break;
      case '-r':
      case '--reverse':
        o.reverse = true;
        break;
      case '-q':
      case '--quiet':
        o.quiet = true;
        break;
      case '--no-pager':
      case '--no-hostname':
      case '-a':
      case '--all':
      case '-b':
      case '--boot':
      case '--system':
        break;
      default: {
        if (a.startsWith('--')) return { error: `journalctl: unrecognized option '${name}'` };
        if (a.startsWith('-') && a.length > 1) return { error: `journalctl: invalid option -- '${a[1]}'` };
        const at = a.indexOf('=');
        if (at < 0 || !MATCH_FIELDS.has(a.slice(0, at))) {
          return { error: `gpuops sandbox shim: journalctl match "${a}" is not simulated` };
        }
        o.matches.push([a.slice(0, at), a.slice(at + 1)]);
      }
    }
  }
  if (o.units.some((u) => u === undefined)) return { error: "journalctl: option requires an argument -- 'u'" };
  if (o.output === undefined || !OUTPUTS.has(o.output))
    return { error: `gpuops sandbox shim: journalctl -o ${o.output} is not simulated` };
  return o;
}

function shortTime(ms: number): string {
  const d = new Date(ms);
  return `${MONTHS[d.getMonth()]} ${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function isoTime(ms: number): string {
  const d = new Date(ms);
  const off = -d.getTimezoneOffset();
  const zone = `${off >= 0 ? '+' : '-'}${pad(Math.floor(Math.abs(off) / 60))}${pad(Math.abs(off) % 60)}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}${zone}`;
}

function main(argv: string[]): number {
  const o = parseArgv(argv);
  if ('error' in o) {
    err(`${o.error}\n`);
    return 1;
  }
  const now = Date.now();
  const bounds: { since?: number; until?: number } = {};
  for (const key of ['since', 'until'] as const) {
    const text = o[key];
    if (text === undefined) continue;
    const t = parseTime(text, now);
    if (t === undefined) {
      err(`Failed to parse timestamp: ${text}\n`);
      return 1;
    }
    bounds[key] = t;
  }
  const { state } = loadState('journalctl');
  // A model that fails to load ends its engine at a known time: show it, as `docker logs` does.
  core.applyLoadFailures(state, now);
  const ids = new Set(o.units.map((u) => sd.unitName(u ?? '')));
  let entries: (sd.JournalEntry & { unit: string })[] = [];
  for (const unit of sd.allUnits(state)) {
    if (ids.size > 0 && !ids.has(unit.id)) continue;
    for (const e of sd.journalEntries(unit))
      entries.push({ ...e, unit: e.ident === 'systemd' ? 'init.scope' : unit.id });
  }
  entries.sort((p, q) => p.t - q.t);
  for (const [field, value] of o.matches) {
    entries = entries.filter((e) => (field === '_SYSTEMD_UNIT' ? e.unit === sd.unitName(value) : e.inv === value));
  }
  const { since, until } = bounds;
  if (since !== undefined) entries = entries.filter((e) => e.t >= since);
  if (until !== undefined) entries = entries.filter((e) => e.t <= until);
  if (o.lines !== undefined && o.lines !== 'all') {
    const n = Number(o.lines.replace(/^\+/, ''));
    entries = o.lines.startsWith('+') ? entries.slice(0, n) : entries.slice(Math.max(0, entries.length - n));
  }
  if (o.reverse) entries.reverse();
  const host = state.host.hostname;
  let text = '';
  for (const e of entries) {
    if (o.output === 'cat') text += `${e.m}\n`;
    else text += `${o.output === 'short' ? shortTime(e.t) : isoTime(e.t)} ${host} ${e.ident}[${e.pid}]: ${e.m}\n`;
  }
  // -o cat (like export and the JSON modes) implies --quiet.
  if (entries.length === 0 && !o.quiet && o.output !== 'cat') text = '-- No entries --\n';
  out(text);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
