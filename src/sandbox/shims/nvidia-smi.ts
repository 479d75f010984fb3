/**
 * `nvidia-smi` for the sandbox node: --query-gpu / --query-compute-apps CSV (field list and order honoured, units
 * and headers as the real tool prints them), -q / -q -x, -L, the summary table and --gpu-reset, against the node's
 * simulated GPUs ($GPUOPS_SANDBOX_STATE). A GPU that fell off the bus (Xid 79) makes NVML calls fail with exit 15
 * (NVML_ERROR_GPU_IS_LOST), as the real tool does.
 */
import { RECOVERY_ACTION_WORDS } from '../../domain/driver-verdict';
import type { GpuSim, SandboxState } from '../state';
import * as core from './lib/core';
import { err, loadState, out } from './lib/shim';

const NA = '[N/A]';
const EXIT_GPU_LOST = 15;

const COMPUTE_CAP: Readonly<Record<string, string>> = {
  Ampere: '8.6',
  'Ada Lovelace': '8.9',
  Blackwell: '12.0',
  Hopper: '9.0',
};
const DEVICE_ID: Readonly<Record<string, string>> = {
  'NVIDIA RTX A4000': '0x24B010DE',
  'NVIDIA GeForce RTX 3090': '0x220410DE',
  'NVIDIA GeForce RTX 5090': '0x2B8510DE',
};

function lostMessage(gpu: GpuSim): string {
  return `Unable to determine the device handle for GPU ${gpu.pciBusId.slice(4)}: GPU is lost. Reboot the system to recover this GPU`;
}

function smiTimestamp(now: number): string {
  const d = new Date(now);
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  return `${d.getFullYear()}/${p(d.getMonth() + 1)}/${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function ctimeStamp(now: number): string {
  const s = new Date(now).toString(); // "Wed May 01 2024 10:00:00 GMT+0000 (...)"
  const [dow, mon, day, year, time] = s.split(' ');
  return `${dow} ${mon} ${String(Number(day)).padStart(2, ' ')} ${time} ${year}`;
}

/** Live readings of one GPU: memory, utilization, P-state and power follow the engines using it. */
function readings(state: SandboxState, gpu: GpuSim, now: number) {
  const apps = core.computeApps(state, gpu.index, now);
  const busy = apps.length > 0;
  const used = core.gpuMemoryUsed(state, gpu, now);
  const reserved = Math.round(gpu.memoryTotalMiB * 0.0161);
  const free = Math.max(0, gpu.memoryTotalMiB - reserved - used);
  const util = busy ? 2 + (Math.floor(now / 1000) % 5) : 0;
  return {
    apps,
    used,
    reserved,
    free,
    util,
    memUtil: busy ? 1 : 0,
    pstate: busy ? 'P2' : 'P8',
    powerDraw: busy ? gpu.powerDrawW * 2.4 : gpu.powerDrawW,
    temp: busy ? gpu.temperatureC + 6 : gpu.temperatureC,
    reasons: busy ? '0x0000000000000000' : '0x0000000000000001',
    clocks: busy ? { gr: 1560, sm: 1560, mem: 7000 } : { gr: 210, sm: 210, mem: 405 },
  };
}

type Readings = ReturnType<typeof readings>;

const w = (n: number): string => n.toFixed(2);

/** What a --query-gpu field reads. */
interface GpuCtx {
  state: SandboxState;
  gpu: GpuSim;
  now: number;
  r: Readings;
}

/** A field's value: null prints [N/A]. */
type Value = string | number | null;

/** A --query-* field: the unit its header names, and how it reads its value from the row's context. */
interface Field<C> {
  unit: string | null;
  v: (c: C) => Value;
}

/** A CSV column of a --query-* run: a field under its header. */
interface Column<C> extends Field<C> {
  header: string;
}

/** A --query-gpu field that only GPUs with ECC have: [N/A] on the others. */
function withEcc(read: (gpu: GpuSim) => Value): Field<GpuCtx> {
  return { unit: null, v: (c) => (c.gpu.eccSupported ? read(c.gpu) : null) };
}

/** How nvidia-smi prints a flag. */
const yesNo = (b: boolean): string => (b ? 'Yes' : 'No');

/**
 * --query-gpu fields: header unit, and the value. Only the fields gpuops and operators commonly ask for; others are
 * rejected like an unknown field.
 */
const GPU_FIELDS: Readonly<Record<string, Field<GpuCtx>>> = {
  timestamp: { unit: null, v: (c) => smiTimestamp(c.now) },
  driver_version: { unit: null, v: (c) => c.state.host.driverVersion },
  count: { unit: null, v: (c) => c.state.gpus.length },
  name: { unit: null, v: (c) => c.gpu.name },
  serial: { unit: null, v: (c) => c.gpu.serial },
  uuid: { unit: null, v: (c) => c.gpu.uuid },
  'pci.bus_id': { unit: null, v: (c) => c.gpu.pciBusId },
  'pci.domain': { unit: null, v: (c) => `0x${c.gpu.pciBusId.slice(0, 8).slice(-4)}` },
  'pci.bus': { unit: null, v: (c) => `0x${c.gpu.pciBusId.split(':')[1] ?? ''}` },
  'pci.device': { unit: null, v: () => '0x00' },
  'pci.device_id': { unit: null, v: (c) => DEVICE_ID[c.gpu.name] ?? '0x24B010DE' },
  index: { unit: null, v: (c) => c.gpu.index },
  vbios_version: { unit: null, v: (c) => c.gpu.vbios },
  display_mode: { unit: null, v: () => 'Disabled' },
  display_active: { unit: null, v: () => 'Disabled' },
  persistence_mode: { unit: null, v: () => 'Disabled' },
  pstate: { unit: null, v: (c) => c.r.pstate },
  'fan.speed': { unit: '%', v: (c) => c.gpu.fanPct },
  'memory.total': { unit: 'MiB', v: (c) => c.gpu.memoryTotalMiB },
  'memory.reserved': { unit: 'MiB', v: (c) => c.r.reserved },
  'memory.used': { unit: 'MiB', v: (c) => c.r.used },
  'memory.free': { unit: 'MiB', v: (c) => c.r.free },
  compute_mode: { unit: null, v: () => 'Default' },
  compute_cap: { unit: null, v: (c) => COMPUTE_CAP[c.gpu.architecture] ?? '8.6' },
  'utilization.gpu': { unit: '%', v: (c) => c.r.util },
  'utilization.memory': { unit: '%', v: (c) => c.r.memUtil },
  'ecc.mode.current': withEcc(() => 'Enabled'),
  'ecc.mode.pending': withEcc(() => 'Enabled'),
  'ecc.errors.corrected.volatile.total': withEcc((g) => g.eccCorrectedVolatile),
  'ecc.errors.uncorrected.volatile.total': withEcc((g) => g.eccUncorrectedVolatile),
  'ecc.errors.corrected.aggregate.total': withEcc((g) => g.eccCorrectedVolatile),
  'ecc.errors.uncorrected.aggregate.total': withEcc((g) => g.eccUncorrectedAggregate),
  // Ampere and later replaced page retirement with row remapping: the retired_pages fields read [N/A].
  'retired_pages.single_bit_ecc.count': { unit: null, v: () => null },
  'retired_pages.double_bit.count': { unit: null, v: () => null },
  'retired_pages.pending': { unit: null, v: () => null },
  'remapped_rows.correctable': withEcc(() => 0),
  'remapped_rows.uncorrectable': withEcc((g) => g.remappedRowsUncorrectable),
  'remapped_rows.pending': withEcc((g) => yesNo(g.remappedRowsPending)),
  'remapped_rows.failure': withEcc((g) => yesNo(g.remappedRowsFailure)),
  'temperature.gpu': { unit: null, v: (c) => c.r.temp },
  'temperature.memory': { unit: null, v: () => null },
  'power.management': { unit: null, v: () => 'Enabled' },
  'power.draw': { unit: 'W', v: (c) => w(c.r.powerDraw) },
  'power.draw.instant': { unit: 'W', v: (c) => w(c.r.powerDraw + 0.37) },
  'power.draw.average': { unit: 'W', v: (c) => w(c.r.powerDraw) },
  'power.limit': { unit: 'W', v: (c) => w(c.gpu.powerLimitW) },
  'enforced.power.limit': { unit: 'W', v: (c) => w(c.gpu.powerLimitW) },
  'power.default_limit': { unit: 'W', v: (c) => w(c.gpu.powerLimitW) },
  'power.min_limit': { unit: 'W', v: (c) => w(Math.round(c.gpu.powerLimitW * 0.71)) },
  'power.max_limit': { unit: 'W', v: (c) => w(c.gpu.powerLimitW) },
  'clocks.current.graphics': { unit: 'MHz', v: (c) => c.r.clocks.gr },
  'clocks.gr': { unit: 'MHz', v: (c) => c.r.clocks.gr },
  'clocks.current.sm': { unit: 'MHz', v: (c) => c.r.clocks.sm },
  'clocks.sm': { unit: 'MHz', v: (c) => c.r.clocks.sm },
  'clocks.current.memory': { unit: 'MHz', v: (c) => c.r.clocks.mem },
  'clocks.mem': { unit: 'MHz', v: (c) => c.r.clocks.mem },
  'clocks.max.graphics': { unit: 'MHz', v: () => 2100 },
  'clocks.max.sm': { unit: 'MHz', v: () => 2100 },
  'clocks.max.memory': { unit: 'MHz', v: () => 7001 },
  'clocks_event_reasons.active': { unit: null, v: (c) => c.r.reasons },
  'clocks_throttle_reasons.active': { unit: null, v: (c) => c.r.reasons },
  'clocks_event_reasons.gpu_idle': { unit: null, v: (c) => (c.r.apps.length === 0 ? 'Active' : 'Not Active') },
  'clocks_event_reasons.hw_slowdown': { unit: null, v: () => 'Not Active' },
  'clocks_event_reasons.sw_thermal_slowdown': { unit: null, v: () => 'Not Active' },
  'clocks_event_reasons.sw_power_cap': { unit: null, v: () => 'Not Active' },
  'mig.mode.current': { unit: null, v: () => null },
  'mig.mode.pending': { unit: null, v: () => null },
  gpu_recovery_action: { unit: null, v: (c) => recoveryWords(c.gpu) },
};

/** Fields a driver knows only from a release on: an older simulated driver rejects them like an unknown field. */
const FIELD_SINCE_DRIVER: Readonly<Record<string, number>> = {
  gpu_recovery_action: core.RECOVERY_ACTION_SINCE_DRIVER,
};

/** The driver's verdict as nvidia-smi prints it; a state file from before the sandbox had it reads None. */
function recoveryWords(gpu: GpuSim): string {
  return RECOVERY_ACTION_WORDS[gpu.recoveryAction ?? 'none'];
}

/** Whether the simulated driver reports the driver's verdict at all (R565+). */
function reportsRecoveryAction(state: SandboxState): boolean {
  return core.driverMajor(state) >= core.RECOVERY_ACTION_SINCE_DRIVER;
}
const GPU_FIELD_ALIASES: Readonly<Record<string, string>> = {
  gpu_name: 'name',
  gpu_serial: 'serial',
  gpu_uuid: 'uuid',
  gpu_bus_id: 'pci.bus_id',
  'pci.device_id': 'pci.device_id',
};

/** What a --query-compute-apps field reads. */
interface AppCtx {
  gpu: GpuSim;
  app: core.ComputeApp;
  now: number;
}

const APP_FIELDS: Readonly<Record<string, Column<AppCtx>>> = {
  timestamp: { header: 'timestamp', unit: null, v: (c) => smiTimestamp(c.now) },
  gpu_name: { header: 'gpu_name', unit: null, v: (c) => c.gpu.name },
  gpu_bus_id: { header: 'gpu_bus_id', unit: null, v: (c) => c.gpu.pciBusId },
  gpu_serial: { header: 'gpu_serial', unit: null, v: (c) => c.gpu.serial },
  gpu_uuid: { header: 'gpu_uuid', unit: null, v: (c) => c.gpu.uuid },
  pid: { header: 'pid', unit: null, v: (c) => c.app.pid },
  process_name: { header: 'process_name', unit: null, v: (c) => c.app.processName },
  name: { header: 'process_name', unit: null, v: (c) => c.app.processName },
  used_memory: { header: 'used_gpu_memory', unit: 'MiB', v: (c) => c.app.usedMiB },
  used_gpu_memory: { header: 'used_gpu_memory', unit: 'MiB', v: (c) => c.app.usedMiB },
};

interface CsvFormat {
  header: boolean;
  units: boolean;
}

function parseFormat(spec: string | undefined): CsvFormat | null {
  if (spec === undefined) return null;
  const parts = spec.split(',').map((p) => p.trim());
  if (parts[0] !== 'csv') return null;
  return { header: !parts.includes('noheader'), units: !parts.includes('nounits') };
}

function fmt(value: Value, unit: string | null, fmtOpts: CsvFormat): string {
  if (value === null) return NA;
  return unit && fmtOpts.units ? `${value} ${unit}` : String(value);
}

/** GPUs selected by -i/--id (index, UUID or PCI bus id, comma-separated), or all. */
function selectGpus(state: SandboxState, idSpec: string | undefined): { gpus: GpuSim[]; error: string | null } {
  if (idSpec === undefined) return { gpus: state.gpus, error: null };
  const picked: GpuSim[] = [];
  for (const id of idSpec.split(',')) {
    const t = id.trim();
    const g = state.gpus.find(
      (x) =>
        String(x.index) === t ||
        x.uuid === t ||
        x.pciBusId.toLowerCase() === t.toLowerCase() ||
        x.pciBusId.slice(4).toLowerCase() === t.toLowerCase(),
    );
    if (!g) return { gpus: [], error: `No devices were found` };
    picked.push(g);
  }
  return { gpus: picked, error: null };
}

function fieldList(spec: string): string[] {
  return spec
    .split(',')
    .map((f) => f.trim())
    .filter(Boolean);
}

/**
 * A --query-gpu or --query-compute-apps run: an unknown field fails the whole query (exit 2) as the real tool does;
 * then the header, if asked for, and each selected GPU's rows. A lost GPU prints its error on stderr instead of rows
 * and the run exits 15.
 */
function queryCsv<C>(
  spec: string,
  fmtOpts: CsvFormat,
  gpus: GpuSim[],
  column: (field: string) => Column<C> | undefined,
  rows: (gpu: GpuSim) => C[],
): number {
  const columns: Column<C>[] = [];
  for (const f of fieldList(spec)) {
    const d = column(f);
    if (!d) {
      out(`Field "${f}" is not a valid field to query.\n\n`);
      return 2;
    }
    columns.push(d);
  }
  if (fmtOpts.header) out(`${columns.map((d) => (d.unit ? `${d.header} [${d.unit}]` : d.header)).join(', ')}\n`);
  let code = 0;
  for (const gpu of gpus) {
    if (gpu.lost) {
      err(`${lostMessage(gpu)}\n`);
      code = EXIT_GPU_LOST;
      continue;
    }
    for (const c of rows(gpu)) out(`${columns.map((d) => fmt(d.v(c), d.unit, fmtOpts)).join(', ')}\n`);
  }
  return code;
}

/** --query-gpu: one row per GPU; the header names each field as it was asked for (an alias stays an alias). */
function queryGpu(state: SandboxState, spec: string, fmtOpts: CsvFormat, gpus: GpuSim[], now: number): number {
  return queryCsv<GpuCtx>(
    spec,
    fmtOpts,
    gpus,
    (f) => {
      const name = GPU_FIELD_ALIASES[f] ?? f;
      const d = core.driverMajor(state) >= (FIELD_SINCE_DRIVER[name] ?? 0) ? GPU_FIELDS[name] : undefined;
      return d && { header: f, ...d };
    },
    (gpu) => [{ state, gpu, now, r: readings(state, gpu, now) }],
  );
}

/** --query-compute-apps: one row per process holding memory on a GPU. */
function queryApps(state: SandboxState, spec: string, fmtOpts: CsvFormat, gpus: GpuSim[], now: number): number {
  return queryCsv<AppCtx>(
    spec,
    fmtOpts,
    gpus,
    (f) => APP_FIELDS[f],
    (gpu) => core.computeApps(state, gpu.index, now).map((app) => ({ gpu, app, now })),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// -q / -q -x: one tree, rendered as XML (nvsmi_device_v12.dtd) or as the indented text report.

/** An element of the -q tree: a leaf's text, or its children. */
type TreeNode = [tag: string, value: string | TreeNode[]];

function gpuTree(state: SandboxState, gpu: GpuSim, now: number): TreeNode[] {
  const r = readings(state, gpu, now);
  const eccOk = gpu.eccSupported;
  const ecc = (v: number): string => (eccOk ? String(v) : 'N/A');
  /** One ECC counter set (volatile or aggregate): SRAM clean, DRAM as the simulated GPU counts it. */
  const eccCounters = (corrected: number, uncorrected: number): TreeNode[] => [
    ['sram_correctable', ecc(0)],
    ['sram_uncorrectable_parity', ecc(0)],
    ['sram_uncorrectable_secded', ecc(0)],
    ['dram_correctable', ecc(corrected)],
    ['dram_uncorrectable', ecc(uncorrected)],
  ];
  const [, bus = ''] = gpu.pciBusId.split(':');
  const reason = (bit: string): string =>
    r.reasons === '0x0000000000000001' && bit === 'gpu_idle' ? 'Active' : 'Not Active';
  return [
    ['product_name', gpu.name],
    ['product_brand', gpu.name.includes('GeForce') ? 'GeForce' : 'NVIDIA RTX'],
    ['product_architecture', gpu.architecture],
    ['display_mode', 'Disabled'],
    ['display_active', 'Disabled'],
    ['persistence_mode', 'Disabled'],
    ['addressing_mode', 'None'],
    [
      'mig_mode',
      [
        ['current_mig', 'N/A'],
        ['pending_mig', 'N/A'],
      ],
    ],
    ['mig_devices', 'None'],
    ['accounting_mode', 'Disabled'],
    ['accounting_mode_buffer_size', '4000'],
    [
      'driver_model',
      [
        ['current_dm', 'N/A'],
        ['pending_dm', 'N/A'],
      ],
    ],
    ['serial', gpu.serial],
    ['uuid', gpu.uuid],
    ['minor_number', String(gpu.index)],
    ['vbios_version', gpu.vbios],
    ['multigpu_board', 'No'],
    ['board_id', `0x${(0x100 * (gpu.index + 1)).toString(16)}`],
    ['board_part_number', '900-5G190-2200-000'],
    ['gpu_part_number', '24B0-875-A1'],
    ['gpu_fru_part_number', 'N/A'],
    ['gpu_module_id', '1'],
    [
      'inforom_version',
      [
        ['img_version', 'G190.0500.00.01'],
        ['oem_object', '2.0'],
        ['ecc_object', eccOk ? '6.16' : 'N/A'],
        ['pwr_object', 'N/A'],
      ],
    ],
    [
      'gpu_operation_mode',
      [
        ['current_gom', 'N/A'],
        ['pending_gom', 'N/A'],
      ],
    ],
    [
      'gpu_virtualization_mode',
      [
        ['virtualization_mode', 'Pass-Through'],
        ['host_vgpu_mode', 'N/A'],
      ],
    ],
    // Drivers R565+ print the verdict right after the virtualization mode (`GPU Recovery Action : None` in -q).
    ...(reportsRecoveryAction(state) ? [['gpu_recovery_action', recoveryWords(gpu)] satisfies TreeNode] : []),
    [
      'pci',
      [
        ['pci_bus', bus],
        ['pci_device', '00'],
        ['pci_domain', '0000'],
        ['pci_base_class', '3'],
        ['pci_sub_class', '0'],
        ['pci_device_id', (DEVICE_ID[gpu.name] ?? '0x24B010DE').slice(2)],
        ['pci_bus_id', gpu.pciBusId],
        ['pci_sub_system_id', '14AD10DE'],
        [
          'pci_gpu_link_info',
          [
            [
              'pcie_gen',
              [
                ['max_link_gen', '4'],
                ['current_link_gen', r.apps.length ? '4' : '1'],
                ['device_current_link_gen', r.apps.length ? '4' : '1'],
                ['max_device_link_gen', '4'],
                ['max_host_link_gen', '4'],
              ],
            ],
            [
              'link_widths',
              [
                ['max_link_width', '16x'],
                ['current_link_width', '16x'],
              ],
            ],
          ],
        ],
        ['replay_counter', '0'],
        ['replay_rollover_counter', '0'],
        ['tx_util', '0 KB/s'],
        ['rx_util', '0 KB/s'],
      ],
    ],
    ['fan_speed', gpu.fanPct === null ? 'N/A' : `${gpu.fanPct} %`],
    ['performance_state', r.pstate],
    [
      'clocks_event_reasons',
      [
        'gpu_idle',
        'applications_clocks_setting',
        'sw_power_cap',
        'hw_slowdown',
        'hw_thermal_slowdown',
        'hw_power_brake_slowdown',
        'sync_boost',
        'sw_thermal_slowdown',
        'display_clocks_setting',
      ].map((b): TreeNode => [`clocks_event_reason_${b}`, reason(b)]),
    ],
    ['sparse_operation_mode', 'N/A'],
    [
      'fb_memory_usage',
      [
        ['total', `${gpu.memoryTotalMiB} MiB`],
        ['reserved', `${r.reserved} MiB`],
        ['used', `${r.used} MiB`],
        ['free', `${r.free} MiB`],
      ],
    ],
    [
      'bar1_memory_usage',
      [
        ['total', '256 MiB'],
        ['used', '1 MiB'],
        ['free', '255 MiB'],
      ],
    ],
    [
      'cc_protected_memory_usage',
      [
        ['total', '0 MiB'],
        ['used', '0 MiB'],
        ['free', '0 MiB'],
      ],
    ],
    ['compute_mode', 'Default'],
    [
      'utilization',
      [
        ['gpu_util', `${r.util} %`],
        ['memory_util', `${r.memUtil} %`],
        ['encoder_util', '0 %'],
        ['decoder_util', '0 %'],
        ['jpeg_util', '0 %'],
        ['ofa_util', '0 %'],
      ],
    ],
    [
      'encoder_stats',
      [
        ['session_count', '0'],
        ['average_fps', '0'],
        ['average_latency', '0'],
      ],
    ],
    [
      'fbc_stats',
      [
        ['session_count', '0'],
        ['average_fps', '0'],
        ['average_latency', '0'],
      ],
    ],
    [
      'ecc_mode',
      [
        ['current_ecc', eccOk ? 'Enabled' : 'N/A'],
        ['pending_ecc', eccOk ? 'Enabled' : 'N/A'],
      ],
    ],
    [
      'ecc_errors',
      [
        ['volatile', eccCounters(gpu.eccCorrectedVolatile, gpu.eccUncorrectedVolatile)],
        ['aggregate', eccCounters(gpu.eccCorrectedVolatile, gpu.eccUncorrectedAggregate)],
      ],
    ],
    [
      'retired_pages',
      [
        [
          'multiple_single_bit_retirement',
          [
            ['retired_count', 'N/A'],
            ['retired_pagelist', 'N/A'],
          ],
        ],
        [
          'double_bit_retirement',
          [
            ['retired_count', 'N/A'],
            ['retired_pagelist', 'N/A'],
          ],
        ],
        ['pending_blacklist', 'N/A'],
        ['pending_retirement', 'N/A'],
      ],
    ],
    [
      'remapped_rows',
      eccOk
        ? [
            ['remapped_row_corr', '0'],
            ['remapped_row_unc', String(gpu.remappedRowsUncorrectable)],
            ['remapped_row_pending', yesNo(gpu.remappedRowsPending)],
            ['remapped_row_failure', yesNo(gpu.remappedRowsFailure)],
          ]
        : 'N/A',
    ],
    [
      'temperature',
      [
        ['gpu_temp', `${r.temp} C`],
        ['gpu_temp_tlimit', 'N/A'],
        ['gpu_temp_max_threshold', '98 C'],
        ['gpu_temp_slow_threshold', '95 C'],
        ['gpu_temp_max_gpu_threshold', '93 C'],
        ['gpu_target_temperature', '83 C'],
        ['memory_temp', 'N/A'],
        ['gpu_temp_max_mem_threshold', 'N/A'],
      ],
    ],
    [
      'supported_gpu_target_temp',
      [
        ['gpu_target_temp_min', '65 C'],
        ['gpu_target_temp_max', '91 C'],
      ],
    ],
    [
      'gpu_power_readings',
      [
        ['power_state', r.pstate],
        ['average_power_draw', `${w(r.powerDraw)} W`],
        ['instant_power_draw', `${w(r.powerDraw + 0.37)} W`],
        ['current_power_limit', `${w(gpu.powerLimitW)} W`],
        ['requested_power_limit', `${w(gpu.powerLimitW)} W`],
        ['default_power_limit', `${w(gpu.powerLimitW)} W`],
        ['min_power_limit', `${w(Math.round(gpu.powerLimitW * 0.71))} W`],
        ['max_power_limit', `${w(gpu.powerLimitW)} W`],
      ],
    ],
    [
      'gpu_memory_power_readings',
      [
        ['average_power_draw', 'N/A'],
        ['instant_power_draw', 'N/A'],
      ],
    ],
    ['power_smoothing', 'N/A'],
    [
      'clocks',
      [
        ['graphics_clock', `${r.clocks.gr} MHz`],
        ['sm_clock', `${r.clocks.sm} MHz`],
        ['mem_clock', `${r.clocks.mem} MHz`],
        ['video_clock', r.apps.length ? '1395 MHz' : '555 MHz'],
      ],
    ],
    [
      'applications_clocks',
      [
        ['graphics_clock', '1560 MHz'],
        ['mem_clock', '7001 MHz'],
      ],
    ],
    [
      'default_applications_clocks',
      [
        ['graphics_clock', '1560 MHz'],
        ['mem_clock', '7001 MHz'],
      ],
    ],
    ['deferred_clocks', [['mem_clock', 'N/A']]],
    [
      'max_clocks',
      [
        ['graphics_clock', '2100 MHz'],
        ['sm_clock', '2100 MHz'],
        ['mem_clock', '7001 MHz'],
        ['video_clock', '1950 MHz'],
      ],
    ],
    ['max_customer_boost_clocks', [['graphics_clock', 'N/A']]],
    [
      'clock_policy',
      [
        ['auto_boost', 'N/A'],
        ['auto_boost_default', 'N/A'],
      ],
    ],
    [
      'fabric',
      [
        ['state', 'N/A'],
        ['status', 'N/A'],
      ],
    ],
    [
      'processes',
      r.apps.map((a): TreeNode => [
        'process_info',
        [
          ['gpu_instance_id', 'N/A'],
          ['compute_instance_id', 'N/A'],
          ['pid', String(a.pid)],
          ['type', 'C'],
          ['process_name', a.processName],
          ['used_memory', `${a.usedMiB} MiB`],
        ],
      ]),
    ],
    ['accounted_processes', []],
  ];
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function renderXml(nodes: TreeNode[], depth: number): string {
  const tab = '\t'.repeat(depth);
  let s = '';
  for (const [tag, value] of nodes) {
    if (Array.isArray(value)) {
      s += `${tab}<${tag}>\n${renderXml(value, depth + 1)}${tab}</${tag}>\n`;
    } else {
      s += `${tab}<${tag}>${xmlEscape(value)}</${tag}>\n`;
    }
  }
  return s;
}

const UPPER_WORDS = ['pci', 'gpu', 'ecc', 'fb', 'bar1', 'mig', 'id', 'uuid', 'vbios', 'sm', 'dm'];

function title(tag: string): string {
  return tag
    .split('_')
    .map((p) => (UPPER_WORDS.includes(p) ? p.toUpperCase() : p.charAt(0).toUpperCase() + p.slice(1)))
    .join(' ');
}

function renderText(nodes: TreeNode[], depth: number): string {
  let s = '';
  const pad = '    '.repeat(depth);
  for (const [tag, value] of nodes) {
    const label = `${pad}${title(tag)}`;
    if (Array.isArray(value)) {
      s += value.length === 0 ? `${label.padEnd(42)}: None\n` : `${label}\n${renderText(value, depth + 1)}`;
    } else {
      s += `${label.padEnd(42)}: ${value}\n`;
    }
  }
  return s;
}

function query(state: SandboxState, gpus: GpuSim[], xml: boolean, now: number): number {
  const healthy = gpus.filter((g) => !g.lost);
  let code = 0;
  for (const g of gpus) {
    if (g.lost) {
      err(`${lostMessage(g)}\n`);
      code = EXIT_GPU_LOST;
    }
  }
  if (xml) {
    let s = '<?xml version="1.0" ?>\n<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">\n<nvidia_smi_log>\n';
    s += `\t<timestamp>${ctimeStamp(now)}</timestamp>\n\t<driver_version>${state.host.driverVersion}</driver_version>\n\t<cuda_version>${state.host.cudaVersion}</cuda_version>\n\t<attached_gpus>${state.gpus.length}</attached_gpus>\n`;
    for (const g of healthy) s += `\t<gpu id="${g.pciBusId}">\n${renderXml(gpuTree(state, g, now), 2)}\t</gpu>\n\n`;
    s += '</nvidia_smi_log>\n';
    out(s);
  } else {
    let s = `\n==============NVSMI LOG==============\n\n${'Timestamp'.padEnd(42)}: ${ctimeStamp(now)}\n${'Driver Version'.padEnd(42)}: ${state.host.driverVersion}\n${'CUDA Version'.padEnd(42)}: ${state.host.cudaVersion}\n\n${'Attached GPUs'.padEnd(42)}: ${state.gpus.length}\n`;
    for (const g of healthy) s += `GPU ${g.pciBusId}\n${renderText(gpuTree(state, g, now), 1)}\n`;
    out(s);
  }
  return code;
}

function table(state: SandboxState, now: number): number {
  const lost = state.gpus.find((g) => g.lost);
  if (lost) {
    out(`${lostMessage(lost)}\n`);
    return EXIT_GPU_LOST;
  }
  const bar = '+-----------------------------------------+------------------------+----------------------+';
  let s = `${ctimeStamp(now)}       \n+-----------------------------------------------------------------------------------------+\n`;
  s += `| NVIDIA-SMI ${state.host.driverVersion}             Driver Version: ${state.host.driverVersion}     CUDA Version: ${state.host.cudaVersion}     |\n`;
  s += '|-----------------------------------------+------------------------+----------------------+\n';
  s += '| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |\n';
  s += '| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |\n';
  s += '|                                         |                        |               MIG M. |\n';
  s += '|=========================================+========================+======================|\n';
  const procs: (core.ComputeApp & { gpu: number })[] = [];
  for (const g of state.gpus) {
    const r = readings(state, g, now);
    const ecc = g.eccSupported ? String(g.eccUncorrectedVolatile) : 'N/A';
    s += `|${String(g.index).padStart(4)}  ${g.name.slice(0, 31).padEnd(31)}Off |   ${g.pciBusId} Off | ${ecc.padStart(20)} |\n`;
    const fan = g.fanPct === null ? 'N/A' : `${g.fanPct}%`;
    const pwr = `${Math.round(r.powerDraw)}W / ${String(Math.round(g.powerLimitW)).padStart(4)}W`;
    const mem = `${r.used}MiB / ${String(g.memoryTotalMiB).padStart(6)}MiB`;
    s += `|${fan.padStart(4)}   ${`${r.temp}C`.padStart(3)}    ${r.pstate}${pwr.padStart(24)} |${mem.padStart(23)} |${`${r.util}%`.padStart(8)}      Default |\n`;
    s += '|                                         |                        |                  N/A |\n';
    s += `${bar}\n`;
    for (const a of r.apps) procs.push({ gpu: g.index, ...a });
  }
  s += '\n+-----------------------------------------------------------------------------------------+\n';
  s += '| Processes:                                                                              |\n';
  s += '|  GPU   GI   CI        PID   Type   Process name                              GPU Memory |\n';
  s += '|        ID   ID                                                               Usage      |\n';
  s += '|=========================================================================================|\n';
  if (procs.length === 0)
    s += '|  No running processes found                                                             |\n';
  for (const p of procs) {
    s += `|  ${String(p.gpu).padStart(3)}   N/A  N/A  ${String(p.pid).padStart(9)}      C   ${p.processName.padEnd(40)} ${`${p.usedMiB}MiB`.padStart(9)} |\n`;
  }
  s += '+-----------------------------------------------------------------------------------------+\n';
  out(s);
  return 0;
}

/**
 * --gpu-reset: refused while any process holds the GPU (the engine containers must be stopped first), impossible
 * on a GPU that fell off the bus. Success clears volatile ECC counts, applies a pending row remap and answers the
 * driver's Reset / Drain and Reset verdict (a Reboot verdict stays: only a reboot answers it).
 */
function gpuReset(file: string, state: SandboxState, idSpec: string | undefined): number {
  const sel = selectGpus(state, idSpec);
  if (sel.error) {
    out(`${sel.error}\n`);
    return 6;
  }
  const now = Date.now();
  const lost = sel.gpus.filter((g) => g.lost);
  if (lost.length > 0) {
    for (const g of lost) err(`${lostMessage(g)}\n`);
    return EXIT_GPU_LOST;
  }
  const busy = sel.gpus.filter((g) => core.computeApps(state, g.index, now).length > 0);
  if (busy.length > 0) {
    let s = 'The following GPUs could not be reset:\n';
    for (const g of busy) s += `  GPU ${g.pciBusId}: In use by another client\n`;
    s += `\n${busy.length} device${busy.length > 1 ? 's are' : ' is'} currently being used by one or more other processes (e.g. Fabric Manager, CUDA application, graphics application such as an X server, or a monitoring application such as another instance of nvidia-smi). Please first kill all processes using this device and all compute applications running in the system.\n`;
    out(s);
    return 255;
  }
  // A reset takes a moment on real hardware; keep a token delay so callers cannot rely on it being instant.
  core.sleepSync(Math.max(1, 200 * state.sim.timeScale));
  core.updateState(file, (s, t) => {
    for (const picked of sel.gpus) {
      const g = s.gpus.find((x) => x.index === picked.index);
      if (!g || g.lost) continue;
      g.eccUncorrectedVolatile = 0;
      g.eccCorrectedVolatile = 0;
      if (g.remappedRowsPending) {
        g.remappedRowsPending = false;
        g.remappedRowsUncorrectable += 1;
      }
      if (g.recoveryAction === 'reset' || g.recoveryAction === 'drain-and-reset') g.recoveryAction = 'none';
      core.appendKernel(s, t, 'info', `NVRM: GPU at PCI:${core.xidPci(g)}: ${g.uuid}`);
      core.appendKernel(s, t, 'info', `NVRM: GPU Board Serial Number: ${g.serial}`);
    }
  });
  for (const g of sel.gpus) out(`GPU ${g.pciBusId} was successfully reset.\n`);
  return 0;
}

interface SmiOptions {
  q: boolean;
  x: boolean;
  L: boolean;
  reset: boolean;
  queryGpu?: string | undefined;
  queryApps?: string | undefined;
  format?: string | undefined;
  id?: string | undefined;
  unknown?: string;
}

function parseArgv(argv: string[]): SmiOptions {
  const opts: SmiOptions = { q: false, x: false, L: false, reset: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const name = eq >= 0 ? a.slice(0, eq) : a;
    const val = (): string | undefined => (eq >= 0 ? a.slice(eq + 1) : argv[++i]);
    switch (name) {
      case '--query-gpu':
        opts.queryGpu = val();
        break;
      case '--query-compute-apps':
        opts.queryApps = val();
        break;
      case '--format':
        opts.format = val();
        break;
      case '-i':
      case '--id':
        opts.id = val();
        break;
      case '-q':
      case '--query':
        opts.q = true;
        break;
      case '-x':
      case '--xml-format':
        opts.x = true;
        break;
      case '-L':
      case '--list-gpus':
        opts.L = true;
        break;
      case '-r':
      case '--gpu-reset':
        opts.reset = true;
        break;
      case '-qx':
      case '-xq':
        opts.q = true;
        opts.x = true;
        break;
      default:
        if (/^-i\d+$/.test(a)) opts.id = a.slice(2);
        else opts.unknown = a;
    }
  }
  return opts;
}

function main(argv: string[]): number {
  const { file, state } = loadState('nvidia-smi');
  const now = Date.now();
  const opts = parseArgv(argv);
  if (opts.unknown) {
    out(`Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n`);
    return 2;
  }
  if (opts.reset) return gpuReset(file, state, opts.id);
  const sel = selectGpus(state, opts.id);
  if (sel.error) {
    out(`${sel.error}\n`);
    return 6;
  }
  if (opts.queryGpu !== undefined || opts.queryApps !== undefined) {
    const f = parseFormat(opts.format);
    if (!f) {
      out(`'--format' needs to be specified (e.g. --format=csv).\n`);
      return 2;
    }
    return opts.queryGpu !== undefined
      ? queryGpu(state, opts.queryGpu, f, sel.gpus, now)
      : queryApps(state, opts.queryApps ?? '', f, sel.gpus, now);
  }
  if (opts.L) {
    let code = 0;
    for (const g of sel.gpus) {
      if (g.lost) {
        err(`${lostMessage(g)}\n`);
        code = EXIT_GPU_LOST;
      } else {
        out(`GPU ${g.index}: ${g.name} (UUID: ${g.uuid})\n`);
      }
    }
    return code;
  }
  if (opts.q) return query(state, sel.gpus, opts.x, now);
  return table(state, now);
}

process.exitCode = main(process.argv.slice(2));
