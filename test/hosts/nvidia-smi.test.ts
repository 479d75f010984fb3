import {
  decodeClocksEventReasons,
  fieldsWithoutRejected,
  NvidiaSmi,
  parseComputeAppsCsv,
  parseGpuResetOutput,
  parseQueryGpuCsv,
  parseQueryGpuOutput,
  parseSmiXml,
  QUERY_GPU_FIELDS,
  SmiXmlError,
} from '../../src/hosts/nvidia-smi';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { idleAmpereGpu } from '../helpers/hosts';
import { fakeTool, fixture } from './fakes';

/** What gpuops asks a driver before R565, which rejects gpu_recovery_action: the fixtures here are driver 550. */
const R550_FIELDS = QUERY_GPU_FIELDS.filter((f) => f !== 'gpu_recovery_action');

describe('parseQueryGpuCsv', () => {
  it('reads two busy RTX 3090s, with [N/A] ECC and row-remap fields as null', () => {
    const gpus = parseQueryGpuCsv(fixture('nvidia-smi/query-gpu-2x3090.csv'), R550_FIELDS);
    expect(gpus).toHaveLength(2);
    expect(gpus[0]).toEqual({
      index: 0,
      uuid: 'GPU-5f3e2a1b-7c4d-8e9f-0a1b-2c3d4e5f6a7b',
      name: 'NVIDIA GeForce RTX 3090',
      pciBusId: '00000000:01:00.0',
      driverVersion: '550.127.05',
      memoryTotalMiB: 24576,
      memoryUsedMiB: 21045,
      memoryFreeMiB: 3144,
      utilizationGpuPct: 97,
      temperatureC: 71,
      powerDrawW: 341.25,
      powerLimitW: 350,
      eccUncorrectedVolatile: null,
      retiredPagesPending: null,
      remappedRowsPending: null,
      remappedRowsFailure: null,
      clocksEventReasons: ['sw_power_cap'],
      lost: false,
      // Driver 550 predates the recovery action: not asked, so null.
      recoveryAction: null,
    });
    expect(gpus[1]).toMatchObject({ index: 1, pciBusId: '00000000:02:00.0', clocksEventReasons: [], lost: false });
  });

  it('reads ECC errors, a pending row remap and thermal throttling on an A4000', () => {
    const [g] = parseQueryGpuCsv(fixture('nvidia-smi/query-gpu-a4000-remap-pending.csv'), R550_FIELDS);
    expect(g).toMatchObject({
      name: 'NVIDIA RTX A4000',
      eccUncorrectedVolatile: 2,
      retiredPagesPending: null,
      remappedRowsPending: true,
      remappedRowsFailure: false,
      clocksEventReasons: ['gpu_idle', 'sw_thermal_slowdown', 'hw_thermal_slowdown'],
    });
  });

  it('marks a GPU whose fields read ERR! / [Unknown Error] as lost and nulls those fields', () => {
    const [ok, bad] = parseQueryGpuCsv(fixture('nvidia-smi/query-gpu-err.csv'), R550_FIELDS);
    expect(ok?.lost).toBe(false);
    expect(bad).toMatchObject({
      index: 1,
      lost: true,
      memoryUsedMiB: null,
      temperatureC: null,
      powerDrawW: null,
      powerLimitW: 350,
    });
    expect(bad?.clocksEventReasons).toEqual([]);
  });
});

describe('the driver verdict (gpu_recovery_action)', () => {
  /** A 570 row of the 2x3090 fixture with `words` in its last column. */
  const rowSaying = (words: string): string =>
    `${fixture('nvidia-smi/query-gpu-2x3090-recovery-reset.csv')
      .split('\n')[0]
      ?.replace(/, Reset$/, `, ${words}`)}\n`;
  it.each([
    ['None', 'none'],
    ['Reset', 'reset'],
    ['Reboot', 'reboot'],
    ['Drain P2P', 'drain-p2p'],
    ['Drain and Reset', 'drain-and-reset'],
    ['[N/A]', null],
    ['ERR!', null],
  ] as const)('reads "%s" as %s', (words, action) => {
    const [g] = parseQueryGpuCsv(rowSaying(words));
    expect(g?.recoveryAction).toBe(action);
    expect(g).not.toHaveProperty('recoveryActionRaw');
  });

  it('keeps words it does not know as recoveryActionRaw, the verdict null', () => {
    const [g] = parseQueryGpuCsv(rowSaying('Replace Board'));
    expect(g).toMatchObject({ recoveryAction: null, recoveryActionRaw: 'Replace Board' });
  });

  it('reads <gpu_recovery_action> from -q -x, null where the document has none (driver 550)', () => {
    const xml = fixture('nvidia-smi/q-x-a4000.xml');
    expect(parseSmiXml(xml).gpus[0]?.recoveryAction).toBeNull();
    const withVerdict = xml.replace(
      '</gpu_virtualization_mode>',
      '</gpu_virtualization_mode>\n\t\t<gpu_recovery_action>Drain and Reset</gpu_recovery_action>',
    );
    expect(withVerdict).not.toBe(xml);
    expect(parseSmiXml(withVerdict).gpus[0]?.recoveryAction).toBe('drain-and-reset');
  });
});

describe('parseQueryGpuOutput', () => {
  it('reports "GPU is lost" as a node-level error with no GPUs', () => {
    const r = parseQueryGpuOutput({ exitCode: 15, stdout: fixture('nvidia-smi/gpu-lost.txt'), stderr: '' });
    expect(r.gpus).toEqual([]);
    expect(r.error).toBe(
      'Unable to determine the device handle for GPU0000:02:00.0: GPU is lost.  Reboot the system to recover this GPU',
    );
  });

  it('reports "No devices were found" and an unreachable driver as errors', () => {
    expect(parseQueryGpuOutput({ exitCode: 6, stdout: fixture('nvidia-smi/no-devices.txt'), stderr: '' }).error).toBe(
      'No devices were found',
    );
    expect(
      parseQueryGpuOutput({ exitCode: 9, stdout: fixture('nvidia-smi/driver-gone.txt'), stderr: '' }).error,
    ).toMatch(/^NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver/);
  });

  it('treats any other non-zero exit as an error even with rows on stdout', () => {
    const r = parseQueryGpuOutput({
      exitCode: 255,
      stdout: fixture('nvidia-smi/query-gpu-2x3090.csv'),
      stderr: 'Unknown Error\n',
    });
    expect(r.gpus).toEqual([]);
    expect(r.error).toMatch(/^nvidia-smi exited 255/);
  });

  it('keeps a per-row ERR! as a lost GPU rather than a run failure', () => {
    const r = parseQueryGpuOutput(
      { exitCode: 0, stdout: fixture('nvidia-smi/query-gpu-err.csv'), stderr: '' },
      R550_FIELDS,
    );
    expect(r.error).toBeNull();
    expect(r.gpus.map((g) => g.lost)).toEqual([false, true]);
  });
});

describe('fieldsWithoutRejected', () => {
  const rejected = (f: string): string => `Field "${f}" is not a valid field to query.\n\n`;
  it.each([
    ['drops gpu_recovery_action', ['index', 'gpu_recovery_action'], rejected('gpu_recovery_action'), ['index']],
    [
      'replaces the renamed throttle field by its old name, in place',
      ['index', 'clocks_event_reasons.active', 'gpu_recovery_action'],
      rejected('clocks_event_reasons.active'),
      ['index', 'clocks_throttle_reasons.active', 'gpu_recovery_action'],
    ],
    ['gives up on a field without a fallback', ['index', 'uuid'], rejected('uuid'), null],
    ['gives up on a field it did not ask for', ['index'], rejected('gpu_recovery_action'), null],
    ['gives up on output that names no field', ['index'], 'No devices were found\n', null],
  ])('%s', (_what, fields, output, expected) => {
    expect(fieldsWithoutRejected(fields, output)).toEqual(expected);
  });
});

describe('decodeClocksEventReasons', () => {
  it('decodes every NVML bit and names unknown bits by value', () => {
    expect(decodeClocksEventReasons('0x00000000000001FF')).toEqual([
      'gpu_idle',
      'applications_clocks_setting',
      'sw_power_cap',
      'hw_slowdown',
      'sync_boost',
      'sw_thermal_slowdown',
      'hw_thermal_slowdown',
      'hw_power_brake_slowdown',
      'display_clock_setting',
    ]);
    expect(decodeClocksEventReasons('0x0000000000000408')).toEqual(['hw_slowdown', '0x400']);
    expect(decodeClocksEventReasons('[N/A]')).toEqual([]);
  });
});

describe('parseComputeAppsCsv', () => {
  it('reads processes per GPU with [N/A] memory as null', () => {
    expect(parseComputeAppsCsv(fixture('nvidia-smi/compute-apps.csv'))).toEqual([
      {
        gpuUuid: 'GPU-5f3e2a1b-7c4d-8e9f-0a1b-2c3d4e5f6a7b',
        pid: 48213,
        processName: '/usr/bin/python3',
        usedMemoryMiB: 20736,
      },
      {
        gpuUuid: 'GPU-0b6d4c2e-91a3-5f7e-b8c0-d2e4f6a8b0c2',
        pid: 48990,
        processName: '/usr/bin/python3',
        usedMemoryMiB: 11552,
      },
      {
        gpuUuid: 'GPU-0b6d4c2e-91a3-5f7e-b8c0-d2e4f6a8b0c2',
        pid: 51122,
        processName: '/app/llama-server',
        usedMemoryMiB: null,
      },
    ]);
    expect(parseComputeAppsCsv('')).toEqual([]);
  });
});

describe('parseSmiXml', () => {
  it('reads driver and CUDA versions, persistence mode, power limits and clocks (drivers 535+)', () => {
    const s = parseSmiXml(fixture('nvidia-smi/q-x-a4000.xml'));
    expect(s.driverVersion).toBe('550.127.05');
    expect(s.cudaVersion).toBe('12.4');
    expect(s.gpus).toEqual([
      idleAmpereGpu({
        pciBusId: '00000000:01:00.0',
        productName: 'NVIDIA RTX A4000',
        uuid: 'GPU-9a8b7c6d-5e4f-3a2b-1c0d-9e8f7a6b5c4d',
        powerLimitW: 140,
        maxMemMHz: 7001,
      }),
    ]);
    expect(s.xml).toContain('<nvidia_smi_log>');
  });

  it('refuses a truncated document instead of reading half of it (a backup must not keep it)', () => {
    const xml = fixture('nvidia-smi/q-x-a4000.xml');
    const truncated = xml.slice(0, xml.indexOf('<max_clocks>'));
    expect(() => parseSmiXml(truncated)).toThrow(SmiXmlError);
    expect(() => parseSmiXml(truncated)).toThrow(/^nvidia-smi -q -x printed no valid XML: line \d+: /);
    expect(() => parseSmiXml('No devices were found\n')).toThrow(SmiXmlError);
  });

  it('reads the older <power_readings> layout', () => {
    const [g] = parseSmiXml(fixture('nvidia-smi/q-x-legacy-power.xml')).gpus;
    expect(g).toMatchObject({
      persistenceMode: 'Disabled',
      powerLimitW: 350,
      enforcedPowerLimitW: 300,
      clocks: { smMHz: 0, memMHz: 405 },
    });
  });
});

describe('parseGpuResetOutput', () => {
  it('recognises a successful reset', () => {
    expect(parseGpuResetOutput(0, fixture('nvidia-smi/gpu-reset-ok.txt'))).toEqual({
      ok: true,
      reason: null,
      message: 'GPU 00000000:01:00.0 was successfully reset. | All done.',
    });
  });

  it('recognises a reset refused because the GPU is in use', () => {
    const r = parseGpuResetOutput(255, fixture('nvidia-smi/gpu-reset-in-use.txt'));
    expect(r.ok).toBe(false);
    expect(r.reason).toBe('in-use');
    expect(r.message).toMatch(/^The following GPUs could not be reset:/);
  });

  it('recognises a lost GPU', () => {
    expect(parseGpuResetOutput(15, fixture('nvidia-smi/gpu-lost.txt')).reason).toBe('lost');
  });
});

describe('NvidiaSmi against a fake nvidia-smi', () => {
  it('asks for the documented fields in csv,noheader,nounits form and reads the driver verdict', async () => {
    const smi = fakeTool('nvidia-smi', [{ stdout: fixture('nvidia-smi/query-gpu-2x3090-recovery-reset.csv') }]);
    const r = await new NvidiaSmi({ bin: smi.bin }).queryGpus();
    expect(r.gpus.map((g) => [g.index, g.recoveryAction])).toEqual([
      [0, 'reset'],
      [1, 'none'],
    ]);
    expect(smi.calls()).toEqual([[`--query-gpu=${QUERY_GPU_FIELDS.join(',')}`, '--format=csv,noheader,nounits']]);
  });

  /** `--query-gpu=<fields>` as the adapter asks it. */
  const ask = (fields: readonly string[]): string => `--query-gpu=${fields.join(',')}`;
  const rejects = (field: string): { stdout: string; exit: number } => ({
    stdout: `Field "${field}" is not a valid field to query.\n\n`,
    exit: 2,
  });
  const LEGACY = R550_FIELDS.map((f) => (f === 'clocks_event_reasons.active' ? 'clocks_throttle_reasons.active' : f));

  it('asks a driver before R565 again without gpu_recovery_action: two calls, then one per probe', async () => {
    const smi = fakeTool('nvidia-smi', [
      { args: [ask(R550_FIELDS)], stdout: fixture('nvidia-smi/query-gpu-2x3090.csv') },
      { args: [ask(QUERY_GPU_FIELDS)], ...rejects('gpu_recovery_action') },
    ]);
    const client = new NvidiaSmi({ bin: smi.bin });
    const r = await client.queryGpus();
    expect(r.error).toBeNull();
    expect(r.gpus.map((g) => g.recoveryAction)).toEqual([null, null]);
    expect(smi.calls().map((c) => c[0])).toEqual([ask(QUERY_GPU_FIELDS), ask(R550_FIELDS)]);
    await client.queryGpus();
    expect(smi.calls()).toHaveLength(3);
  });

  it('asks with every field again once the driver version changes (an upgrade under a running worker)', async () => {
    const smi = fakeTool('nvidia-smi', [
      { args: [ask(R550_FIELDS)], stdout: fixture('nvidia-smi/query-gpu-2x3090.csv') },
      { args: [ask(QUERY_GPU_FIELDS)], ...rejects('gpu_recovery_action') },
    ]);
    const client = new NvidiaSmi({ bin: smi.bin });
    expect((await client.queryGpus()).gpus.map((g) => g.recoveryAction)).toEqual([null, null]);
    // The fake reads its rules at each call: now the node runs R570, which knows the field.
    writeFileSync(
      path.join(path.dirname(smi.bin), 'rules.json'),
      JSON.stringify([
        {
          args: [ask(R550_FIELDS)],
          stdout: fixture('nvidia-smi/query-gpu-2x3090.csv').replaceAll('550.127.05', '570.158.01'),
        },
        { args: [ask(QUERY_GPU_FIELDS)], stdout: fixture('nvidia-smi/query-gpu-2x3090-recovery-reset.csv') },
      ]),
    );
    const r = await client.queryGpus();
    expect(r.gpus.map((g) => g.recoveryAction)).toEqual(['reset', 'none']);
    expect(smi.calls().map((c) => c[0])).toEqual([
      ask(QUERY_GPU_FIELDS),
      ask(R550_FIELDS),
      ask(R550_FIELDS),
      ask(QUERY_GPU_FIELDS),
    ]);
    await client.queryGpus();
    expect(smi.calls()).toHaveLength(5);
  });

  it('asks a driver lacking both new fields three times: each rejected field replaced or dropped once', async () => {
    const smi = fakeTool('nvidia-smi', [
      { args: [ask(LEGACY)], stdout: fixture('nvidia-smi/query-gpu-a4000-remap-pending.csv') },
      { args: [ask([...LEGACY, 'gpu_recovery_action'])], ...rejects('gpu_recovery_action') },
      { args: [ask(QUERY_GPU_FIELDS)], stdout: fixture('nvidia-smi/invalid-field.txt'), exit: 2 },
    ]);
    const client = new NvidiaSmi({ bin: smi.bin });
    const r = await client.queryGpus();
    expect(r.error).toBeNull();
    expect(r.gpus[0]?.clocksEventReasons).toContain('hw_thermal_slowdown');
    expect(smi.calls().map((c) => c[0])).toEqual([
      ask(QUERY_GPU_FIELDS),
      ask([...LEGACY, 'gpu_recovery_action']),
      ask(LEGACY),
    ]);
    await client.queryGpus();
    expect(smi.calls().map((c) => c[0])).toHaveLength(4);
  });

  it('reports a rejected field it has no fallback for after one call, not a retry loop', async () => {
    const smi = fakeTool('nvidia-smi', [rejects('index')]);
    const r = await new NvidiaSmi({ bin: smi.bin }).queryGpus();
    expect(r.gpus).toEqual([]);
    expect(r.error).toBe('nvidia-smi exited 2: Field "index" is not a valid field to query.');
    expect(smi.calls()).toHaveLength(1);
  });

  it('returns the lost-GPU message instead of throwing', async () => {
    const smi = fakeTool('nvidia-smi', [{ stdout: fixture('nvidia-smi/gpu-lost.txt'), exit: 15 }]);
    const r = await new NvidiaSmi({ bin: smi.bin }).queryGpus();
    expect(r).toEqual({ gpus: [], error: expect.stringContaining('GPU is lost') });
  });

  it('resets one GPU by index and reports a busy GPU as data', async () => {
    const smi = fakeTool('nvidia-smi', [
      { args: ['--gpu-reset', '-i', '0'], stdout: fixture('nvidia-smi/gpu-reset-ok.txt') },
      { args: ['--gpu-reset', '-i', '1'], stdout: fixture('nvidia-smi/gpu-reset-in-use.txt'), exit: 255 },
    ]);
    const client = new NvidiaSmi({ bin: smi.bin });
    await expect(client.resetGpu(0)).resolves.toMatchObject({ ok: true });
    await expect(client.resetGpu(1)).resolves.toMatchObject({ ok: false, reason: 'in-use' });
    await expect(client.resetGpu(-1)).rejects.toThrow(RangeError);
  });

  it('returns the raw -q -x XML with parsed facts', async () => {
    const smi = fakeTool('nvidia-smi', [{ args: ['-q', '-x'], stdout: fixture('nvidia-smi/q-x-a4000.xml') }]);
    const snap = await new NvidiaSmi({ bin: smi.bin }).snapshotXml();
    expect(snap.gpus[0]?.productName).toBe('NVIDIA RTX A4000');
    expect(snap.xml).toBe(fixture('nvidia-smi/q-x-a4000.xml').trimEnd());
  });
});
