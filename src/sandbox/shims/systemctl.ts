/**
 * `systemctl` for the sandbox node: show, start, stop, restart, daemon-reload, reset-failed and is-active against the
 * node's simulated units ($GPUOPS_SANDBOX_STATE; what a unit is: lib/systemd.ts), printing what systemd prints:
 * `show` blocks separated by a blank line, properties in D-Bus order whatever order -p names them, exit 0 with
 * LoadState=not-found for a missing unit; `start`/`restart` of a missing unit exit 5 with "Unit X not found.", `stop`
 * with "Unit X not loaded.". Unset timestamps print "n/a", as systemd 249 and 252 print them (current systemd prints
 * them empty; SystemdCtl reads both). Jobs finish before the reply, as systemctl waits for them without --no-block.
 */
import type { SandboxState } from '../state';
import * as core from './lib/core';
import { applyLifecycle } from './lib/lifecycle';
import { err, loadState, out } from './lib/shim';
import * as sd from './lib/systemd';

/** EXIT_NOTINSTALLED (LSB): what systemctl exits with when a job names a unit systemd does not know. */
const EXIT_NO_SUCH_UNIT = 5;

const FLAGS = new Set(['--value', '-a', '--all', '--no-pager', '--no-block', '-q', '--quiet', '--no-ask-password']);
const IGNORED = new Set(['--system', '--no-legend', '--no-warn', '-l', '--full', '--plain']);

interface ShowOptions {
  props: string[];
  valueOnly: boolean;
  all: boolean;
}

/** getopt-style parsing: options anywhere, `-p A,B`, `-pA`, `--property=A`, repeated -p; then the verb and units. */
function parseArgv(
  argv: string[],
): { error: string } | { opts: ShowOptions; verb: string | undefined; units: string[] } {
  const opts: ShowOptions = { props: [], valueOnly: false, all: false };
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const name = eq > 0 ? a.slice(0, eq) : a;
    const value = (): string | undefined => (eq > 0 ? a.slice(eq + 1) : argv[++i]);
    if (a === '--') {
      args.push(...argv.slice(i + 1));
      break;
    } else if (name === '-p' || name === '--property' || name === '-P') {
      const v = value();
      if (v === undefined) return { error: `systemctl: option requires an argument -- '${name.replace(/^-+/, '')}'` };
      opts.props.push(...v.split(',').filter((p) => p !== ''));
      if (name === '-P') opts.valueOnly = true;
    } else if (/^-[pP]./.test(a)) {
      opts.props.push(...a.slice(2).split(','));
      if (a[1] === 'P') opts.valueOnly = true;
    } else if (FLAGS.has(name)) {
      if (name === '--value') opts.valueOnly = true;
      if (name === '-a' || name === '--all') opts.all = true;
    } else if (IGNORED.has(name)) {
      continue;
    } else if (name === '--user') {
      return { error: 'gpuops sandbox shim: systemctl --user is not simulated (engines are system units)' };
    } else if (a.startsWith('--')) {
      return { error: `systemctl: unrecognized option '${name}'` };
    } else if (a.startsWith('-') && a.length > 1) {
      return { error: `systemctl: invalid option -- '${a[1]}'` };
    } else {
      args.push(a);
    }
  }
  return { opts, verb: args[0], units: args.slice(1) };
}

/** The guest is not up: nothing answers on the system bus. */
function busDown(state: SandboxState): boolean {
  if (state.vm.phase === 'up') return false;
  err(
    "System has not been booted with systemd as init system (PID 1). Can't operate.\nFailed to connect to bus: Host is down\n",
  );
  process.exitCode = 1;
  return true;
}

/** `systemctl show [-p ...] [--value] UNIT...` */
function cmdShow(opts: ShowOptions, names: string[]): void {
  const { file, state } = loadState('systemctl');
  if (busDown(state)) return;
  if (names.length === 0) {
    err('gpuops sandbox shim: systemctl show of the manager itself is not simulated; name a unit\n');
    process.exitCode = 1;
    return;
  }
  const dir = sd.unitDir(file);
  core.applyLoadFailures(state, Date.now());
  const wanted = opts.props.length > 0 ? new Set(opts.props) : null;
  // -p shows a property even when it is empty; so does --all. ExecStart= prints one line per command, none if none.
  const showEmpty = wanted !== null || opts.all;
  const blocks = names.map((name) => {
    const id = sd.unitName(name);
    const unit = sd.findUnit(state, id);
    const lines: string[] = [];
    for (const [key, v] of unit ? sd.unitProperties(state, unit, dir) : sd.notFoundProperties(id)) {
      if (wanted && !wanted.has(key)) continue;
      for (const value of typeof v === 'string' ? [v] : v) {
        if (value === '' && !showEmpty) continue;
        lines.push(opts.valueOnly ? value : `${key}=${value}`);
      }
    }
    return lines.map((l) => `${l}\n`).join('');
  });
  out(blocks.join('\n'));
}

/** `systemctl start|stop|restart UNIT...`: each job is waited for, as systemctl does without --no-block. */
function cmdJob(verb: 'start' | 'stop' | 'restart', names: string[]): void {
  const { file, state } = loadState('systemctl');
  if (busDown(state)) return;
  if (names.length === 0) {
    err(`Too few arguments.\n`);
    process.exitCode = 1;
    return;
  }
  const dir = sd.unitDir(file);
  for (const name of names) {
    const id = sd.unitName(name);
    const fresh = core.readState(file);
    const unit = sd.findUnit(fresh, id);
    if (!unit) {
      err(`Failed to ${verb} ${id}: Unit ${id} ${verb === 'stop' ? 'not loaded' : 'not found'}.\n`);
      if (!process.exitCode) process.exitCode = EXIT_NO_SUCH_UNIT;
      continue;
    }
    if (verb !== 'stop' && sd.loadState(unit) !== 'loaded') {
      err(`Failed to ${verb} ${id}: Unit ${id} has a bad unit file setting.\n`);
      if (!process.exitCode) process.exitCode = 1;
      continue;
    }
    if (sd.needsReload(unit, dir)) {
      err(
        `Warning: The unit file, source configuration file or drop-ins of ${id} changed on disk. Run 'systemctl daemon-reload' to reload units.\n`,
      );
    }
    // The unit's TimeoutStopSec= is the grace a hung engine gets before SIGKILL; an enabled unit is started again at
    // the next boot whatever stopped it, so a stop does not persist.
    applyLifecycle(file, fresh, unit.c.name, verb, {
      graceSec: sd.TIMEOUT_STOP_SEC,
      persistStop: false,
      beforeStart: (s, c) => sd.applyLoadedExec(s, c),
    });
  }
}

/** `systemctl daemon-reload`: every unit loads its drop-ins as they are on disk now. */
function cmdDaemonReload(): void {
  const { file, state } = loadState('systemctl');
  if (busDown(state)) return;
  const dir = sd.unitDir(file);
  core.updateState(file, (s, now) => {
    for (const unit of sd.allUnits(s)) sd.reloadUnit(unit, dir, now);
  });
}

/** `systemctl reset-failed [UNIT...]`: a failed unit reads inactive (Result=success) until it fails again. */
function cmdResetFailed(names: string[]): void {
  const { file, state } = loadState('systemctl');
  if (busDown(state)) return;
  core.updateState(file, (s, now) => {
    const units = names.length === 0 ? sd.allUnits(s) : names.map((n) => sd.findUnit(s, n) ?? sd.unitName(n));
    for (const unit of units) {
      if (typeof unit === 'string') {
        err(`Failed to reset failed state of unit ${unit}: Unit ${unit} not loaded.\n`);
        process.exitCode = 1;
        continue;
      }
      (unit.c.unit ??= {}).resetFailedAt = now;
    }
  });
}

/** `systemctl is-active UNIT...`: the ActiveState of each; exit 0 when one is active, else 3. */
function cmdIsActive(names: string[]): void {
  const { state } = loadState('systemctl');
  if (busDown(state)) return;
  core.applyLoadFailures(state, Date.now());
  let any = false;
  for (const name of names) {
    const unit = sd.findUnit(state, name);
    const active = unit ? sd.activeState(unit.c).active : 'inactive';
    if (active === 'active') any = true;
    out(`${active}\n`);
  }
  process.exitCode = any ? 0 : 3;
}

function main(argv: string[]): void {
  const parsed = parseArgv(argv);
  if ('error' in parsed) {
    err(`${parsed.error}\n`);
    process.exitCode = 1;
    return;
  }
  const { opts, verb, units } = parsed;
  switch (verb) {
    case 'show':
      return cmdShow(opts, units);
    case 'start':
    case 'stop':
    case 'restart':
      return cmdJob(verb, units);
    case 'daemon-reload':
      return cmdDaemonReload();
    case 'reset-failed':
      return cmdResetFailed(units);
    case 'is-active':
      return cmdIsActive(units);
    case undefined:
      err('gpuops sandbox shim: systemctl list-units is not simulated; name a verb (show, start, stop, restart, …)\n');
      process.exitCode = 1;
      return;
    default:
      err(`Unknown command verb '${verb}'.\n`);
      process.exitCode = 1;
  }
}

main(process.argv.slice(2));
