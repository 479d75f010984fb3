/**
 * systemd on the sandbox node, shared by the `systemctl` and `journalctl` shims. A sandbox engine whose config says
 * `runtime: systemd` (EngineSim.runtime) is a unit: its record in `state.containers` is the very record the docker
 * shim keeps for a container, so the unit runs the same engine simulation (faults, model loads, the supervisor's
 * listener). This file adds what only systemd has: unit names, the unit file's ExecStart=, the drop-ins a
 * `daemon-reload` loads, and how the record reads in `systemctl show` and in the journal. Unit-only fields live in
 * `record.unit` ({@link UnitRecord}).
 *
 * Sandbox units are Ollama's official unit (`/etc/systemd/system/ollama.service`, `ExecStart=/usr/local/bin/ollama
 * serve`) and its vLLM / llama.cpp equivalents, without `Restart=always`: a crashed engine stays down until gpuops
 * acts, as a sandbox container does. They are enabled, so a VM boot starts them even after a `systemctl stop`.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ContainerSim, EngineSim, SandboxState, UnitExec, UnitJournalLine, UnitRecord } from '../../state';
import * as core from './core';

export type { UnitExec } from '../../state';

/** A record that is a unit, and its unit name. */
export interface SandboxUnit {
  c: ContainerSim;
  engine: EngineSim;
  id: string;
}

const UNIT_SUFFIXES = [
  '.service',
  '.socket',
  '.target',
  '.device',
  '.mount',
  '.automount',
  '.swap',
  '.timer',
  '.path',
  '.slice',
  '.scope',
];

/** What each engine's unit file sets: the binary ExecStart= runs before the record's arguments, and Description=. */
const UNIT_FILES: Readonly<Record<EngineSim['type'], { exec: string[]; description: string }>> = {
  ollama: { exec: ['/usr/local/bin/ollama'], description: 'Ollama Service' },
  vllm: {
    exec: ['/opt/vllm/bin/python3', '-m', 'vllm.entrypoints.openai.api_server'],
    description: 'vLLM OpenAI-compatible API server',
  },
  llamacpp: { exec: ['/usr/local/bin/llama-server'], description: 'llama.cpp server' },
};

/** systemd's defaults for what the sandbox units leave unset (Restart=no; DefaultTimeoutStopSec=90s). */
export const TIMEOUT_STOP_SEC = 90;

const WEEKDAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const SIGNALS: Readonly<Record<number, string>> = {
  1: 'HUP',
  2: 'INT',
  3: 'QUIT',
  6: 'ABRT',
  9: 'KILL',
  11: 'SEGV',
  13: 'PIPE',
  15: 'TERM',
};
const EXIT_NAMES = ['SUCCESS', 'FAILURE', 'INVALIDARGUMENT', 'NOTIMPLEMENTED', 'NOPERMISSION', 'NOTINSTALLED'];
const CLD_NAMES: Readonly<Record<number, string>> = { 1: 'exited', 2: 'killed', 3: 'dumped' };

// ---------------------------------------------------------------------------------------------------------------
// Names and files

/** systemctl's and journalctl's name mangling, for the names gpuops passes: no unit type suffix means a service. */
export function unitName(name: string): string {
  return UNIT_SUFFIXES.some((s) => name.length > s.length && name.endsWith(s)) ? name : `${name}.service`;
}

/** The sandbox's /etc/systemd/system for the node whose state file is `stateFile`: `systemd/` beside it. */
export function defaultUnitDir(stateFile: string): string {
  return path.join(path.dirname(stateFile), 'systemd');
}

/** Where the shims read unit files' drop-ins: $GPUOPS_SANDBOX_SYSTEMD_DIR, else {@link defaultUnitDir}. */
export function unitDir(stateFile: string): string {
  return process.env.GPUOPS_SANDBOX_SYSTEMD_DIR || defaultUnitDir(stateFile);
}

/** All units of the node: `{ c, engine, id }` for each record whose engine runs under systemd. */
export function allUnits(state: SandboxState): SandboxUnit[] {
  const units: SandboxUnit[] = [];
  for (const c of Object.values(state.containers)) {
    const engine = state.engines[c.engine];
    if (engine?.runtime === 'systemd') units.push({ c, engine, id: unitName(c.name) });
  }
  return units;
}

/** The unit `name` names on this node, or undefined (what systemd calls not-found). */
export function findUnit(state: SandboxState, name: string): SandboxUnit | undefined {
  const id = unitName(name);
  return allUnits(state).find((u) => u.id === id);
}

/** The record's unit-only fields, created on first write. */
function unitOf(c: ContainerSim): UnitRecord {
  c.unit ??= {};
  return c.unit;
}

// ---------------------------------------------------------------------------------------------------------------
// ExecStart= command lines (systemd.service(5) "Command lines", systemd.syntax(7) "Quoting")

const ESCAPES: Readonly<Record<string, string>> = {
  a: '\x07',
  b: '\b',
  f: '\f',
  n: '\n',
  r: '\r',
  t: '\t',
  v: '\v',
  s: ' ',
};

/** One backslash escape at s[i] (the backslash): [text, length]. Unknown escapes are kept, as systemd does. */
function unescapeAt(s: string, i: number): [string, number] {
  const ch = s[i + 1];
  if (ch === undefined) return ['\\', 1];
  const known = ESCAPES[ch];
  if (known !== undefined) return [known, 2];
  if ('\\"\';'.includes(ch)) return [ch, 2];
  if (ch === 'x' && /^[0-9a-fA-F]{2}$/.test(s.slice(i + 2, i + 4))) {
    return [String.fromCharCode(parseInt(s.slice(i + 2, i + 4), 16)), 4];
  }
  if (/^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) return [String.fromCharCode(parseInt(s.slice(i + 1, i + 4), 8)), 4];
  return [`\\${ch}`, 2];
}

const isSpace = (ch: string | undefined): boolean => ch !== undefined && /\s/.test(ch);

/**
 * Split an ExecStart= value into words: whitespace separates, a word may be wholly "double" or 'single' quoted, C
 * escapes work inside and outside quotes, a lone `;` (not `\;`) separates commands. Returns a list of commands (word
 * lists), or null when the quoting is broken.
 */
function splitCommands(s: string): string[][] | null {
  const commands: string[][] = [[]];
  let i = 0;
  const readWord = (stop: (ch: string) => boolean): string => {
    let word = '';
    while (i < s.length && !stop(s[i] ?? '')) {
      if (s[i] === '\\') {
        const [text, n] = unescapeAt(s, i);
        word += text;
        i += n;
      } else word += s[i++] ?? '';
    }
    return word;
  };
  while (i < s.length) {
    while (i < s.length && isSpace(s[i])) i++;
    if (i >= s.length) break;
    let word: string;
    const start = i;
    const q = s[i];
    if (q === '"' || q === "'") {
      i++;
      word = readWord((ch) => ch === q);
      if (i >= s.length) return null;
      i++;
      if (i < s.length && !isSpace(s[i])) return null;
    } else {
      word = readWord(isSpace);
    }
    if (s.slice(start, i) === ';') commands.push([]);
    else commands[commands.length - 1]?.push(word);
  }
  return commands.filter((c) => c.length > 0);
}

/** The specifiers systemd resolves in a unit of this name (`%%` is a literal percent sign). */
function resolveSpecifiers(value: string, id: string): string {
  const prefix = id.replace(/\.[^.]+$/, '');
  const map: Record<string, string> = { '%': '%', n: id, N: prefix, p: prefix.replace(/@.*$/, ''), i: '' };
  return value.replace(/%(.)/g, (all, ch: string) => map[ch] ?? all);
}

/**
 * One ExecStart= value as systemd loads it: `[{ path, argv, ignoreErrors }]` (several for `;`-joined commands), or
 * null when it cannot be parsed (systemd logs it and ignores the assignment). Prefixes: `-` ignores a failure, `@`
 * makes the second word argv[0]; `+`, `!`, `!!` and `:` are accepted and have no effect here.
 */
export function parseExecStart(value: string, id: string): UnitExec[] | null {
  const commands = splitCommands(resolveSpecifiers(value, id));
  if (commands === null) return null;
  const parsed: UnitExec[] = [];
  for (const words of commands) {
    let first = words[0] ?? '';
    let ignoreErrors = false;
    let override = false;
    while (first !== '' && '-@+!:'.includes(first.charAt(0))) {
      if (first.startsWith('-')) ignoreErrors = true;
      if (first.startsWith('@')) override = true;
      first = first.slice(1);
    }
    const argv = override ? words.slice(1) : [first, ...words.slice(1)];
    if (first === '' || argv.length === 0) return null;
    parsed.push({ path: first, argv, ignoreErrors });
  }
  return parsed;
}

/** The ExecStart= of the unit file itself. */
function fileExec(engine: EngineSim, c: ContainerSim): UnitExec {
  const argv = [...UNIT_FILES[engine.type].exec, ...c.cmd];
  return { path: argv[0] ?? '', argv, ignoreErrors: false };
}

/** The ExecStart= list the last daemon-reload loaded (the unit file's until one has loaded drop-ins). */
export function loadedExec(engine: EngineSim, c: ContainerSim): UnitExec[] {
  return c.unit?.exec ?? [fileExec(engine, c)];
}

/** The unit's drop-in files in `dir`, in the order systemd applies them (by file name). */
function readDropIns(dir: string, id: string): { path: string; text: string }[] {
  const d = path.join(dir, `${id}.d`);
  let names: string[];
  try {
    names = fs.readdirSync(d).filter((n) => n.endsWith('.conf'));
  } catch {
    return [];
  }
  return names.sort().map((n) => ({ path: path.join(d, n), text: fs.readFileSync(path.join(d, n), 'utf8') }));
}

/**
 * The ExecStart= list after the drop-ins: in each file's [Service] section an empty `ExecStart=` clears the list,
 * any other value appends. Backslash-newline continues a line; `#` and `;` lines are comments.
 */
function execAfterDropIns(
  engine: EngineSim,
  c: ContainerSim,
  id: string,
  files: readonly { text: string }[],
): UnitExec[] {
  let exec = [fileExec(engine, c)];
  for (const f of files) {
    let section = '';
    for (const line of f.text.replace(/\\\r?\n/g, ' ').split(/\r?\n/)) {
      const l = line.trim();
      if (l === '' || l.startsWith('#') || l.startsWith(';')) continue;
      const header = /^\[(.+)\]$/.exec(l);
      if (header) {
        section = header[1] ?? '';
        continue;
      }
      const eq = l.indexOf('=');
      if (section !== 'Service' || eq < 0 || l.slice(0, eq).trim() !== 'ExecStart') continue;
      const value = l.slice(eq + 1).trim();
      if (value === '') {
        exec = [];
        continue;
      }
      const parsed = parseExecStart(value, id);
      if (parsed) exec = [...exec, ...parsed];
    }
  }
  return exec;
}

const dropInText = (files: readonly { path: string; text: string }[]): string =>
  files.map((f) => `${f.path}\n${f.text}`).join('\n');

/** `systemctl daemon-reload` for one unit: load its drop-ins now. */
export function reloadUnit(unit: SandboxUnit, dir: string, now: number): void {
  const files = readDropIns(dir, unit.id);
  const u = unitOf(unit.c);
  u.exec = execAfterDropIns(unit.engine, unit.c, unit.id, files);
  u.dropIns = files.map((f) => f.path);
  u.dropInText = dropInText(files);
  u.reloadedAt = now;
}

/** The drop-ins on disk differ from what the last daemon-reload loaded (NeedDaemonReload=yes). */
export function needsReload(unit: SandboxUnit, dir: string): boolean {
  return dropInText(readDropIns(dir, unit.id)) !== (unit.c.unit?.dropInText ?? '');
}

/** A unit whose loaded ExecStart= is not exactly one command refuses to start (LoadState=bad-setting). */
export function loadState(unit: SandboxUnit): 'loaded' | 'bad-setting' {
  return loadedExec(unit.engine, unit.c).length === 1 ? 'loaded' : 'bad-setting';
}

/** The command line of the current (or last) process. */
function runningArgv(engine: EngineSim, c: ContainerSim): string[] {
  return c.unit?.argv ?? fileExec(engine, c).argv;
}

function sameArgv(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Start hook: what systemd logged about the run that ended is kept, and the new process runs the ExecStart= the last
 * daemon-reload loaded. A command line that names another model makes the engine serve it (or fail to load it), as
 * `docker run` with new arguments does.
 */
export function applyLoadedExec(state: SandboxState, c: ContainerSim): void {
  const engine = state.engines[c.engine];
  if (!engine) return;
  archiveRun(state, c);
  const [entry] = loadedExec(engine, c);
  if (!entry || sameArgv(runningArgv(engine, c), entry.argv)) return;
  unitOf(c).argv = entry.argv;
  core.applyServedModel(state, engine, c, entry.argv.slice(1), entry.argv.slice(0, 1));
}

// ---------------------------------------------------------------------------------------------------------------
// State, as `systemctl show` reports it

/** A timestamp as systemd formats it: local time with the zone's abbreviation ("Tue 2026-12-01 07:55:12 UTC"). */
function showTime(ms: number): string {
  if (!ms) return 'n/a';
  const d = new Date(ms);
  const p = (n: number): string => String(n).padStart(2, '0');
  const zone = new Intl.DateTimeFormat('en-US', { timeZoneName: 'short' })
    .formatToParts(d)
    .find((x) => x.type === 'timeZoneName');
  return `${WEEKDAYS[d.getDay()]} ${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(
    d.getMinutes(),
  )}:${p(d.getSeconds())} ${zone ? zone.value : 'UTC'}`;
}

/** How the last main process ended, as systemd records it. */
interface LastExit {
  /** The CLD_* value: 1 exited, 2 killed; 0 while it runs or never ran. */
  code: number;
  status: number;
  result: 'success' | 'oom-kill' | 'timeout' | 'signal' | 'exit-code';
}

/**
 * Exit 137 without an OOM is the SIGKILL that ends a stop whose TimeoutStopSec= ran out (a hung engine), which
 * systemd reports as Result=timeout.
 */
function lastExit(c: ContainerSim): LastExit {
  if (c.status !== 'exited' || !c.startedAt) return { code: 0, status: 0, result: 'success' };
  const x = c.exitCode;
  if (c.oomKilled) return { code: 2, status: 9, result: 'oom-kill' };
  if (x === 0) return { code: 1, status: 0, result: 'success' };
  if (x === 137) return { code: 2, status: 9, result: 'timeout' };
  if (x > 128 && x < 160) return { code: 2, status: x - 128, result: 'signal' };
  return { code: 1, status: x, result: 'exit-code' };
}

/** ActiveState, SubState and Result: a failed unit reads inactive again after `systemctl reset-failed`. */
export function activeState(c: ContainerSim): { active: string; sub: string; result: LastExit['result'] } {
  if (c.status === 'running' || c.status === 'paused') return { active: 'active', sub: 'running', result: 'success' };
  if (c.status === 'restarting') return { active: 'activating', sub: 'auto-restart', result: lastExit(c).result };
  const { result } = lastExit(c);
  const resetAt = c.unit?.resetFailedAt;
  const forgiven = resetAt !== undefined && resetAt >= c.finishedAt;
  if (result !== 'success' && !forgiven) return { active: 'failed', sub: 'failed', result };
  return { active: 'inactive', sub: 'dead', result: 'success' };
}

/** The per-run id journald stamps on the unit's output (_SYSTEMD_INVOCATION_ID=); '' before the first start. */
function invocationId(c: ContainerSim): string {
  return c.startedAt ? core.hexOf(`${c.id}/invocation/${c.epoch}`, 32) : '';
}

function statusText(code: number, status: number): string {
  return `${status}${code === 1 ? '' : `/${SIGNALS[status] || String(status)}`}`;
}

/**
 * One ExecStart= entry as systemctl prints it. The runtime half (start, stop, pid, code, status) belongs to the
 * command object, which a daemon-reload replaces: after a reload it reads n/a until the next start.
 */
function execEntry(c: ContainerSim, entry: UnitExec): string {
  const reloadedAt = c.unit?.reloadedAt;
  const fresh = c.startedAt !== 0 && !(reloadedAt !== undefined && reloadedAt > c.startedAt);
  const running = c.status === 'running';
  const x = running ? { code: 0, status: 0 } : lastExit(c);
  const start = fresh ? c.startedAt : 0;
  const stop = fresh && !running ? c.finishedAt : 0;
  const pid = fresh ? (running ? c.pid : c.lastPid || 0) : 0;
  const code = fresh ? x.code : 0;
  const status = fresh ? x.status : 0;
  return (
    `{ path=${entry.path} ; argv[]=${entry.argv.join(' ')} ; ignore_errors=${entry.ignoreErrors ? 'yes' : 'no'} ; ` +
    `start_time=[${showTime(start)}] ; stop_time=[${showTime(stop)}] ; pid=${pid} ; ` +
    `code=${CLD_NAMES[code] || '(null)'} ; status=${statusText(code, status)} }`
  );
}

function monotonic(state: SandboxState, ms: number): string {
  return ms ? String(Math.max(0, Math.round((ms - state.vm.bootedAt) * 1000))) : '0';
}

/** A property as `systemctl show` prints it: a list prints one line per element (ExecStart=). */
export type UnitProperty = [name: string, value: string | string[]];

/** The service settings every simulated unit shares (systemd's defaults for a `Type=simple` unit). */
const SERVICE_DEFAULTS: UnitProperty[] = [
  ['Type', 'simple'],
  ['Restart', 'no'],
  ['RestartUSec', '100ms'],
  ['TimeoutStartUSec', '1min 30s'],
  ['TimeoutStopUSec', '1min 30s'],
];

/**
 * The properties the shim knows for a unit, in the order systemd's D-Bus GetAll returns them (the Service
 * interface first, then Unit).
 */
export function unitProperties(state: SandboxState, unit: SandboxUnit, dir: string): UnitProperty[] {
  const { c, engine, id } = unit;
  const running = c.status === 'running';
  const x = running ? { code: 0, status: 0 } : lastExit(c);
  const a = activeState(c);
  const exec = loadedExec(engine, c);
  const ls = loadState(unit);
  const exited = !running && c.startedAt !== 0 && c.finishedAt >= c.startedAt;
  return [
    ...SERVICE_DEFAULTS,
    ['MainPID', String(running ? c.pid : 0)],
    ['Result', a.result],
    ['NRestarts', String(c.restartCount)],
    ['ExecMainStartTimestamp', showTime(c.startedAt)],
    ['ExecMainStartTimestampMonotonic', monotonic(state, c.startedAt)],
    ['ExecMainExitTimestamp', showTime(exited ? c.finishedAt : 0)],
    ['ExecMainExitTimestampMonotonic', monotonic(state, exited ? c.finishedAt : 0)],
    ['ExecMainPID', String(running ? c.pid : c.lastPid || 0)],
    ['ExecMainCode', String(x.code)],
    ['ExecMainStatus', String(x.status)],
    ['ExecStart', exec.map((e) => execEntry(c, e))],
    ['Id', id],
    ['Names', id],
    ['Description', UNIT_FILES[engine.type].description],
    ['LoadState', ls],
    ['ActiveState', a.active],
    ['FreezerState', 'running'],
    ['SubState', a.sub],
    ['FragmentPath', path.join(dir, id)],
    ['DropInPaths', (c.unit?.dropIns ?? []).join(' ')],
    ['UnitFileState', 'enabled'],
    ['NeedDaemonReload', needsReload(unit, dir) ? 'yes' : 'no'],
    [
      'LoadError',
      ls === 'loaded' ? '' : `org.freedesktop.systemd1.BadUnitSetting "Unit ${id} has a bad unit file setting."`,
    ],
    ['InvocationID', invocationId(c)],
  ];
}

/** What systemd reports for a name no unit file answers to: LoadState=not-found, and no ExecStart= at all. */
export function notFoundProperties(id: string): UnitProperty[] {
  return [
    ...SERVICE_DEFAULTS,
    ['MainPID', '0'],
    ['Result', 'success'],
    ['NRestarts', '0'],
    ['ExecMainStartTimestamp', 'n/a'],
    ['ExecMainStartTimestampMonotonic', '0'],
    ['ExecMainExitTimestamp', 'n/a'],
    ['ExecMainExitTimestampMonotonic', '0'],
    ['ExecMainPID', '0'],
    ['ExecMainCode', '0'],
    ['ExecMainStatus', '0'],
    ['ExecStart', []],
    ['Id', id],
    ['Names', id],
    ['Description', id],
    ['LoadState', 'not-found'],
    ['ActiveState', 'inactive'],
    ['FreezerState', 'running'],
    ['SubState', 'dead'],
    ['FragmentPath', ''],
    ['DropInPaths', ''],
    ['UnitFileState', ''],
    ['NeedDaemonReload', 'no'],
    ['LoadError', `org.freedesktop.systemd1.NoSuchUnit "Unit ${id} not found."`],
    ['InvocationID', ''],
  ];
}

// ---------------------------------------------------------------------------------------------------------------
// The journal

/** Journal entries of systemd's own kept per unit (older runs' "Started"/"Stopped"/"Failed" lines). */
const ARCHIVE_MAX = 200;

/**
 * What systemd logs about one run of the unit: "Started …" when it began and, once it ended, how it ended (stopped,
 * SIGKILLed at TimeoutStopSec=, crashed, OOM-killed).
 */
function runLines(unit: SandboxUnit): UnitJournalLine[] {
  const { c, engine, id } = unit;
  const desc = `${id} - ${UNIT_FILES[engine.type].description}`;
  const comm = path.basename(runningArgv(engine, c)[0] ?? '');
  const lines: UnitJournalLine[] = [];
  const add = (t: number, order: number, m: string): void => void lines.push({ t, order, m });
  if (!c.startedAt) return lines;
  add(c.startedAt, -1, `Started ${desc}.`);
  if (c.status !== 'exited' || c.finishedAt < c.startedAt) return lines;
  const x = lastExit(c);
  const at = c.finishedAt;
  const name = x.code === 1 ? EXIT_NAMES[x.status] : SIGNALS[x.status];
  const exited = `${id}: Main process exited, code=${CLD_NAMES[x.code]}, status=${x.status}/${name || x.status}`;
  const failed = `${id}: Failed with result '${x.result}'.`;
  if (x.result === 'success') {
    add(at, -1, `Stopping ${desc}...`);
    add(at, 1, `${id}: Deactivated successfully.`);
    add(at, 2, `Stopped ${desc}.`);
  } else if (x.result === 'timeout') {
    add(at, -1, `Stopping ${desc}...`);
    add(at, 1, `${id}: State 'stop-sigterm' timed out. Killing.`);
    add(at, 2, `${id}: Killing process ${c.lastPid || 0} (${comm}) with signal SIGKILL.`);
    add(at, 3, exited);
    add(at, 4, failed);
    add(at, 5, `Stopped ${desc}.`);
  } else {
    if (x.result === 'oom-kill') add(at, 1, `${id}: A process of this unit has been killed by the OOM killer.`);
    add(at, 2, exited);
    add(at, 3, failed);
  }
  return lines;
}

/** Before a new start: keep what systemd logged about the run that ends here (the record only knows the last one). */
function archiveRun(state: SandboxState, c: ContainerSim): void {
  const unit = allUnits(state).find((u) => u.c === c);
  if (!unit) return;
  const u = unitOf(c);
  const kept = [...(u.journal ?? []), ...runLines(unit)];
  u.journal = kept.slice(Math.max(0, kept.length - ARCHIVE_MAX));
}

/** One journal entry: `inv` is the _SYSTEMD_INVOCATION_ID= it carries (systemd's own messages carry none). */
export interface JournalEntry {
  t: number;
  m: string;
  pid: number;
  ident: string;
  inv: string;
}

/**
 * The unit's journal, in time order: the engine's own output (stdout and stderr, as StandardOutput=journal records
 * them; the current run's carries its invocation id) and what systemd logged about the unit.
 */
export function journalEntries(unit: SandboxUnit): JournalEntry[] {
  const { c, engine } = unit;
  const comm = path.basename(runningArgv(engine, c)[0] ?? '');
  const pid = c.status === 'running' ? c.pid : c.lastPid || 0;
  const current = invocationId(c);
  const entries = c.logs.map((l) => ({
    t: l.t,
    order: 0,
    m: l.m,
    pid,
    ident: comm,
    inv: l.t >= c.startedAt ? current : 'earlier',
  }));
  const manager = [...(c.unit?.journal ?? []), ...runLines(unit)];
  for (const l of manager) entries.push({ ...l, pid: 1, ident: 'systemd', inv: '' });
  return entries
    .map((e, seq) => ({ ...e, seq }))
    .sort((p, q) => p.t - q.t || p.order - q.order || p.seq - q.seq)
    .map(({ t, m, pid: p, ident, inv }) => ({ t, m, pid: p, ident, inv }));
}
