/**
 * The systemctl and journalctl shims print what systemd prints (formats and sources: test/fixtures/systemd/README.md),
 * over the same engine records as the docker shim.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { runTool, type ToolResult } from '../../src/hosts/exec';
import { defaultUnitDir } from '../../src/sandbox/shims/lib/systemd';
import { injectFault } from '../../src/sandbox/faults';
import { SHIM_DIR } from '../../src/sandbox/node';
import type { EngineSim, SandboxStore } from '../../src/sandbox/state';
import { fixture } from '../hosts/fakes';
import { nodeConfig, seedStore, tempDir } from './helpers';

let cleanup: () => void;
let store: SandboxStore;
let env: Record<string, string>;
let unitDir: string;

beforeEach(async () => {
  let dir: string;
  ({ dir, cleanup } = tempDir());
  const node = await nodeConfig('unit-node', [
    { type: 'ollama', name: 'ollama' },
    { type: 'llamacpp', name: 'llama' },
    { type: 'vllm', name: 'vllm-box' },
  ]);
  store = seedStore(dir, node, { bootSeconds: 0.1, timeScale: 0.02 });
  // The engines whose config says `runtime: systemd`; vllm-box stays a docker container.
  store.update((s) => {
    for (const name of ['ollama', 'llama']) (s.engines[name] as EngineSim & { runtime?: string }).runtime = 'systemd';
  });
  unitDir = defaultUnitDir(store.file);
  env = { GPUOPS_SANDBOX_STATE: store.file, TZ: 'UTC' };
});

afterEach(() => cleanup());

const systemctl = (args: string[], extra: Record<string, string> = {}): Promise<ToolResult> =>
  runTool(path.join(SHIM_DIR, 'systemctl'), args, { env: { ...env, ...extra } });
const journalctl = (args: string[], extra: Record<string, string> = {}): Promise<ToolResult> =>
  runTool(path.join(SHIM_DIR, 'journalctl'), args, { env: { ...env, ...extra } });

/** The -p list gpuops's SystemdCtl passes, deliberately in another order than systemd prints. */
const PROPS =
  'FragmentPath,SubState,ActiveState,LoadState,Id,ExecStart,ExecMainStatus,ExecMainCode,ExecMainPID,' +
  'ExecMainExitTimestamp,ExecMainStartTimestamp,NRestarts,Result';

describe('systemctl show', () => {
  test('prints properties in D-Bus order, whatever order -p names them; a missing unit exits 0 as not-found', async () => {
    const r = await systemctl(['show', '-p', PROPS, 'ghost.service']);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(
      [
        'Result=success',
        'NRestarts=0',
        'ExecMainStartTimestamp=n/a',
        'ExecMainExitTimestamp=n/a',
        'ExecMainPID=0',
        'ExecMainCode=0',
        'ExecMainStatus=0',
        // No ExecStart= line: an empty command list prints nothing, even when asked for.
        'Id=ghost.service',
        'LoadState=not-found',
        'ActiveState=inactive',
        'SubState=dead',
        'FragmentPath=',
      ].join('\n'),
    );
  });

  test('separates units with one blank line; a running unit shows its ExecStart= with its process', async () => {
    const r = await systemctl(['show', '-p', PROPS, 'ollama', 'ghost']);
    const blocks = r.stdout.split('\n\n');
    expect(blocks).toHaveLength(2);
    const pid = store.read().containers.ollama!.pid;
    expect(blocks[0]).toMatch(
      new RegExp(
        String.raw`^ExecStart=\{ path=/usr/local/bin/ollama ; argv\[\]=/usr/local/bin/ollama serve ; ignore_errors=no ; ` +
          String.raw`start_time=\[\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\] ; stop_time=\[n/a\] ; pid=${pid} ; ` +
          String.raw`code=\(null\) ; status=0/0 \}$`,
        'm',
      ),
    );
    expect(blocks[0]).toContain(`\nExecMainPID=${pid}\nExecMainCode=0\nExecMainStatus=0\n`);
    expect(blocks[0]).toMatch(/^ExecMainStartTimestamp=\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/m);
    expect(blocks[0]).toContain(
      `Id=ollama.service\nLoadState=loaded\nActiveState=active\nSubState=running\nFragmentPath=${unitDir}/ollama.service`,
    );
  });

  test('prints times in the local zone: TZ decides', async () => {
    const tokyo = await systemctl(['show', '-P', 'ExecMainStartTimestamp', 'ollama'], { TZ: 'Asia/Tokyo' });
    const utc = await systemctl(['show', '-P', 'ExecMainStartTimestamp', 'ollama']);
    expect(utc.stdout).toMatch(/ UTC$/);
    expect(tokyo.stdout).not.toMatch(/ UTC$/);
  });

  test('--value prints values only; without -p empty properties are left out', async () => {
    const v = await systemctl(['show', '--value', '-p', 'Id', '-p', 'LoadState', 'llama']);
    expect(v.stdout).toBe('llama.service\nloaded');
    const all = await systemctl(['show', 'ghost']);
    expect(all.stdout).not.toMatch(/^FragmentPath=/m);
    expect(all.stdout).toContain('LoadError=org.freedesktop.systemd1.NoSuchUnit "Unit ghost.service not found."');
    expect(all.stdout).toContain('ExecMainExitTimestamp=n/a');
  });

  test('an engine that runs in a docker container is no unit', async () => {
    expect((await systemctl(['show', '-P', 'LoadState', 'vllm-box'])).stdout).toBe('not-found');
  });
});

describe('systemctl start / stop / restart', () => {
  test('a missing unit: restart and start exit 5 "not found", stop exits 5 "not loaded"', async () => {
    const restart = await systemctl(['restart', 'ollama-gone']);
    expect(restart).toMatchObject({ exitCode: 5, stdout: '' });
    expect(restart.stderr).toBe(
      fixture('systemd/restart-not-found.stderr.txt')
        .replace(/ollama\.service/g, 'ollama-gone.service')
        .trimEnd(),
    );
    const stop = await systemctl(['stop', '--', 'ollama-gone.service']);
    expect(stop.exitCode).toBe(5);
    expect(stop.stderr).toBe('Failed to stop ollama-gone.service: Unit ollama-gone.service not loaded.');
    expect((await systemctl(['start', 'vllm-box'])).exitCode).toBe(5);
  });

  test('restart prints nothing, starts a new process and clears an engine-hang', async () => {
    injectFault(store, 'engine-hang', { engine: 'ollama' });
    const before = store.read().containers.ollama!;
    const r = await systemctl(['restart', 'ollama.service']);
    expect(r).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });
    const after = store.read();
    expect(after.containers.ollama!.pid).not.toBe(before.pid);
    expect(after.containers.ollama!.faults.hang).toBe(false);
    expect(after.faults).toEqual([]);
  });

  test('a hung engine stopped ends failed with Result=timeout and code=killed status=9/KILL', async () => {
    injectFault(store, 'engine-hang', { engine: 'llama' });
    expect((await systemctl(['stop', 'llama'])).exitCode).toBe(0);
    const r = await systemctl(['show', '-p', 'ActiveState,Result,ExecMainCode,ExecMainStatus,ExecStart', 'llama']);
    expect(r.stdout).toMatch(
      /^Result=timeout\nExecMainCode=2\nExecMainStatus=9\nExecStart=\{ .* ; code=killed ; status=9\/KILL \}\nActiveState=failed$/,
    );
    expect((await systemctl(['is-active', 'llama'])).stdout).toBe('failed');
    expect((await systemctl(['reset-failed', 'llama'])).exitCode).toBe(0);
    expect((await systemctl(['show', '-P', 'ActiveState', 'llama'])).stdout).toBe('inactive');
    const missing = await systemctl(['reset-failed', 'ghost']);
    expect(missing).toMatchObject({
      exitCode: 1,
      stderr: 'Failed to reset failed state of unit ghost.service: Unit ghost.service not loaded.',
    });
  });

  test('a drop-in takes effect at daemon-reload; before it, jobs warn and run the old command line', async () => {
    const file = path.join(unitDir, 'llama.service.d', 'gpuops-model.conf');
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(
      file,
      '[Service]\nExecStart=\nExecStart=/usr/local/bin/llama-server -m /models/qwen2.5-0.5b-instruct-good-q4_k_m.gguf --port 8080\n',
    );
    expect((await systemctl(['show', '-P', 'NeedDaemonReload', 'llama'])).stdout).toBe('yes');
    const early = await systemctl(['restart', 'llama']);
    expect(early.exitCode).toBe(0);
    expect(early.stderr).toBe(
      "Warning: The unit file, source configuration file or drop-ins of llama.service changed on disk. Run 'systemctl daemon-reload' to reload units.",
    );
    expect(store.read().engines.llama!.models).toEqual(['qwen2.5-0.5b-instruct-q4_k_m.gguf']);

    expect(await systemctl(['daemon-reload'])).toMatchObject({ exitCode: 0, stdout: '', stderr: '' });
    const loaded = await systemctl(['show', '-p', 'ExecStart,DropInPaths,NeedDaemonReload', 'llama']);
    // The new command object has no runtime status until it runs.
    expect(loaded.stdout).toBe(
      '{ path=/usr/local/bin/llama-server ; argv[]=/usr/local/bin/llama-server -m /models/qwen2.5-0.5b-instruct-good-q4_k_m.gguf --port 8080 ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }'
        .replace(/^/, 'ExecStart=')
        .concat(`\nDropInPaths=${file}\nNeedDaemonReload=no`),
    );
    expect((await systemctl(['restart', 'llama'])).stderr).toBe('');
    expect(store.read().engines.llama!.models).toEqual(['qwen2.5-0.5b-instruct-good-q4_k_m.gguf']);
  });

  test('unknown verbs and options fail like systemctl', async () => {
    expect(await systemctl(['frobnicate', 'llama'])).toMatchObject({
      exitCode: 1,
      stderr: "Unknown command verb 'frobnicate'.",
    });
    expect(await systemctl(['show', '--frob', 'llama'])).toMatchObject({
      exitCode: 1,
      stderr: "systemctl: unrecognized option '--frob'",
    });
  });

  test('with the guest down nothing answers on the bus', async () => {
    store.update((s) => {
      s.vm.phase = 'off';
      s.vm.status = 'stopped';
    });
    const r = await systemctl(['show', '-p', 'Id', 'ollama']);
    expect(r.exitCode).toBe(1);
    expect(`${r.stderr}\n`).toBe(fixture('systemd/bus-down.stderr.txt'));
  });
});

describe('journalctl', () => {
  test('-o cat prints messages only and, quiet, nothing at all when nothing matches', async () => {
    const r = await journalctl(['-u', 'ollama.service', '-n', '3', '--no-pager', '-o', 'cat']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.split('\n')).toHaveLength(3);
    expect(r.stdout).toContain('msg="Listening on [::]:11434 (version 0.17.4)"');
    expect(await journalctl(['-u', 'ghost', '--no-pager', '-o', 'cat'])).toMatchObject({ exitCode: 0, stdout: '' });
    expect((await journalctl(['-u', 'ghost', '--no-pager'])).stdout).toBe('-- No entries --');
  });

  test('the short format carries time, host, identifier and PID; systemd speaks as systemd[1]', async () => {
    const r = await journalctl(['-u', 'llama', '--no-pager']);
    const pid = store.read().containers.llama!.pid;
    const lines = r.stdout.split('\n');
    expect(lines).toContainEqual(
      expect.stringMatching(
        /^\w{3} \d\d \d\d:\d\d:\d\d unit-node systemd\[1\]: Started llama\.service - llama\.cpp server\.$/,
      ),
    );
    expect(lines.at(-1)).toMatch(
      new RegExp(String.raw`^\w{3} \d\d \d\d:\d\d:\d\d unit-node llama-server\[${pid}\]: main: server is listening`),
    );
  });

  test('--since takes "YYYY-MM-DD HH:MM:SS" in the local zone and refuses RFC 3339', async () => {
    const later = new Date(Date.now() + 3_600_000).toISOString().slice(0, 19);
    const since = await journalctl(['-u', 'ollama', '-o', 'cat', '--since', later.replace('T', ' ')]);
    expect(since).toMatchObject({ exitCode: 0, stdout: '' });
    // The same wall clock read in UTC+9 is nine hours earlier: everything of the last hour is after it.
    const tokyo = await journalctl(['-u', 'ollama', '-o', 'cat', '--since', later.replace('T', ' ')], {
      TZ: 'Asia/Tokyo',
    });
    expect(tokyo.stdout).toContain('Started ollama.service - Ollama Service.');
    const rfc = await journalctl(['-u', 'ollama', '-o', 'cat', '--since', `${later}Z`]);
    expect(rfc).toMatchObject({ exitCode: 1, stderr: `Failed to parse timestamp: ${later}Z` });
  });

  test('_SYSTEMD_INVOCATION_ID= selects one run of the unit: the current one has no lines of the last', async () => {
    injectFault(store, 'cuda-oom', { engine: 'ollama' });
    const first = (await systemctl(['show', '-P', 'InvocationID', 'ollama'])).stdout;
    expect((await journalctl([`_SYSTEMD_INVOCATION_ID=${first}`, '-o', 'cat'])).stdout).toMatch(/out of memory/);
    await systemctl(['restart', 'ollama']);
    const second = (await systemctl(['show', '-P', 'InvocationID', 'ollama'])).stdout;
    expect(second).toMatch(/^[0-9a-f]{32}$/);
    expect(second).not.toBe(first);
    const now = await journalctl([`_SYSTEMD_INVOCATION_ID=${second}`, '-o', 'cat']);
    expect(now.stdout).toContain('Listening on [::]:11434');
    expect(now.stdout).not.toMatch(/out of memory/);
    // The unit's journal keeps both runs and what systemd said in between.
    const all = (await journalctl(['-u', 'ollama', '-o', 'cat'])).stdout.split('\n');
    const stopping = all.indexOf('Stopping ollama.service - Ollama Service...');
    expect(stopping).toBeGreaterThan(all.findIndex((l) => l.includes('out of memory')));
    expect(all.slice(stopping)).toEqual(
      expect.arrayContaining(['ollama.service: Deactivated successfully.', 'Stopped ollama.service - Ollama Service.']),
    );
  });
});
