/**
 * The shims print what the real tools print, so the real adapters parse them unchanged.
 */
/* eslint-disable @typescript-eslint/no-explicit-any -- response bodies are parsed JSON, probed field by field */
import { writeFileSync } from 'node:fs';
import type { NodeConfig } from '../../src/config/schema';
import type { SandboxStore } from '../../src/sandbox/state';
import { nodeConfig, runShim, seedStore, tempDir } from './helpers';

let dir: string;
let cleanup: () => void;
let node: NodeConfig;
let store: SandboxStore;
let env: Record<string, string>;

beforeEach(async () => {
  ({ dir, cleanup } = tempDir());
  node = await nodeConfig(
    'shim-node',
    [
      { type: 'ollama', name: 'ollama' },
      { type: 'vllm', name: 'vllm-fast', gpus: [1] },
    ],
    2,
  );
  store = seedStore(dir, node);
  env = { GPUOPS_SANDBOX_STATE: store.file, GPUOPS_SANDBOX_STATE_DIR: dir };
});

afterEach(() => cleanup());

describe('docker shim', () => {
  test('inspect prints a JSON array with State, Name, RestartCount and Config.Image like docker', async () => {
    const r = await runShim('docker', ['inspect', 'ollama', 'vllm-fast'], env);
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith('[\n    {')).toBe(true); // docker indents with 4 spaces
    const arr = JSON.parse(r.stdout) as Record<string, any>[];
    expect(arr).toHaveLength(2);
    const c = arr[0]!;
    expect(c.Name).toBe('/ollama');
    expect(c.Id).toMatch(/^[0-9a-f]{64}$/);
    expect(c.Config.Image).toBe('ollama/ollama:0.17.4');
    expect(c.RestartCount).toBe(0);
    expect(Object.keys(c.State)).toEqual([
      'Status',
      'Running',
      'Paused',
      'Restarting',
      'OOMKilled',
      'Dead',
      'Pid',
      'ExitCode',
      'Error',
      'StartedAt',
      'FinishedAt',
    ]);
    expect(c.State).toMatchObject({
      Status: 'running',
      Running: true,
      OOMKilled: false,
      ExitCode: 0,
      FinishedAt: '0001-01-01T00:00:00Z',
    });
    expect(c.State.StartedAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/);
    expect(c.State.Pid).toBeGreaterThan(0);
    expect(c.HostConfig.DeviceRequests[0].Capabilities).toEqual([['gpu']]);
    expect(arr[1]!.HostConfig.DeviceRequests[0].DeviceIDs).toEqual(['1']);
  });

  test('inspect of an unknown name prints [] and "Error: No such object" and exits 1', async () => {
    const r = await runShim('docker', ['inspect', 'nope'], env);
    expect(r.code).toBe(1);
    expect(r.stdout.trim()).toBe('[]');
    expect(r.stderr.trim()).toBe('Error: No such object: nope');
  });

  test('inspect of a known and an unknown name prints the known one and still exits 1', async () => {
    const r = await runShim('docker', ['inspect', 'ollama', 'ghost'], env);
    expect(r.code).toBe(1);
    expect((JSON.parse(r.stdout) as unknown[]).length).toBe(1);
    expect(r.stderr).toContain('No such object: ghost');
  });

  test('inspect --format renders {{json .State}} and {{.Path}} templates', async () => {
    const j = await runShim('docker', ['inspect', '--format', '{{json .State}}', 'ollama'], env);
    expect(JSON.parse(j.stdout)).toMatchObject({ Status: 'running', Running: true });
    const t = await runShim(
      'docker',
      ['inspect', '-f', '{{.State.Status}} {{.RestartCount}} {{.Config.Image}}', 'ollama'],
      env,
    );
    expect(t.stdout).toBe('running 0 ollama/ollama:0.17.4\n');
  });

  test('stop and start print the container name and change State; a stopped container stays stopped', async () => {
    const before = JSON.parse((await runShim('docker', ['inspect', 'ollama'], env)).stdout)[0].State;
    const stop = await runShim('docker', ['stop', '-t', '5', 'ollama'], env);
    expect(stop).toMatchObject({ code: 0, stdout: 'ollama\n' });
    const stopped = JSON.parse((await runShim('docker', ['inspect', 'ollama'], env)).stdout)[0].State;
    expect(stopped).toMatchObject({ Status: 'exited', Running: false, ExitCode: 0, Pid: 0 });
    expect(stopped.FinishedAt).not.toBe('0001-01-01T00:00:00Z');
    const start = await runShim('docker', ['start', 'ollama'], env);
    expect(start).toMatchObject({ code: 0, stdout: 'ollama\n' });
    const after = JSON.parse((await runShim('docker', ['inspect', 'ollama'], env)).stdout)[0].State;
    expect(after.Status).toBe('running');
    expect(after.StartedAt > before.StartedAt).toBe(true);
  });

  test('restart of an unknown container fails with "No such container"', async () => {
    const r = await runShim('docker', ['restart', 'ghost'], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('Error response from daemon: No such container: ghost');
  });

  test('ps -a --format "{{.Names}} {{.State}}" lists containers, including stopped ones', async () => {
    await runShim('docker', ['stop', 'vllm-fast'], env);
    expect((await runShim('docker', ['ps', '--format', '{{.Names}}'], env)).stdout).toBe('ollama\n');
    expect((await runShim('docker', ['ps', '-a', '--format', '{{.Names}} {{.State}}'], env)).stdout).toBe(
      'ollama running\nvllm-fast exited\n',
    );
  });

  test('logs writes engine stderr to stderr and honours --tail and --since', async () => {
    const all = await runShim('docker', ['logs', 'ollama'], env);
    expect(all.code).toBe(0);
    expect(all.stdout).toBe('');
    expect(all.stderr).toContain('Listening on [::]:11434 (version 0.17.4)');
    const tail = await runShim('docker', ['logs', '--tail', '1', 'ollama'], env);
    expect(tail.stderr.trim().split('\n')).toHaveLength(1);
    const future = new Date(Date.now() + 60_000).toISOString();
    const since = await runShim('docker', ['logs', '--since', future, 'ollama'], env);
    expect(since.stderr).toBe('');
  });
});

describe('docker shim: rm and run -d (canary slots recreate engine containers)', () => {
  const image = 'vllm/vllm-openai:v0.6.4.post1';
  const runArgs = (model: string, extra: string[] = []): string[] => [
    'run',
    '-d',
    '--name',
    'vllm-fast',
    '--gpus',
    'device=1',
    '--ipc',
    'host',
    '--publish',
    `${node.engines[1]!.url.split(':').at(-1)}:8000`,
    '--volume',
    '/srv/hf-cache:/root/.cache/huggingface',
    '--restart',
    'unless-stopped',
    '--label',
    'com.example.role=fast',
    ...extra,
    image,
    '--model',
    model,
    '--port',
    '8000',
  ];

  test('rm needs -f for a running container; -f removes it and forgives a missing one', async () => {
    const refused = await runShim('docker', ['rm', 'vllm-fast'], env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('container is running: stop the container before removing or force remove');
    expect(await runShim('docker', ['rm', '-f', 'vllm-fast'], env)).toMatchObject({ code: 0, stdout: 'vllm-fast\n' });
    const gone = await runShim('docker', ['inspect', 'vllm-fast'], env);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toBe('Error: No such object: vllm-fast\n');
    // docker >= 20.10: forcing the removal of a missing container warns but succeeds.
    expect(await runShim('docker', ['rm', '-f', 'vllm-fast'], env)).toMatchObject({ code: 0, stdout: '' });
    expect((await runShim('docker', ['rm', 'vllm-fast'], env)).code).toBe(1);
  });

  test('run -d prints the new id; inspect shows the flags it was run with and the engine serves the model', async () => {
    const envFile = `${dir}/env`;
    writeFileSync(envFile, '# tokens live here, not on the command line\nHF_TOKEN=hf_secret\n');
    await runShim('docker', ['rm', '-f', 'vllm-fast'], env);
    const r = await runShim(
      'docker',
      runArgs('gpuops-sandbox/Qwen2.5-0.5B-Instruct-good', ['--env-file', envFile, '-e', 'VLLM_LOGGING_LEVEL=INFO']),
      env,
    );
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout).toMatch(/^[0-9a-f]{64}\n$/);
    const c = JSON.parse((await runShim('docker', ['inspect', 'vllm-fast'], env)).stdout)[0];
    expect(c.Id).toBe(r.stdout.trim());
    expect(c.Path).toBe('python3');
    expect(c.Args).toEqual([
      '-m',
      'vllm.entrypoints.openai.api_server',
      '--model',
      'gpuops-sandbox/Qwen2.5-0.5B-Instruct-good',
      '--port',
      '8000',
    ]);
    expect(c.State).toMatchObject({ Status: 'running', Running: true });
    expect(c.HostConfig).toMatchObject({
      Binds: ['/srv/hf-cache:/root/.cache/huggingface'],
      IpcMode: 'host',
      RestartPolicy: { Name: 'unless-stopped', MaximumRetryCount: 0 },
      PortBindings: { '8000/tcp': [{ HostIp: '', HostPort: node.engines[1]!.url.split(':').at(-1) }] },
      DeviceRequests: [{ Driver: '', Count: 0, DeviceIDs: ['1'], Capabilities: [['gpu']], Options: {} }],
    });
    expect(c.Config.Env).toEqual(expect.arrayContaining(['HF_TOKEN=hf_secret', 'VLLM_LOGGING_LEVEL=INFO']));
    expect(c.Config.Labels['com.example.role']).toBe('fast');
    expect(store.read().engines['vllm-fast']!.models).toEqual(['gpuops-sandbox/Qwen2.5-0.5B-Instruct-good']);
    const conflict = await runShim('docker', runArgs('x/y'), env);
    expect(conflict.code).toBe(125);
    expect(conflict.stderr).toContain(`The container name "/vllm-fast" is already in use by container "${c.Id}"`);
  });

  test("a model the library lacks loads for a moment, then the container exits 1 with the engine's error", async () => {
    store.update((s) => {
      s.sim.timeScale = 1;
      s.sim.engineLoadMs = 1000; // it gives up after 0.8 s
    });
    await runShim('docker', ['rm', '-f', 'vllm-fast'], env);
    expect((await runShim('docker', runArgs('gpuops-sandbox/no-such-model'), env)).code).toBe(0);
    const status = async (): Promise<Record<string, unknown>> =>
      JSON.parse((await runShim('docker', ['inspect', 'vllm-fast'], env)).stdout)[0].State;
    expect(await status()).toMatchObject({ Status: 'running' });
    let state = await status();
    for (const deadline = Date.now() + 5000; state.Status === 'running' && Date.now() < deadline;)
      state = await status();
    expect(state).toMatchObject({ Status: 'exited', ExitCode: 1 });
    const logs = await runShim('docker', ['logs', '--tail', '2', 'vllm-fast'], env);
    expect(logs.stderr).toContain(
      "OSError: gpuops-sandbox/no-such-model is not a local folder and is not a valid model identifier listed on 'https://huggingface.co/models'",
    );
  });

  test("image inspect prints the image's own entrypoint, env and labels", async () => {
    const r = await runShim('docker', ['image', 'inspect', image], env);
    expect(r.code).toBe(0);
    const [img] = JSON.parse(r.stdout);
    expect(img.RepoTags).toEqual([image]);
    expect(img.Config.Entrypoint).toEqual(['python3', '-m', 'vllm.entrypoints.openai.api_server']);
    const missing = await runShim('docker', ['image', 'inspect', 'busybox:latest'], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('No such image: busybox:latest');
  });
});

describe('nvidia-smi shim', () => {
  const FIELDS =
    'index,uuid,name,pci.bus_id,driver_version,memory.total,memory.used,memory.free,utilization.gpu,temperature.gpu,power.draw,power.limit,ecc.errors.uncorrected.volatile.total,retired_pages.pending,remapped_rows.pending,remapped_rows.failure,clocks_event_reasons.active';

  test('--query-gpu csv,noheader,nounits prints one row per GPU in the requested field order', async () => {
    const r = await runShim('nvidia-smi', [`--query-gpu=${FIELDS}`, '--format=csv,noheader,nounits'], env);
    expect(r.code).toBe(0);
    const rows = r.stdout
      .trim()
      .split('\n')
      .map((l) => l.split(', '));
    expect(rows).toHaveLength(2);
    const [
      idx,
      uuid,
      name,
      bus,
      driver,
      total,
      used,
      free,
      util,
      temp,
      power,
      limit,
      ecc,
      retired,
      remap,
      remapFail,
      reasons,
    ] = rows[0]!;
    expect(idx).toBe('0');
    expect(uuid).toMatch(/^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(name).toBe('NVIDIA RTX A4000');
    expect(bus).toBe('00000000:01:00.0');
    expect(driver).toMatch(/^570\.\d+\.\d+$/);
    expect(total).toBe('16376');
    expect(Number(used) + Number(free)).toBeLessThanOrEqual(16376);
    expect(util).toMatch(/^\d+$/);
    expect(Number(temp)).toBeGreaterThan(20);
    expect(power).toMatch(/^\d+\.\d\d$/);
    expect(limit).toBe('140.00');
    expect(ecc).toBe('0');
    expect(retired).toBe('[N/A]'); // Ampere replaced page retirement with row remapping
    expect(remap).toBe('No');
    expect(remapFail).toBe('No');
    expect(reasons).toMatch(/^0x[0-9a-f]{16}$/);
    expect(rows[1]![3]).toBe('00000000:02:00.0');
  });

  test('the field order of the request is the order of the output', async () => {
    const r = await runShim(
      'nvidia-smi',
      ['--query-gpu=name,index,memory.total', '--format=csv,noheader,nounits', '-i', '1'],
      env,
    );
    expect(r.stdout).toBe('NVIDIA RTX A4000, 1, 16376\n');
  });

  test('--format=csv prints a header with units and values with units', async () => {
    const r = await runShim(
      'nvidia-smi',
      ['--query-gpu=index,memory.total,utilization.gpu,power.limit,temperature.gpu', '--format=csv', '-i', '0'],
      env,
    );
    const [header, row] = r.stdout.trim().split('\n');
    expect(header).toBe('index, memory.total [MiB], utilization.gpu [%], power.limit [W], temperature.gpu');
    expect(row).toMatch(/^0, 16376 MiB, \d+ %, 140\.00 W, \d+$/);
  });

  test('an unknown field is rejected like the real tool', async () => {
    const r = await runShim('nvidia-smi', ['--query-gpu=index,bogus.field', '--format=csv'], env);
    expect(r.code).toBe(2);
    expect(r.stdout).toContain('Field "bogus.field" is not a valid field to query.');
  });

  test('--query-compute-apps lists the engine holding the GPU', async () => {
    const r = await runShim(
      'nvidia-smi',
      ['--query-compute-apps=gpu_uuid,pid,process_name,used_memory', '--format=csv,noheader,nounits'],
      env,
    );
    expect(r.code).toBe(0);
    // vLLM preallocates 90% of its GPU as soon as it runs; Ollama holds nothing until a model is loaded.
    const rows = r.stdout.trim().split('\n');
    expect(rows).toHaveLength(1);
    const [gpuUuid, pid, proc, mem] = rows[0]!.split(', ');
    expect(gpuUuid).toMatch(/^GPU-/);
    expect(Number(pid)).toBeGreaterThan(0);
    expect(proc).toBe('/usr/bin/python3');
    expect(Number(mem)).toBeGreaterThan(10_000);
  });

  test('-q -x prints an nvidia_smi_log document with each GPU, its power limit and clocks', async () => {
    const r = await runShim('nvidia-smi', ['-q', '-x'], env);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      /^<\?xml version="1\.0" \?>\n<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12\.dtd">\n<nvidia_smi_log>/,
    );
    expect(r.stdout).toContain('<attached_gpus>2</attached_gpus>');
    expect(r.stdout).toContain('<gpu id="00000000:01:00.0">');
    expect(r.stdout).toContain('<product_name>NVIDIA RTX A4000</product_name>');
    expect(r.stdout).toContain('<current_power_limit>140.00 W</current_power_limit>');
    expect(r.stdout).toMatch(/<max_clocks>\s*<graphics_clock>\d+ MHz<\/graphics_clock>/);
    expect(r.stdout).toContain('<dram_uncorrectable>0</dram_uncorrectable>');
    expect(r.stdout.trim().endsWith('</nvidia_smi_log>')).toBe(true);
  });

  test('the driver verdict prints as the real tool prints it: --query-gpu, -q -x and -q', async () => {
    store.update((s) => {
      s.gpus[1]!.recoveryAction = 'drain-and-reset';
    });
    const csv = await runShim('nvidia-smi', ['--query-gpu=index,gpu_recovery_action', '--format=csv'], env);
    expect(csv.stdout).toBe('index, gpu_recovery_action\n0, None\n1, Drain and Reset\n');
    // In the real documents (R565+) the verdict follows the virtualization mode, before the GSP firmware and PCI.
    const xml = (await runShim('nvidia-smi', ['-q', '-x'], env)).stdout;
    expect(xml).toContain(
      '\t\t\t<host_vgpu_mode>N/A</host_vgpu_mode>\n\t\t</gpu_virtualization_mode>\n\t\t<gpu_recovery_action>None</gpu_recovery_action>\n\t\t<pci>\n',
    );
    expect(xml).toContain('<gpu_recovery_action>Drain and Reset</gpu_recovery_action>');
    const text = (await runShim('nvidia-smi', ['-q'], env)).stdout;
    expect(text).toContain(
      '        Virtualization Mode               : Pass-Through\n        Host Vgpu Mode                    : N/A\n    GPU Recovery Action                   : None\n    PCI\n',
    );
    expect(text).toContain('    GPU Recovery Action                   : Drain and Reset\n');
  });

  test('--gpu-reset is refused while an engine uses the GPU and succeeds once it is stopped', async () => {
    const busy = await runShim('nvidia-smi', ['--gpu-reset', '-i', '1'], env);
    expect(busy.code).not.toBe(0);
    expect(busy.stdout).toContain('The following GPUs could not be reset:');
    expect(busy.stdout).toContain('GPU 00000000:02:00.0: In use by another client');
    await runShim('docker', ['stop', 'vllm-fast'], env);
    const ok = await runShim('nvidia-smi', ['--gpu-reset', '-i', '1'], env);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toBe('GPU 00000000:02:00.0 was successfully reset.\n');
  });

  test('-L lists GPUs with their UUIDs', async () => {
    const r = await runShim('nvidia-smi', ['-L'], env);
    expect(r.stdout).toMatch(/^GPU 0: NVIDIA RTX A4000 \(UUID: GPU-[0-9a-f-]{36}\)\nGPU 1: /);
  });
});

describe('dmesg shim', () => {
  test('plain dmesg prefixes lines with [seconds.micros] since boot', async () => {
    const r = await runShim('dmesg', [], env);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^\[\s+0\.\d{6}\] Linux version /);
    expect(r.stdout).toMatch(/\] NVRM: loading NVIDIA UNIX x86_64 Kernel Module {2}570\.158\.01 {2}Tue Apr {2}8 /);
  });

  test('--time-format iso prints util-linux ISO timestamps with a comma before microseconds', async () => {
    const r = await runShim('dmesg', ['--time-format', 'iso'], env);
    for (const l of r.stdout.trim().split('\n'))
      expect(l).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{6}[+-]\d\d:\d\d /);
  });
});

describe('qm shim', () => {
  test('status prints "status: running" and config lists the passed-through GPUs', async () => {
    expect((await runShim('qm', ['status', '101'], env)).stdout).toBe('status: running\n');
    const cfg = (await runShim('qm', ['config', '101'], env)).stdout;
    expect(cfg).toContain('hostpci0: 0000:41:00,pcie=1\n');
    expect(cfg).toContain('hostpci1: 0000:42:00,pcie=1\n');
    const keys = cfg
      .trim()
      .split('\n')
      .map((l) => l.split(':')[0]);
    expect(keys).toEqual([...keys].sort());
  });

  test('an unknown vmid fails with Proxmox\'s "Configuration file ... does not exist"', async () => {
    const r = await runShim('qm', ['status', '999'], env);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toBe("Configuration file 'nodes/pve/qemu-server/999.conf' does not exist\n");
  });

  test('reboot returns when the VM has been restarted, and a stopped VM reports stopped', async () => {
    const before = store.read().vm.bootId;
    const reboot = await runShim('qm', ['reboot', '101'], env);
    expect(reboot.code).toBe(0);
    expect(store.read().vm.bootId).toBe(before + 1);
    expect((await runShim('qm', ['stop', '101'], env)).code).toBe(0);
    expect((await runShim('qm', ['status', '101'], env)).stdout).toBe('status: stopped\n');
    const again = await runShim('qm', ['shutdown', '101'], env);
    expect(again.stderr).toContain('VM 101 not running');
  });
});
