#!/usr/bin/env node
// gpuops's process keeper: the parent of one engine process under `runtime: process`, like a tiny supervise(8).
// It outlives the node worker that started it (detached), so a worker killed mid-activity leaves the engine running,
// and it records what the worker cannot see for itself: the engine's PID, when it started, and how it ended (exit
// code or signal). Plain CommonJS with no dependencies, so it starts fast and needs no build.
//
//   keeper.cjs DIR NAME     reads DIR/NAME.spec.json { command, args, env, cwd }, writes DIR/NAME.state.json and
//                           DIR/NAME.log (stdout and stderr; the previous run's log is kept as NAME.log.1)
'use strict';
const { spawn } = require('node:child_process');
const os = require('node:os');
const fs = require('node:fs');
const path = require('node:path');

const [dir, name] = process.argv.slice(2);
if (!dir || !name) {
  process.stderr.write('usage: keeper.cjs DIR NAME\n');
  process.exit(2);
}
const file = (ext) => path.join(dir, `${name}.${ext}`);

function writeState(state) {
  const tmp = `${file('state.json')}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file('state.json'));
}

function readState() {
  try {
    return JSON.parse(fs.readFileSync(file('state.json'), 'utf8'));
  } catch {
    return {};
  }
}

const spec = JSON.parse(fs.readFileSync(file('spec.json'), 'utf8'));
const previous = readState();
if (fs.existsSync(file('log'))) fs.renameSync(file('log'), file('log.1'));
const log = fs.openSync(file('log'), 'a', 0o600);
const startedAt = new Date().toISOString();
// The engine leads a process group of its own, so a stop reaches its children too (Ollama's runners hold memory and
// ports of their own).
const child = spawn(spec.command, spec.args, {
  cwd: spec.cwd || dir,
  env: { ...process.env, ...spec.env },
  stdio: ['ignore', log, log],
  detached: true,
});

/** Start time of a process in clock ticks since boot (/proc/PID/stat field 22): with the PID, its identity. */
function startTicks(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return null;
  }
}

/** Another keeper has taken over this engine since (a start raced this one): its state is not ours to write. */
function superseded() {
  const now = readState();
  return now.keeperPid !== undefined && now.keeperPid !== process.pid;
}
const base = {
  name,
  keeperPid: process.pid,
  command: spec.command,
  args: spec.args,
  starts: (previous.starts || 0) + 1,
  startedAt,
};
child.on('error', (err) => {
  fs.writeSync(log, `gpuops keeper: could not start ${spec.command}: ${err.message}\n`);
  if (superseded()) process.exit(0);
  writeState({
    ...base,
    status: 'exited',
    pid: null,
    exitCode: 127,
    signal: null,
    finishedAt: new Date().toISOString(),
  });
  process.exit(0);
});
if (child.pid !== undefined)
  writeState({ ...base, status: 'running', pid: child.pid, pidStart: startTicks(child.pid) });
child.on('exit', (code, signal) => {
  // 128 + signal number, as a shell (and docker's ExitCode) reports a signalled process.
  const signo = signal ? os.constants.signals[signal] || 0 : 0;
  if (superseded()) process.exit(0);
  writeState({
    ...base,
    status: 'exited',
    pid: child.pid,
    pidStart: null,
    exitCode: code === null ? 128 + signo : code,
    signal,
    finishedAt: new Date().toISOString(),
  });
  process.exit(0);
});
// The keeper passes a stop request on: the runtime signals the engine directly, but a keeper told to stop (its own
// SIGTERM, e.g. a shutdown of the whole process group) must not leave the engine orphaned.
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(sig, () => {
    try {
      process.kill(-child.pid, sig);
    } catch {
      // already gone
    }
  });
}
