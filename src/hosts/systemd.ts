/**
 * The systemd runtime: engines that run as units (Ollama's official Linux install is `ollama.service`; operators run
 * llama-server and vLLM the same way). State from `systemctl show`, lifecycle through `systemctl start|stop|restart`,
 * logs from the journal, and canary slots through a drop-in that replaces the unit's ExecStart=. It shells out to the
 * `systemctl` and `journalctl` binaries (not D-Bus) so the sandbox's shims drive exactly the same code.
 *
 * Every systemctl and journalctl run gets `TZ=UTC`: systemctl prints timestamps in local time with only the zone's
 * abbreviation ("Tue 2026-12-01 07:55:12 CET"), which cannot be turned back into an instant in general, and
 * journalctl reads `--since` in local time. With TZ=UTC both speak UTC.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ContainerState } from '../domain/health';
import { missingContainer, scanLogSignals } from './docker';
import { describeFailure, runTool, ToolError, type ToolResult } from './exec';
import { NoSuchContainerError, type EngineRuntime, type RecreateResult } from './runtime';

/** Options of SystemdCtl. */
export interface SystemdCtlOptions {
  /** systemctl binary; looked up on PATH at call time. */
  systemctl?: string;
  /** journalctl binary; looked up on PATH at call time. */
  journalctl?: string;
  /** Extra environment (TZ is always UTC, see the module comment). */
  env?: Record<string, string | undefined>;
  /** Per-command timeout (default 60 s; a job's own start and stop timeouts are added on top). */
  timeoutMs?: number;
  /**
   * Where unit drop-ins are written: `<dropInDir>/<unit>.d/gpuops-model.conf` (default /etc/systemd/system, which
   * systemd reads before the vendor directories).
   */
  dropInDir?: string;
}

/** The drop-in a canary slot writes: one file per unit, so writing it again replaces the previous one. */
export const DROP_IN_FILE = 'gpuops-model.conf';

/** What `inspect` asks `systemctl show` for (InvocationID scopes the log scan to the current run). */
export const SHOW_PROPERTIES = [
  'Id',
  'LoadState',
  'ActiveState',
  'SubState',
  'NRestarts',
  'ExecMainStatus',
  'ExecMainCode',
  'ExecMainPID',
  'ExecMainStartTimestamp',
  'ExecMainExitTimestamp',
  'Result',
  'FragmentPath',
  'ExecStart',
  'InvocationID',
] as const;

/** Unit type suffixes; a name without one is a service, as systemctl mangles it. */
const UNIT_SUFFIX = /\.(service|socket|target|device|mount|automount|swap|timer|path|slice|scope)$/;

/** The unit systemctl means by `name`: `ollama` → `ollama.service`. */
export function unitName(name: string): string {
  return UNIT_SUFFIX.test(name) && !name.startsWith('.') ? name : `${name}.service`;
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing `systemctl show`

/** One unit's block of `systemctl show`: every value of each property, in output order (ExecStart= may repeat). */
export type ShowBlock = Map<string, string[]>;

/**
 * Split `systemctl show` output into one block per unit. systemctl prints a blank line before every unit's block but
 * the first; values never hold a newline (systemctl prints "[unprintable]" instead), so blank lines only separate.
 */
export function parseShowBlocks(stdout: string): ShowBlock[] {
  const blocks: ShowBlock[] = [];
  for (const chunk of stdout.replace(/\r\n/g, '\n').split(/\n\n/)) {
    if (chunk.trim() === '') continue;
    const block: ShowBlock = new Map();
    for (const line of chunk.split('\n')) {
      const eq = line.indexOf('=');
      if (eq <= 0) continue;
      const key = line.slice(0, eq);
      block.set(key, [...(block.get(key) ?? []), line.slice(eq + 1)]);
    }
    blocks.push(block);
  }
  return blocks;
}

/** The (last) value of a property, or '' when the block lacks it. */
function prop(block: ShowBlock, key: string): string {
  return block.get(key)?.at(-1) ?? '';
}

/** One ExecStart= entry: the command as loaded, and the runtime status of its last run. */
export interface ExecCommand {
  /** The binary systemd executes (differs from argv[0] with the `@` prefix). */
  path: string;
  /**
   * Its argv, split at single spaces: systemctl joins the words with " " without quoting, so an argument that itself
   * contains a space cannot be told apart from two arguments (read back a unit's exact argv with busctl if needed).
   * `$VAR` references appear unexpanded; specifiers (`%n`) appear resolved.
   */
  argv: string[];
  /** The `-` prefix: a failure of the command is ignored. */
  ignoreErrors: boolean;
  pid: number;
  /** exited, killed, dumped, or null while it runs or never ran. */
  code: string | null;
  status: number;
}

const EXEC_HEAD = /^\{ path=(.*?) ; argv\[\]=(.*)$/s;
const EXEC_TAIL =
  / ; (?:ignore_errors=(yes|no)|flags=([^;]*?)) ; start_time=\[[^\]]*\] ; stop_time=\[[^\]]*\] ; pid=(\d+) ; code=(\S+) ; status=(-?\d+)(?:\/\S*)? \}$/;

/**
 * Parse one `ExecStart=` value: `{ path=/usr/local/bin/ollama ; argv[]=/usr/local/bin/ollama serve ; ignore_errors=no ;
 * start_time=[…] ; stop_time=[…] ; pid=1234 ; code=(null) ; status=0/0 }` (and the ExecStartEx `flags=` form).
 * The fixed tail is matched from the end, so an argument that contains " ; " does not confuse the split.
 */
export function parseExecCommand(value: string): ExecCommand | undefined {
  const tail = EXEC_TAIL.exec(value);
  if (!tail) return undefined;
  const head = EXEC_HEAD.exec(value.slice(0, tail.index));
  if (!head) return undefined;
  const argvText = head[2] ?? '';
  const flags = tail[2]?.split(' ') ?? [];
  const code = tail[4] ?? '(null)';
  return {
    path: head[1] ?? '',
    argv: argvText === '' || argvText === 'n/a' ? [] : argvText.split(' '),
    ignoreErrors: tail[1] === 'yes' || flags.includes('ignore-failure'),
    pid: Number(tail[3]),
    code: code === '(null)' ? null : code,
    status: Number(tail[5]),
  };
}

/**
 * A systemd timestamp as RFC 3339 (UTC), or undefined when unset ('' or "n/a", depending on the version) or in a
 * zone the abbreviation does not identify. "Tue 2026-12-01 07:55:12 UTC", "… 07:55:12.123456 UTC" (--timestamp=us),
 * "@1796111712" (--timestamp=unix) and numeric zones are understood.
 */
export function parseSystemdTimestamp(text: string): string | undefined {
  const t = text.trim();
  if (t === '' || t === 'n/a') return undefined;
  const unix = /^@(\d+)$/.exec(t);
  if (unix) return new Date(Number(unix[1]) * 1000).toISOString();
  const m = /^(?:[A-Z][a-z]{2} )?(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(\.\d{1,6})? (UTC|GMT|Z|[+-]\d\d:?\d\d)$/.exec(t);
  if (!m) return undefined;
  const zone =
    m[4] === 'UTC' || m[4] === 'GMT' || m[4] === 'Z' ? 'Z' : (m[4] ?? '').replace(/^([+-]\d\d)(\d\d)$/, '$1:$2');
  const ms = m[3] ? m[3].slice(0, 4).padEnd(4, '0') : '';
  const d = new Date(`${m[1]}T${m[2]}${ms}${zone}`);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

/** Exit codes of an engine process as docker would report them: the status, or 128 + the signal that killed it. */
function rawExitCode(code: string, status: number): number {
  // ExecMainCode= is the CLD_* number (1 exited, 2 killed, 3 dumped); accept the names ExecStart= uses too.
  if (code === '1' || code === 'exited') return status;
  if (code === '2' || code === '3' || code === 'killed' || code === 'dumped') return 128 + status;
  return 0;
}

/** Results systemd gives an engine that ended by exiting or by a signal: docker calls such a container exited. */
const EXITED_RESULTS = new Set(['exit-code', 'signal', 'core-dump', 'oom-kill']);

/** Exit codes that mean a deliberate stop (as src/domain/classify.ts reads them). */
const CLEAN_EXIT_CODES = new Set([0, 143]);

/**
 * One unit's block → ContainerState (logSignals left empty). ActiveState active/reloading/refreshing and
 * deactivating (still serving until it exits) → running; activating → restarting (including Restart='s
 * auto-restart wait); failed → exited when the engine exited or was killed (exit code from ExecMainCode/Status,
 * 128 + signal), dead for the other results (timeout, start-limit-hit, resources, …); inactive → exited. An
 * inactive unit is one systemd judged clean (Result=success: SuccessExitStatus= or a reset-failed forgave the exit),
 * so its exit code reads 0 unless the last one already was a clean-stop code. LoadState=not-found → missing.
 */
export function unitState(block: ShowBlock, name: string): ContainerState {
  const load = prop(block, 'LoadState');
  if (load === 'not-found' || load === '') return missingContainer(name);
  const active = prop(block, 'ActiveState');
  const result = prop(block, 'Result');
  const raw = rawExitCode(prop(block, 'ExecMainCode'), Number(prop(block, 'ExecMainStatus')) || 0);
  let status: ContainerState['status'];
  let running = false;
  let exitCode = raw;
  switch (active) {
    case 'active':
    case 'reloading':
    case 'refreshing':
    case 'deactivating':
      status = 'running';
      running = true;
      exitCode = 0;
      break;
    case 'activating':
      status = 'restarting';
      break;
    case 'failed':
      status = EXITED_RESULTS.has(result) ? 'exited' : 'dead';
      break;
    default:
      // inactive, maintenance, or a state a newer systemd invented: not running.
      status = 'exited';
      if (result === 'success' && !CLEAN_EXIT_CODES.has(raw)) exitCode = 0;
  }
  const startedAt = parseSystemdTimestamp(prop(block, 'ExecMainStartTimestamp'));
  const finishedAt = running ? undefined : parseSystemdTimestamp(prop(block, 'ExecMainExitTimestamp'));
  const fragment = prop(block, 'FragmentPath');
  return {
    name,
    exists: true,
    status,
    running,
    exitCode,
    oomKilled: result === 'oom-kill',
    restartCount: Number(prop(block, 'NRestarts')) || 0,
    health: 'none',
    ...(fragment ? { image: fragment } : {}),
    ...(startedAt ? { startedAt } : {}),
    ...(finishedAt ? { finishedAt } : {}),
    logSignals: [],
  };
}

/** What format_timespan() prints, per unit. */
const TIMESPAN_MS: Record<string, number> = {
  us: 0.001,
  ms: 1,
  s: 1000,
  min: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
  month: 2_629_800_000,
  y: 31_557_600_000,
};

/**
 * A systemd time span as `systemctl show` prints it ("1min 30s", "90s", "500ms", "0", "infinity") in ms: Infinity
 * for infinity, undefined when it does not parse.
 */
export function parseTimespan(text: string): number | undefined {
  const t = text.trim();
  if (t === 'infinity') return Infinity;
  if (t === '0') return 0;
  if (t === '') return undefined;
  let total = 0;
  for (const word of t.split(/\s+/)) {
    const m = /^(\d+(?:\.\d+)?)(us|ms|s|min|h|d|w|month|y)$/.exec(word);
    if (!m) return undefined;
    total += Number(m[1]) * (TIMESPAN_MS[m[2] ?? ''] ?? 0);
  }
  return total;
}

// ---------------------------------------------------------------------------------------------------------------
// Writing ExecStart= (systemd.service(5) "Command lines", systemd.syntax(7) "Quoting")

/** The C escapes systemd's unquoting understands, for the characters a double-quoted word must escape. */
const C_ESCAPES: Record<string, string> = { '\\': '\\\\', '"': '\\"', '\n': '\\n', '\t': '\\t', '\r': '\\r' };

/** Words that need no quoting. `$` is deliberately kept bare: a `$VAR` from the unit stays a variable reference. */
const SAFE_WORD = /^[A-Za-z0-9_@%+=:,./~^${}-]+$/;

/**
 * One word of an ExecStart= line, quoted so systemd reads it back as exactly `word`: `%` doubled (specifiers are
 * resolved before quotes are removed, quoted or not), a lone `;` escaped (it would separate commands), anything but
 * safe characters double-quoted with C escapes for backslash, quote and control characters.
 */
export function quoteExecWord(word: string): string {
  const w = word.replace(/%/g, '%%');
  if (w === ';') return '\\;';
  if (SAFE_WORD.test(w)) return w;
  let body = '';
  for (const c of w) {
    const code = c.charCodeAt(0);
    if (C_ESCAPES[c] !== undefined) body += C_ESCAPES[c];
    else if (code < 0x20 || code === 0x7f) body += `\\x${code.toString(16).padStart(2, '0')}`;
    else body += c;
  }
  return `"${body}"`;
}

/**
 * An ExecStart= value running `argv` with the binary `binary`: `-` when failures are ignored, `@` (then the binary
 * and argv[0] as two words) when the binary is not argv[0].
 */
export function execStartValue(argv: readonly string[], opts: { path?: string; ignoreErrors?: boolean } = {}): string {
  if (argv.length === 0) throw new Error('ExecStart= needs a command');
  const binary = opts.path ?? argv[0] ?? '';
  const words = binary === argv[0] ? [...argv] : [binary, ...argv];
  const prefix = `${opts.ignoreErrors ? '-' : ''}${binary === argv[0] ? '' : '@'}`;
  return words.map((w, i) => (i === 0 ? prefix + quoteExecWord(w) : quoteExecWord(w))).join(' ');
}

/** The drop-in that runs the unit with `argv` instead of its own ExecStart= (the empty assignment clears that). */
export function dropInText(argv: readonly string[], opts: { path?: string; ignoreErrors?: boolean } = {}): string {
  return (
    '# Written by gpuops for a canary slot: the engine with another command line. Delete this file and run\n' +
    "# `systemctl daemon-reload` to go back to the unit's own ExecStart=.\n" +
    `[Service]\nExecStart=\nExecStart=${execStartValue(argv, opts)}\n`
  );
}

// ---------------------------------------------------------------------------------------------------------------

/** "Failed to restart foo.service: Unit foo.service not found." (start/restart) or "… not loaded." (stop). */
function noSuchUnit(result: ToolResult): boolean {
  return result.exitCode === 5 && /Unit \S+ not (?:found|loaded)\./.test(result.stderr);
}

/** Older journalctl printed this for an empty result even with `-o cat` (newer: `-o cat` implies --quiet). */
const NO_ENTRIES = '-- No entries --';

/** A job that takes longer than this is not waited for any longer (TimeoutStopSec=infinity). */
const MAX_JOB_WAIT_MS = 15 * 60_000;

/**
 * systemctl and journalctl. Every command is an argument array; exit codes are checked and failures name the
 * command.
 */
export class SystemdCtl implements EngineRuntime {
  readonly kind = 'systemd' as const;
  private readonly systemctl: string;
  private readonly journalctl: string;
  private readonly env: Record<string, string | undefined>;
  private readonly timeoutMs: number;
  private readonly dropInDir: string;

  constructor(opts: SystemdCtlOptions = {}) {
    this.systemctl = opts.systemctl ?? 'systemctl';
    this.journalctl = opts.journalctl ?? 'journalctl';
    this.env = { ...opts.env, TZ: 'UTC' };
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    this.dropInDir = opts.dropInDir ?? '/etc/systemd/system';
  }

  private run(
    bin: string,
    args: string[],
    extra: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<ToolResult> {
    return runTool(bin, args, {
      env: this.env,
      timeoutMs: extra.timeoutMs ?? this.timeoutMs,
      ...(extra.signal ? { signal: extra.signal } : {}),
    });
  }

  /** `systemctl show -p … UNIT…`, one block per unit in the order asked. */
  private async show(units: readonly string[], props: readonly string[]): Promise<ShowBlock[]> {
    const result = await this.run(this.systemctl, ['show', '-p', props.join(','), '--', ...units]);
    if (result.exitCode !== 0) throw new ToolError(describeFailure(result), result);
    const blocks = parseShowBlocks(result.stdout);
    if (blocks.length !== units.length) {
      throw new ToolError(
        `${describeFailure(result)} (expected ${units.length} unit blocks, got ${blocks.length})`,
        result,
      );
    }
    return blocks;
  }

  /**
   * State of each named unit, in the order asked; unknown units come back as `exists: false`, `status: 'missing'`
   * (systemctl show exits 0 and says LoadState=not-found). With `logSignals`, the journal of the unit's current run
   * (its InvocationID, so a previous run's OOM does not haunt this one) is scanned for fault signatures.
   */
  async inspect(
    names: readonly string[],
    opts: { logSignals?: { tail?: number } | false } = {},
  ): Promise<ContainerState[]> {
    if (names.length === 0) return [];
    const units = [...new Set(names.map(unitName))];
    const blocks = await this.show(units, SHOW_PROPERTIES);
    const byUnit = new Map(units.map((u, i) => [u, blocks[i] ?? new Map<string, string[]>()]));
    const states = names.map((name) => unitState(byUnit.get(unitName(name)) ?? new Map(), name));
    if (!opts.logSignals) return states;
    const tail = opts.logSignals.tail ?? 200;
    return Promise.all(
      states.map(async (s, i) => {
        if (!s.exists) return s;
        const invocation = prop(byUnit.get(unitName(names[i] ?? '')) ?? new Map(), 'InvocationID');
        const lines = await (
          invocation
            ? this.journal([`_SYSTEMD_INVOCATION_ID=${invocation}`], tail)
            : this.logs(s.name, { tail, ...(s.startedAt ? { since: s.startedAt } : {}) })
        ).catch(() => []);
        return { ...s, logSignals: scanLogSignals(lines) };
      }),
    );
  }

  /** State of one unit (missing → `exists: false`). */
  async inspectOne(name: string): Promise<ContainerState> {
    const [state] = await this.inspect([name]);
    return state ?? missingContainer(name);
  }

  /**
   * `systemctl restart UNIT`, waiting for the job as `docker restart` does. `timeoutSec` is not applied: the unit's
   * own TimeoutStopSec= (90 s unless the unit sets it; Ollama's does not) decides when SIGKILL follows SIGTERM.
   * systemctl has no per-call override, and a drop-in that set one would change every other stop of the unit too
   * (shutdown included). The command's timeout covers the unit's stop and start timeouts.
   */
  async restart(name: string, opts: { timeoutSec?: number; signal?: AbortSignal } = {}): Promise<void> {
    await this.job('restart', name, opts.signal);
  }

  /** `systemctl start UNIT`; starting an active unit succeeds (systemd has nothing to do). */
  async start(name: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.job('start', name, opts.signal);
  }

  /** `systemctl stop UNIT`; stopping an inactive unit succeeds. `timeoutSec`: see {@link restart}. */
  async stop(name: string, opts: { timeoutSec?: number; signal?: AbortSignal } = {}): Promise<void> {
    await this.job('stop', name, opts.signal);
  }

  /**
   * Run a job and wait for it: without --no-block systemctl returns when the job has finished and exits non-zero
   * when it failed ("Job for … failed because …"), where --no-block would return once it is queued and report
   * success for a start that then fails. The unit's TimeoutStartUSec=/TimeoutStopUSec= (read first, which also
   * finds a missing unit without running the job) size the command timeout.
   */
  private async job(verb: 'start' | 'stop' | 'restart', name: string, signal?: AbortSignal): Promise<void> {
    const unit = unitName(name);
    const [block] = await this.show([unit], ['LoadState', 'TimeoutStartUSec', 'TimeoutStopUSec']);
    if (block && prop(block, 'LoadState') === 'not-found') throw new NoSuchContainerError(name, 'systemd');
    const span = (key: string): number =>
      Math.min(parseTimespan(prop(block ?? new Map(), key)) ?? 90_000, MAX_JOB_WAIT_MS);
    const jobMs = (verb === 'start' ? 0 : span('TimeoutStopUSec')) + (verb === 'stop' ? 0 : span('TimeoutStartUSec'));
    const result = await this.run(this.systemctl, [verb, '--', unit], {
      timeoutMs: this.timeoutMs + jobMs,
      ...(signal ? { signal } : {}),
    });
    if (result.exitCode === 0) return;
    if (noSuchUnit(result)) throw new NoSuchContainerError(name, 'systemd');
    throw new ToolError(describeFailure(result), result);
  }

  /** `journalctl ARGS… -n N --no-pager -o cat`: message lines, oldest first. */
  private async journal(args: string[], tail: number, signal?: AbortSignal): Promise<string[]> {
    const result = await this.run(
      this.journalctl,
      [...args, '-n', String(tail), '--no-pager', '-o', 'cat'],
      signal ? { signal } : {},
    );
    if (result.exitCode !== 0) throw new ToolError(describeFailure(result), result);
    return result.stdout === '' ? [] : result.stdout.split(/\r?\n/).filter((l) => l !== NO_ENTRIES);
  }

  /**
   * Recent journal lines of the unit: the engine's stdout and stderr (journald keeps both) and what systemd logged
   * about it. `since` (RFC 3339) is passed as "YYYY-MM-DD HH:MM:SS" in UTC, whole seconds: older journalctl refuses
   * the "T"/"Z" forms. A unit that never logged (or does not exist) has no lines; journalctl does not tell which.
   * Needs a user that may read the system journal (root, or the systemd-journal group): others get nothing.
   */
  async logs(name: string, opts: { tail?: number; since?: string; signal?: AbortSignal } = {}): Promise<string[]> {
    const args = ['-u', unitName(name)];
    if (opts.since) args.push('--since', journalSince(opts.since));
    return this.journal(args, opts.tail ?? 200, opts.signal);
  }

  /** Fault signatures in a unit's recent journal. */
  async logSignals(name: string, opts: { tail?: number; since?: string } = {}): Promise<string[]> {
    return scanLogSignals(await this.logs(name, opts));
  }

  /** The unit's loaded ExecStart= and what `command`/`recreate` need around it, or undefined when not-found. */
  private async execStart(
    name: string,
  ): Promise<{ unit: string; exec: ExecCommand; block: ShowBlock; running: boolean } | undefined> {
    const [block] = await this.show(
      [unitName(name)],
      ['Id', 'LoadState', 'ActiveState', 'ExecMainPID', 'FragmentPath', 'DropInPaths', 'ExecStart'],
    );
    if (!block || prop(block, 'LoadState') === 'not-found') return undefined;
    const entries = block.get('ExecStart') ?? [];
    if (entries.length !== 1) {
      throw new Error(
        `unit ${unitName(name)} has ${entries.length} ExecStart= commands; an engine unit runs exactly one`,
      );
    }
    const exec = parseExecCommand(entries[0] ?? '');
    if (!exec || exec.argv.length === 0) throw new Error(`cannot read ExecStart= of ${unitName(name)}: ${entries[0]}`);
    const running = ['active', 'reloading', 'refreshing', 'deactivating'].includes(prop(block, 'ActiveState'));
    return { unit: prop(block, 'Id') || unitName(name), exec, block, running };
  }

  /**
   * The unit's command line from ExecStart=: `entrypoint` is argv[0], `cmd` the arguments after it, `id` the main
   * PID. Arguments that contain spaces come back split (see {@link ExecCommand.argv}).
   */
  async command(
    name: string,
  ): Promise<{ cmd: string[]; entrypoint: string[]; running: boolean; id: string } | undefined> {
    const found = await this.execStart(name);
    if (!found) return undefined;
    const [argv0 = '', ...cmd] = found.exec.argv;
    return { cmd, entrypoint: [argv0], running: found.running, id: prop(found.block, 'ExecMainPID') };
  }

  /** The drop-in's path for a unit. */
  dropInPath(unit: string): string {
    return path.join(this.dropInDir, `${unit}.d`, DROP_IN_FILE);
  }

  /**
   * Run the unit with another command line (canary slots), everything else about it kept: write the drop-in
   * `<dropInDir>/<unit>.d/gpuops-model.conf` (`ExecStart=` cleared, then the new one), `systemctl daemon-reload`,
   * check that systemd now has that ExecStart= (a drop-in sorting after ours could override it), then
   * `systemctl restart`. With `start: false` the unit is stopped instead and its failed state reset, so a half that
   * crashed reads as a clean standby. If the restart fails, the previous drop-in (or none) is put back and the unit
   * restarted with it before the error is thrown, so the engine the config names never simply stays down.
   *
   * An enabled unit starts at boot with whatever ExecStart= its drop-ins say: a standby half comes back after a
   * reboot unless it is also disabled.
   */
  async recreate(
    name: string,
    rewrite: (cmd: readonly string[], entrypoint: readonly string[]) => string[],
    opts: { signal?: AbortSignal; start?: boolean } = {},
  ): Promise<RecreateResult> {
    const found = await this.execStart(name);
    if (!found) throw new NoSuchContainerError(name, 'systemd');
    const { unit, exec } = found;
    const [argv0 = '', ...previousCmd] = exec.argv;
    const cmd = rewrite(previousCmd, [argv0]);
    const argv = [argv0, ...cmd];
    const file = this.dropInPath(unit);
    const before = await readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    const keep = { ...(exec.path !== argv0 ? { path: exec.path } : {}), ignoreErrors: exec.ignoreErrors };
    await writeAtomic(file, dropInText(argv, keep));
    // Until the restart the old process runs on: putting the file back and reloading is then the whole undo.
    let restarted = false;
    const restore = async (): Promise<string> => {
      try {
        if (before === undefined) await rm(file, { force: true });
        else await writeAtomic(file, before);
        await this.daemonReload();
        if (restarted) await this.job('restart', unit);
        return 'the previous command line was restored';
      } catch (e) {
        return `the previous command line could not be restored: ${(e as Error).message}`;
      }
    };
    try {
      await this.daemonReload();
      const loaded = await this.execStart(unit);
      if (!loaded || loaded.exec.argv.join(' ') !== argv.join(' ')) {
        throw new Error(
          `${unit} does not run the command gpuops wrote to ${file}: a drop-in applied after it overrides ExecStart= ` +
            `(drop-ins: ${prop(loaded?.block ?? new Map(), 'DropInPaths') || 'none'})`,
        );
      }
      if (opts.start === false) {
        await this.job('stop', unit, opts.signal);
        await this.systemctlOk(['reset-failed', '--', unit]);
      } else {
        restarted = true;
        await this.job('restart', unit, opts.signal);
      }
    } catch (err) {
      const restored = await restore();
      if (err instanceof ToolError) throw new ToolError(`${err.message} (${restored})`, err.result);
      throw new Error(`${(err as Error).message} (${restored})`);
    }
    const [after] = await this.show([unit], ['ExecMainPID', 'FragmentPath']);
    return {
      id: prop(after ?? new Map(), 'ExecMainPID'),
      image: prop(after ?? new Map(), 'FragmentPath'),
      previousCmd,
      cmd,
    };
  }

  /** `systemctl daemon-reload`, which waits for generators: systemctl itself allows it twice the default timeout. */
  private async daemonReload(): Promise<void> {
    await this.systemctlOk(['daemon-reload'], Math.max(this.timeoutMs, 180_000));
  }

  private async systemctlOk(args: string[], timeoutMs?: number): Promise<void> {
    const result = await this.run(this.systemctl, args, timeoutMs !== undefined ? { timeoutMs } : {});
    if (result.exitCode !== 0) throw new ToolError(describeFailure(result), result);
  }
}

/** An RFC 3339 time as journalctl's `--since` takes it in every version: "YYYY-MM-DD HH:MM:SS" (UTC, whole seconds). */
export function journalSince(rfc3339: string): string {
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) throw new Error(`not an RFC 3339 time: ${rfc3339}`);
  return d.toISOString().slice(0, 19).replace('T', ' ');
}

/** tmp + rename, so systemd never reads a half-written drop-in. */
async function writeAtomic(file: string, text: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, text, { mode: 0o644 });
  await rename(tmp, file);
}
