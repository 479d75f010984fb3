/**
 * nvidia-smi parsers against outputs captured on real machines by other projects (see
 * test/fixtures/nvidia-smi/real/SOURCES.md). The CSV captures were taken with `--format=csv` (header and units) and
 * every field nvidia-smi knows; `asQueriedBy` cuts out the columns gpuops asks for, in its order, which is exactly
 * what nvidia-smi prints for that field list (each column is reported independently).
 */
import {
  COMPUTE_APPS_FIELDS,
  parseComputeAppsCsv,
  parseQueryGpuCsv,
  parseSmiXml,
  QUERY_GPU_FIELDS,
} from '../../src/hosts/nvidia-smi';
import { idleAmpereGpu } from '../helpers/hosts';
import { fixture } from './fakes';

const splitRow = (line: string): string[] => line.split(', ');

/** The captured `--format=csv` output reduced to `fields`, header dropped (as `noheader` would). */
function asQueriedBy(csv: string, fields: readonly string[]): string {
  const [header = '', ...rows] = csv.trim().split(/\r?\n/);
  const names = splitRow(header).map((h) => h.replace(/ \[[^\]]*\]$/, ''));
  const at = fields.map((f) => {
    const i = names.indexOf(f);
    if (i < 0) throw new Error(`capture has no column ${f}`);
    return i;
  });
  return rows.map((r) => at.map((i) => splitRow(r)[i] ?? '').join(', ')).join('\n');
}

describe('parseQueryGpuCsv on real captures', () => {
  it('reads an H200 on driver 580.173.02 (units left in, [N/A] fields null)', () => {
    const [g, ...rest] = parseQueryGpuCsv(
      asQueriedBy(fixture('nvidia-smi/real/query-gpu-h200-580.173.02.csv'), QUERY_GPU_FIELDS),
    );
    expect(rest).toEqual([]);
    expect(g).toEqual({
      index: 0,
      uuid: 'GPU-00000000-0000-0000-0000-000000000000',
      name: 'NVIDIA H200',
      pciBusId: '00000000:83:00.0',
      driverVersion: '580.173.02',
      memoryTotalMiB: 143771,
      memoryUsedMiB: 0,
      memoryFreeMiB: 143156,
      utilizationGpuPct: 0,
      temperatureC: 37,
      powerDrawW: 85.12,
      powerLimitW: 700,
      eccUncorrectedVolatile: 0,
      // Hopper retires no pages (it remaps rows): [N/A].
      retiredPagesPending: null,
      remappedRowsPending: false,
      remappedRowsFailure: false,
      clocksEventReasons: ['gpu_idle'],
      lost: false,
      // The driver's verdict on a healthy GPU (gpu_recovery_action, R565+).
      recoveryAction: 'none',
    });
  });

  it('reads an H200 in MIG mode on 610.43.02, whose utilization and row remapper are [N/A]', () => {
    const [g] = parseQueryGpuCsv(
      asQueriedBy(fixture('nvidia-smi/real/query-gpu-h200-mig-610.43.02.csv'), QUERY_GPU_FIELDS),
    );
    expect(g).toMatchObject({
      name: 'NVIDIA H200',
      driverVersion: '610.43.02',
      memoryUsedMiB: 44,
      utilizationGpuPct: null,
      temperatureC: 40,
      powerDrawW: 130.44,
      remappedRowsPending: null,
      clocksEventReasons: [],
      lost: false,
    });
  });

  it('reads a consumer card under Windows WDDM: no ECC, no row remapper, no retired pages', () => {
    const [g] = parseQueryGpuCsv(
      asQueriedBy(fixture('nvidia-smi/real/query-gpu-rtx2080s-wddm-591.86.csv'), QUERY_GPU_FIELDS),
    );
    expect(g).toMatchObject({
      name: 'NVIDIA GeForce RTX 2080 SUPER',
      pciBusId: '00000000:0C:00.0',
      memoryTotalMiB: 8192,
      memoryUsedMiB: 702,
      eccUncorrectedVolatile: null,
      retiredPagesPending: null,
      remappedRowsPending: null,
      powerLimitW: 250,
      lost: false,
    });
  });

  it('accepts the pre-rename throttle field name in place of clocks_event_reasons.active', () => {
    const legacy = QUERY_GPU_FIELDS.map((f) =>
      f === 'clocks_event_reasons.active' ? 'clocks_throttle_reasons.active' : f,
    );
    const csv = asQueriedBy(fixture('nvidia-smi/real/query-gpu-h200-580.173.02.csv'), QUERY_GPU_FIELDS);
    expect(parseQueryGpuCsv(csv, legacy)[0]?.clocksEventReasons).toEqual(['gpu_idle']);
  });
});

describe('parseComputeAppsCsv on a real capture', () => {
  it('keeps Windows process paths with spaces and nulls the memory WDDM cannot attribute', () => {
    const apps = parseComputeAppsCsv(
      asQueriedBy(fixture('nvidia-smi/real/compute-apps-rtx2080s-wddm-591.86.csv'), [
        'gpu_uuid',
        'pid',
        'process_name',
        'used_gpu_memory',
      ]),
    );
    expect(COMPUTE_APPS_FIELDS).toHaveLength(4);
    expect(apps).toHaveLength(10);
    expect(apps[4]).toEqual({
      gpuUuid: 'GPU-00000000-0000-0000-0000-000000000000',
      pid: 20372,
      processName: 'C:\\Program Files\\NZXT CAM\\NZXT CAM.exe',
      usedMemoryMiB: null,
    });
    expect(apps.every((a) => a.usedMemoryMiB === null)).toBe(true);
  });
});

describe('parseSmiXml on real captures', () => {
  it('reads both GPUs of a dual RTX A5000 on driver 590 (schema v13, gpu_power_readings)', () => {
    const s = parseSmiXml(fixture('nvidia-smi/real/q-x-dual-a5000-590.44.01.xml'));
    expect(s.driverVersion).toBe('590.44.01');
    expect(s.cudaVersion).toBe('13.1');
    expect(s.gpus.map((g) => [g.pciBusId, g.uuid])).toEqual([
      ['00000000:81:00.0', 'GPU-12345678-aaaa-bbbb-cccc-0123456789ab'],
      ['00000000:C1:00.0', 'GPU-12345678-aaaa-bbbb-cccc-0123456789cd'],
    ]);
    expect(s.gpus[1]).toEqual(
      idleAmpereGpu({
        pciBusId: '00000000:C1:00.0',
        productName: 'NVIDIA RTX A5000',
        uuid: 'GPU-12345678-aaaa-bbbb-cccc-0123456789cd',
        powerLimitW: 230,
        maxMemMHz: 8001,
        recoveryAction: 'none',
      }),
    );
    expect(s.gpus[0]?.recoveryAction).toBe('none');
  });

  it('reads an A100 in MIG mode on 510 (schema v11, power_readings) and not a MIG device for the GPU', () => {
    const [g, ...rest] = parseSmiXml(fixture('nvidia-smi/real/q-x-a100-sxm4-mig-510.47.03.xml')).gpus;
    expect(rest).toEqual([]);
    expect(g).toMatchObject({
      pciBusId: '00000000:00:04.0',
      productName: 'NVIDIA A100-SXM4-40GB',
      uuid: 'GPU-27b94a00-ed54-5c24-b1fd-1054085de32a',
      persistenceMode: 'Disabled',
      powerLimitW: 400,
      enforcedPowerLimitW: 400,
      clocks: { graphicsMHz: 1410, smMHz: 1410, memMHz: 1215 },
    });
  });

  it('reads a trimmed GTX 1070 Ti document with N/A power and no driver version', () => {
    const s = parseSmiXml(fixture('nvidia-smi/real/q-x-gtx-1070-ti.xml'));
    expect(s.driverVersion).toBeNull();
    expect(s.gpus[0]).toMatchObject({
      productName: 'GeForce GTX 1070 Ti',
      powerLimitW: null,
      enforcedPowerLimitW: null,
      clocks: { graphicsMHz: 135, smMHz: 135, memMHz: 405 },
      maxClocks: { graphicsMHz: null, smMHz: null, memMHz: null },
    });
  });
});
