/**
 * The systemd runtime: parsing real-format `systemctl show` / `journalctl` output (test/fixtures/systemd, sources in
 * its README), and SystemdCtl driving the sandbox's systemctl and journalctl shims end to end.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { isCleanStop } from '../../src/domain/classify';
import { withModel } from '../../src/hosts/engines/model-args';
import { ToolError } from '../../src/hosts/exec';
import { NoSuchContainerError } from '../../src/hosts/runtime';
import {
  DROP_IN_FILE,
  dropInText,
  execStartValue,
  journalSince,
  parseExecCommand,
  parseShowBlocks,
  parseSystemdTimestamp,
  parseTimespan,
  quoteExecWord,
  SystemdCtl,
  unitName,
  unitState,
} from '../../src/hosts/systemd';
import * as sdlib from '../../src/sandbox/shims/lib/systemd';
import { injectFault } from '../../src/sandbox/faults';
import { SHIM_DIR } from '../../src/sandbox/node';
import { SEED_CONTAINERS, type EngineSim, type SandboxState } from '../../src/sandbox/state';
import type { SandboxStore } from '../../src/sandbox/state';
import { containerState } from '../helpers/hosts';
import { nodeConfig, seedStore, sleep, tempDir } from '../sandbox/helpers';
import { fakeTool, fixture } from './fakes';

const blocksOf = (file: string) => parseShowBlocks(fixture(`systemd/${file}`));

describe('parsing systemctl show', () => {
  it('reads a running unit: state, main PID start time in UTC, unit file as image', () => {
    const [block] = blocksOf('show-ollama-running.txt');
    expect(unitState(block!, 'ollama')).toEqual(
      containerState({ image: '/etc/systemd/system/ollama.service', startedAt: '2026-12-01T07:55:12.000Z' }),
    );
  });

  it('splits one block per unit at blank lines, in the order asked, and a not-found unit is missing', () => {
    const blocks = blocksOf('show-three-units.txt');
    expect(blocks).toHaveLength(3);
    const [llama, vllm, gone] = blocks.map((b, i) => unitState(b, ['llama-server', 'vllm', 'gone'][i]!));
    expect(llama).toMatchObject({
      status: 'exited',
      running: false,
      exitCode: 1,
      oomKilled: false,
      startedAt: '2026-12-01T08:01:40.000Z',
      finishedAt: '2026-12-01T08:01:47.000Z',
    });
    // Result=oom-kill: the main process was SIGKILLed (ExecMainCode=2 killed, status 9) → docker's 137.
    expect(vllm).toMatchObject({ status: 'exited', exitCode: 137, oomKilled: true });
    expect(gone).toEqual(containerState({ name: 'gone', exists: false, status: 'missing', running: false }));
    // The not-found block has no ExecStart= line at all (an empty exec list prints nothing, even with -p).
    expect(blocks[2]!.has('ExecStart')).toBe(false);
    expect(blocks[2]!.get('FragmentPath')).toEqual(['']);
  });

  it('reads Restart= waiting between attempts as restarting, with NRestarts as the restart count', () => {
    const [block] = blocksOf('show-restart-loop.txt');
    expect(unitState(block!, 'ollama')).toMatchObject({
      status: 'restarting',
      running: false,
      restartCount: 4,
      exitCode: 2,
    });
  });

  it('reads a stop that ran out of TimeoutStopSec= as dead (137), which is no clean stop', () => {
    const [block] = blocksOf('show-stop-timeout.txt');
    const s = unitState(block!, 'llama-server');
    expect(s).toMatchObject({ status: 'dead', exitCode: 137, oomKilled: false });
    expect(isCleanStop(s)).toBe(false);
  });

  it('reads a failed unit whose failure was reset as a clean stop (systemd judged it: Result=success)', () => {
    const [block] = blocksOf('show-reset-failed.txt');
    const s = unitState(block!, 'llama-server');
    expect(s).toMatchObject({ status: 'exited', exitCode: 0 });
    expect(isCleanStop(s)).toBe(true);
  });

  it('tolerates a full `systemctl show` dump, and keeps every ExecStart= entry', () => {
    const [block] = blocksOf('show-llama-full.txt');
    expect(unitState(block!, 'llama-server')).toMatchObject({ status: 'running', restartCount: 1 });
    expect(block!.get('ExecStart')).toHaveLength(1);
    const exec = parseExecCommand(block!.get('ExecStart')![0]!);
    // ExecStart=@/opt/…/llama-server llama-server …: the binary is not argv[0].
    expect(exec).toMatchObject({ path: '/opt/llama.cpp/build/bin/llama-server', pid: 6021, code: null, status: 0 });
    expect(exec!.argv.slice(0, 3)).toEqual(['llama-server', '--model', '/srv/models/qwen2.5-7b-instruct-q4_k_m.gguf']);
    expect(parseExecCommand(block!.get('ExecStartEx')![0]!)).toMatchObject({ ignoreErrors: false, pid: 6021 });
  });
});

describe('parsing ExecStart= entries, timestamps and time spans', () => {
  it('reads path, argv, the ignore flag, pid, code and status; " ; " inside an argument does not split it', () => {
    const v =
      '{ path=/bin/bash ; argv[]=/bin/bash -c exec llama-server ; echo done ; ignore_errors=yes ; ' +
      'start_time=[Tue 2026-12-01 10:02:00 UTC] ; stop_time=[Tue 2026-12-01 10:05:31 UTC] ; pid=5120 ; code=killed ; status=9/KILL }';
    expect(parseExecCommand(v)).toEqual({
      path: '/bin/bash',
      argv: ['/bin/bash', '-c', 'exec', 'llama-server', ';', 'echo', 'done'],
      ignoreErrors: true,
      pid: 5120,
      code: 'killed',
      status: 9,
    });
    const ex =
      '{ path=/usr/bin/ollama ; argv[]=/usr/bin/ollama serve ; flags=ignore-failure ; start_time=[n/a] ; ' +
      'stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }';
    expect(parseExecCommand(ex)).toMatchObject({ argv: ['/usr/bin/ollama', 'serve'], ignoreErrors: true, code: null });
    expect(parseExecCommand('{ path=/x ; argv[]=/x ; ignore_errors=no }')).toBeUndefined();
  });

  it('reads systemd timestamps in UTC and numeric zones; unset and abbreviated zones are undefined', () => {
    expect(parseSystemdTimestamp('Tue 2026-12-01 07:55:12 UTC')).toBe('2026-12-01T07:55:12.000Z');
    expect(parseSystemdTimestamp('Tue 2026-12-01 07:55:12.123456 UTC')).toBe('2026-12-01T07:55:12.123Z');
    expect(parseSystemdTimestamp('Tue 2026-12-01 08:55:12 +0100')).toBe('2026-12-01T07:55:12.000Z');
    expect(parseSystemdTimestamp('@1796111712')).toBe('2026-12-01T07:55:12.000Z');
    expect(parseSystemdTimestamp('n/a')).toBeUndefined();
    expect(parseSystemdTimestamp('')).toBeUndefined();
    // CET or CEST, IST (India or Ireland): an abbreviation is not an offset.
    expect(parseSystemdTimestamp('Tue 2026-12-01 08:55:12 CET')).toBeUndefined();
  });

  it('reads format_timespan() spans', () => {
    expect(parseTimespan('1min 30s')).toBe(90_000);
    expect(parseTimespan('100ms')).toBe(100);
    expect(parseTimespan('2h 5min 500ms')).toBe(7_500_500);
    expect(parseTimespan('0')).toBe(0);
    expect(parseTimespan('infinity')).toBe(Infinity);
    expect(parseTimespan('soon')).toBeUndefined();
  });

  it('gives journalctl --since the "YYYY-MM-DD HH:MM:SS" form, never RFC 3339 with T and Z', () => {
    expect(journalSince('2026-12-01T07:55:12.987654321Z')).toBe('2026-12-01 07:55:12');
    expect(journalSince('2026-12-01T08:55:12+01:00')).toBe('2026-12-01 07:55:12');
    expect(() => journalSince('yesterday')).toThrow(/RFC 3339/);
  });

  it('mangles names the way systemctl does', () => {
    expect(unitName('ollama')).toBe('ollama.service');
    expect(unitName('ollama.service')).toBe('ollama.service');
    expect(unitName('llama@0.service')).toBe('llama@0.service');
    expect(unitName('vllm.fast')).toBe('vllm.fast.service');
  });
});

describe('writing ExecStart= with systemd quoting', () => {
  it('leaves plain words bare, doubles %, escapes a lone ;, and double-quotes the rest', () => {
    expect(quoteExecWord('--model')).toBe('--model');
    expect(quoteExecWord('/models/qwen2.5-0.5b-instruct-q4_k_m.gguf')).toBe(
      '/models/qwen2.5-0.5b-instruct-q4_k_m.gguf',
    );
    expect(quoteExecWord('$OLLAMA_ARGS')).toBe('$OLLAMA_ARGS');
    expect(quoteExecWord('90%')).toBe('90%%');
    expect(quoteExecWord(';')).toBe('\\;');
    expect(quoteExecWord('my model')).toBe('"my model"');
    expect(quoteExecWord('say "hi"\\n')).toBe('"say \\"hi\\"\\\\n"');
    expect(quoteExecWord('')).toBe('""');
    expect(quoteExecWord('a\tb')).toBe('"a\\tb"');
  });

  it('keeps the - and @ prefixes of the unit it replaces', () => {
    expect(execStartValue(['llama-server', '-m', 'x.gguf'], { path: '/opt/bin/llama-server' })).toBe(
      '@/opt/bin/llama-server llama-server -m x.gguf',
    );
    expect(execStartValue(['/usr/local/bin/ollama', 'serve'], { ignoreErrors: true })).toBe(
      '-/usr/local/bin/ollama serve',
    );
  });

  it('reads back, by systemd rules, exactly the argv it was given', () => {
    const argvs = [
      ['/usr/local/bin/llama-server', '--alias', 'my 100% "model"', '--json-schema', '{"a": [1, 2]}', ';', ''],
      ['/opt/vllm/bin/vllm', 'serve', "O'Brien/Model-7B", '--chat-template', 'line1\nline2\tend\\'],
    ];
    for (const argv of argvs) {
      expect(sdlib.parseExecStart(execStartValue(argv), 'x.service')).toEqual([
        { path: argv[0], argv, ignoreErrors: false },
      ]);
    }
    expect(dropInText(['/usr/local/bin/ollama', 'serve'])).toMatch(
      /\n\[Service\]\nExecStart=\nExecStart=\/usr\/local\/bin\/ollama serve\n$/,
    );
  });
});

describe('SystemdCtl against a fake systemctl', () => {
  const job = (verb: string, result: { stderr?: string; exit?: number }) =>
    fakeTool('systemctl', [
      { args: ['show'], stdout: 'LoadState=loaded\nTimeoutStartUSec=1min 30s\nTimeoutStopUSec=1min 30s\n' },
      { args: [verb], ...result },
    ]);

  it('passes argument arrays: show -p …, then the job, unit names mangled', async () => {
    const fake = job('restart', {});
    await new SystemdCtl({ systemctl: fake.bin }).restart('ollama');
    expect(fake.calls()).toEqual([
      ['show', '-p', 'LoadState,TimeoutStartUSec,TimeoutStopUSec', '--', 'ollama.service'],
      ['restart', '--', 'ollama.service'],
    ]);
  });

  it('turns systemctl\'s exit 5 "Unit … not found." into NoSuchContainerError', async () => {
    const fake = job('restart', { stderr: fixture('systemd/restart-not-found.stderr.txt'), exit: 5 });
    const err = await new SystemdCtl({ systemctl: fake.bin }).restart('ollama').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoSuchContainerError);
    expect((err as Error).message).toBe('systemd has no unit named "ollama"');
    const stop = job('stop', { stderr: fixture('systemd/stop-not-loaded.stderr.txt'), exit: 5 });
    await expect(new SystemdCtl({ systemctl: stop.bin }).stop('ollama')).rejects.toBeInstanceOf(NoSuchContainerError);
  });

  it('throws a ToolError naming the command when the job fails', async () => {
    const fake = job('start', { stderr: fixture('systemd/start-job-failed.stderr.txt'), exit: 1 });
    const err = await new SystemdCtl({ systemctl: fake.bin }).start('llama-server').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ToolError);
    expect((err as Error).message).toContain('`' + `${fake.bin} start -- llama-server.service\` exited 1: Job for`);
  });

  it('inspects several units in one show call and maps blocks back by position', async () => {
    const fake = fakeTool('systemctl', [{ args: ['show'], stdout: fixture('systemd/show-three-units.txt') }]);
    const states = await new SystemdCtl({ systemctl: fake.bin }).inspect(['llama-server', 'vllm', 'gone']);
    expect(states.map((s) => [s.name, s.status])).toEqual([
      ['llama-server', 'exited'],
      ['vllm', 'exited'],
      ['gone', 'missing'],
    ]);
    expect(fake.calls()[0]!.slice(3)).toEqual(['--', 'llama-server.service', 'vllm.service', 'gone.service']);
  });

  it('fails when systemctl cannot reach the manager', async () => {
    const fake = fakeTool('systemctl', [{ stderr: fixture('systemd/bus-down.stderr.txt'), exit: 1 }]);
    await expect(new SystemdCtl({ systemctl: fake.bin }).inspect(['ollama'])).rejects.toThrow(
      /Failed to connect to bus|systemd as init system/,
    );
  });

  it('drops the "-- No entries --" line older journalctl prints even with -o cat', async () => {
    const fake = fakeTool('journalctl', [{ stdout: '-- No entries --\n' }]);
    expect(await new SystemdCtl({ journalctl: fake.bin }).logs('ollama', { tail: 5 })).toEqual([]);
    expect(fake.calls()).toEqual([['-u', 'ollama.service', '-n', '5', '--no-pager', '-o', 'cat']]);
    const oom = fakeTool('journalctl', [{ stdout: fixture('systemd/journal-ollama-oom.txt') }]);
    expect(await new SystemdCtl({ journalctl: oom.bin }).logSignals('ollama')).toEqual([
      'ggml_backend_cuda_buffer_type_alloc_buffer: allocating 2304.00 MiB on device 0: cudaMalloc failed: out of memory',
      'time=2026-12-01T08:03:44.918Z level=ERROR source=sched.go:455 msg="error loading llama server" error="llama runner process has terminated: CUDA error: out of memory"',
    ]);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Against the sandbox's shims

type RuntimeEngine = EngineSim & { runtime?: string };

describe('SystemdCtl against the sandbox systemctl and journalctl', () => {
  let dir: string;
  let cleanup: () => void;
  let store: SandboxStore;
  let ctl: SystemdCtl;
  let unitDir: string;

  beforeEach(async () => {
    ({ dir, cleanup } = tempDir('gpuops-systemd-'));
    const node = await nodeConfig('sd-node', [
      { type: 'ollama', name: 'ollama' },
      { type: 'llamacpp', name: 'llama' },
      { type: 'vllm', name: 'vllm-box' },
    ]);
    // Engine-load 0.5 s at timeScale 0.05: a model that does not exist fails within a test's patience.
    store = seedStore(dir, node, { bootSeconds: 0.1, timeScale: 0.05, engineLoadSeconds: 0.5 });
    store.update((s) => {
      for (const name of ['ollama', 'llama']) (s.engines[name] as RuntimeEngine).runtime = 'systemd';
    });
    unitDir = sdlib.defaultUnitDir(store.file);
    ctl = new SystemdCtl({
      systemctl: path.join(SHIM_DIR, 'systemctl'),
      journalctl: path.join(SHIM_DIR, 'journalctl'),
      // SystemdCtl must override this: systemctl prints local time with a zone abbreviation it could not read back.
      env: { GPUOPS_SANDBOX_STATE: store.file, TZ: 'Asia/Tokyo' },
      dropInDir: unitDir,
    });
  });

  afterEach(() => cleanup());

  const unit = (state: SandboxState, name: string) => state.containers[name]!;

  it('inspects units in the order asked; a docker-run engine and an unknown name are missing units', async () => {
    const before = Date.now();
    const states = await ctl.inspect(['llama', 'ollama', 'vllm-box', 'ghost', 'ollama']);
    expect(states.map((s) => [s.name, s.status, s.exists])).toEqual([
      ['llama', 'running', true],
      ['ollama', 'running', true],
      ['vllm-box', 'missing', false],
      ['ghost', 'missing', false],
      ['ollama', 'running', true],
    ]);
    const started = Date.parse(states[1]!.startedAt!);
    expect(Math.abs(started - before)).toBeLessThan(5_000);
    expect(states[1]!.image).toBe(path.join(unitDir, 'ollama.service'));
  });

  it('restart clears an engine-hang, as docker restart does: a new process, the fault gone', async () => {
    injectFault(store, 'engine-hang', { engine: 'llama' });
    const pid = unit(store.read(), 'llama').pid;
    await ctl.restart('llama', { timeoutSec: 10 });
    const s = store.read();
    expect(s.faults).toEqual([]);
    expect(unit(s, 'llama')).toMatchObject({ status: 'running', faults: { hang: false, cudaOom: false } });
    expect(unit(s, 'llama').pid).not.toBe(pid);
    // The hung process ignored SIGTERM until TimeoutStopSec= ran out: systemd logged the SIGKILL.
    const lines = await ctl.logs('llama', { tail: 20 });
    expect(lines).toContain("llama.service: State 'stop-sigterm' timed out. Killing.");
    expect(lines.at(-1)).toMatch(/server is listening|load_model/);
  });

  it('stop leaves a clean stop, start runs it again; a hung engine stopped is not clean until recreated stopped', async () => {
    await ctl.stop('ollama');
    const stopped = await ctl.inspectOne('ollama');
    expect(stopped).toMatchObject({ status: 'exited', running: false, exitCode: 0 });
    expect(stopped.finishedAt).toBeDefined();
    expect(isCleanStop(stopped)).toBe(true);
    await ctl.start('ollama');
    expect(await ctl.inspectOne('ollama')).toMatchObject({ status: 'running', running: true });

    injectFault(store, 'engine-hang', { engine: 'llama' });
    await ctl.stop('llama');
    const killed = await ctl.inspectOne('llama');
    expect(killed).toMatchObject({ status: 'dead', exitCode: 137 });
    expect(isCleanStop(killed)).toBe(false);
    // What standbyEngine does with such a half: recreate it unstarted, which resets the failure.
    const r = await ctl.recreate('llama', (cmd) => [...cmd], { start: false });
    expect(r.cmd).toEqual(r.previousCmd);
    const standby = await ctl.inspectOne('llama');
    expect(standby).toMatchObject({ status: 'exited', running: false });
    expect(isCleanStop(standby)).toBe(true);
  });

  it('scans only the current run for fault signatures, even within the second of a restart', async () => {
    injectFault(store, 'cuda-oom', { engine: 'ollama' });
    const [sick] = await ctl.inspect(['ollama'], { logSignals: {} });
    expect(sick!.logSignals.join('\n')).toMatch(/cudaMalloc failed: out of memory/);
    await ctl.restart('ollama');
    const [well] = await ctl.inspect(['ollama'], { logSignals: {} });
    expect(well!.logSignals).toEqual([]);
    // …while the unit's journal still has the old lines.
    expect((await ctl.logs('ollama')).join('\n')).toMatch(/CUDA error: out of memory/);
  });

  it('logs honours tail and since', async () => {
    const all = await ctl.logs('ollama');
    expect(all[0]).toBe('Started ollama.service - Ollama Service.');
    expect(all.some((l) => l.includes('msg="Listening on [::]:11434 (version 0.17.4)"'))).toBe(true);
    expect(await ctl.logs('ollama', { tail: 2 })).toEqual(all.slice(-2));
    expect(await ctl.logs('ollama', { since: new Date(Date.now() + 60_000).toISOString() })).toEqual([]);
    expect(await ctl.logs('ghost')).toEqual([]);
  });

  it('a missing unit: lifecycle throws NoSuchContainerError, command is undefined', async () => {
    await expect(ctl.restart('ghost')).rejects.toBeInstanceOf(NoSuchContainerError);
    await expect(ctl.stop('vllm-box')).rejects.toThrow('systemd has no unit named "vllm-box"');
    await expect(ctl.recreate('ghost', (c) => [...c])).rejects.toBeInstanceOf(NoSuchContainerError);
    expect(await ctl.command('ghost')).toBeUndefined();
  });

  it('command splits ExecStart= into the binary and its arguments', async () => {
    const c = await ctl.command('llama');
    expect(c).toEqual({
      entrypoint: ['/usr/local/bin/llama-server'],
      cmd: SEED_CONTAINERS.llamacpp.cmd,
      running: true,
      id: String(unit(store.read(), 'llama').pid),
    });
  });

  it('recreate writes the drop-in, reloads, restarts; the engine serves the new model; a rollback restores it', async () => {
    const model = { model: 'qwen2.5-0.5b-instruct-good-q4_k_m.gguf' };
    const r = await ctl.recreate('llama', (cmd, entrypoint) => withModel('llamacpp', cmd, model, entrypoint).cmd);
    expect(r.previousCmd[1]).toBe('/models/qwen2.5-0.5b-instruct-q4_k_m.gguf');
    expect(r.cmd).toContain('/models/qwen2.5-0.5b-instruct-good-q4_k_m.gguf');
    expect(r.image).toBe(path.join(unitDir, 'llama.service'));
    const s = store.read();
    expect(r.id).toBe(String(unit(s, 'llama').pid));
    expect(s.engines.llama!.models).toEqual(['qwen2.5-0.5b-instruct-good-q4_k_m.gguf']);
    const file = path.join(unitDir, 'llama.service.d', DROP_IN_FILE);
    expect(readFileSync(file, 'utf8')).toContain(
      `ExecStart=\nExecStart=/usr/local/bin/llama-server ${r.cmd.join(' ')}\n`,
    );
    expect((await ctl.command('llama'))!.cmd).toEqual(r.cmd);

    const back = await ctl.recreate('llama', () => r.previousCmd);
    expect(back.cmd).toEqual(r.previousCmd);
    expect(store.read().engines.llama!.models).toEqual(['qwen2.5-0.5b-instruct-q4_k_m.gguf']);
  });

  it('recreate with a model the engine cannot load: the unit starts, then fails with the engine error', async () => {
    const model = { model: 'no-such-model-q4_k_m.gguf' };
    await ctl.recreate('llama', (cmd, entrypoint) => withModel('llamacpp', cmd, model, entrypoint).cmd);
    let s = await ctl.inspectOne('llama');
    for (let i = 0; i < 50 && s.running; i++) {
      await sleep(50);
      s = await ctl.inspectOne('llama');
    }
    expect(s).toMatchObject({ status: 'exited', exitCode: 1 });
    expect(await ctl.logs('llama', { tail: 3 })).toEqual([
      'main: exiting due to model loading error',
      'llama.service: Main process exited, code=exited, status=1/FAILURE',
      "llama.service: Failed with result 'exit-code'.",
    ]);
  });

  it('recreate refuses, and undoes its drop-in, when a later drop-in overrides ExecStart=', async () => {
    const other = path.join(unitDir, 'llama.service.d', 'zz-override.conf');
    mkdirSync(path.dirname(other), { recursive: true });
    writeFileSync(other, '[Service]\nExecStart=\nExecStart=/usr/local/bin/llama-server -m /models/pinned.gguf\n');
    const pid = unit(store.read(), 'llama').pid;
    await expect(ctl.recreate('llama', (cmd) => [...cmd, '--verbose'])).rejects.toThrow(
      /a drop-in applied after it overrides ExecStart=.*zz-override\.conf.*\(the previous command line was restored\)/,
    );
    expect(existsSync(path.join(unitDir, 'llama.service.d', DROP_IN_FILE))).toBe(false);
    expect(unit(store.read(), 'llama')).toMatchObject({ status: 'running', pid });
  });

  it('quotes arguments so systemd loads exactly the argv asked for', async () => {
    const odd = ['--alias', 'my 100% "model"', '--chat-template', "{{ 'a' ; b }}"];
    await ctl.recreate('llama', (cmd) => [...cmd, ...odd]);
    const s = store.read();
    const loaded = sdlib.loadedExec(s.engines.llama!, unit(s, 'llama'));
    expect(loaded).toHaveLength(1);
    expect(loaded[0]!.argv.slice(-odd.length)).toEqual(odd);
  });
});
