/**
 * The nvidia-smi adapter: per-GPU health from `--query-gpu` CSV, compute processes, the `-q -x` XML snapshot (kept
 * raw for backups, with a few facts parsed out) and `--gpu-reset`. The parsers are pure and exported for tests.
 */
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { parseRecoveryAction } from '../domain/driver-verdict';
import { GPU_QUERY_TIMED_OUT, type GpuRecoveryAction, type GpuStatus } from '../domain/health';
import { describeFailure, firstLines, runTool, type ToolResult } from './exec';

/**
 * Fields asked of `nvidia-smi --query-gpu`, in this order. `clocks_event_reasons.active` is the current name of the
 * throttle bitmask; drivers before the rename only know `clocks_throttle_reasons.active` (see LEGACY_REASONS_FIELD).
 * `gpu_recovery_action` is the driver's verdict (R565 and later); older drivers reject it (see FIELD_FALLBACKS).
 */
export const QUERY_GPU_FIELDS = [
  'index',
  'uuid',
  'name',
  'pci.bus_id',
  'driver_version',
  'memory.total',
  'memory.used',
  'memory.free',
  'utilization.gpu',
  'temperature.gpu',
  'power.draw',
  'power.limit',
  'ecc.errors.uncorrected.volatile.total',
  'retired_pages.pending',
  'remapped_rows.pending',
  'remapped_rows.failure',
  'clocks_event_reasons.active',
  'gpu_recovery_action',
] as const;
const REASONS_FIELD = 'clocks_event_reasons.active';
const LEGACY_REASONS_FIELD = 'clocks_throttle_reasons.active';
const RECOVERY_ACTION_FIELD = 'gpu_recovery_action';

/**
 * Fields an older driver may not know, with what to ask instead: the pre-rename name of the throttle bitmask, or
 * nothing (null: drop the field; the GPU's verdict then reads null). Any other rejected field is a real failure.
 */
const FIELD_FALLBACKS: Readonly<Record<string, string | null>> = {
  [REASONS_FIELD]: LEGACY_REASONS_FIELD,
  [RECOVERY_ACTION_FIELD]: null,
};

/**
 * The field list to ask again with after nvidia-smi rejected one (`Field "X" is not a valid field to query.`):
 * exactly that field replaced by its fallback or dropped. null when the output names no field, or one without a
 * fallback, or one not in `fields` (asking again would be refused the same way).
 */
export function fieldsWithoutRejected(fields: readonly string[], output: string): string[] | null {
  const rejected = /Field "([^"]+)" is not a valid field to query/.exec(output)?.[1];
  if (rejected === undefined || !fields.includes(rejected)) return null;
  const fallback = FIELD_FALLBACKS[rejected];
  if (fallback === undefined) return null;
  return fields.flatMap((f) => (f !== rejected ? [f] : fallback === null ? [] : [fallback]));
}

/** NVML clocks event (throttle) reason bits, as defined in nvml.h (nvmlClocksEventReason*). */
export const CLOCKS_EVENT_REASON_BITS: ReadonlyArray<readonly [bigint, string]> = [
  [0x1n, 'gpu_idle'],
  [0x2n, 'applications_clocks_setting'],
  [0x4n, 'sw_power_cap'],
  [0x8n, 'hw_slowdown'],
  [0x10n, 'sync_boost'],
  [0x20n, 'sw_thermal_slowdown'],
  [0x40n, 'hw_thermal_slowdown'],
  [0x80n, 'hw_power_brake_slowdown'],
  [0x100n, 'display_clock_setting'],
];

/** Values nvidia-smi prints when a field has no value for this GPU: treated as null. */
const UNAVAILABLE = new Set(['[N/A]', 'N/A', '[Not Supported]', 'Not Supported', '[Unknown]', '']);
/** Values nvidia-smi prints when the GPU itself could not answer: the GPU is marked lost. */
const LOST_MARKERS = ['ERR!', '[Unknown Error]', '[GPU is lost]', 'GPU is lost', '[GPU requires reset]'];

/** Whole-run failures nvidia-smi reports instead of rows. */
const RUN_FAILURES: readonly RegExp[] = [
  /Unable to determine the device handle for GPU.*$/m,
  /No devices were found/,
  /NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.*$/m,
  /Failed to initialize NVML.*$/m,
  // The sentence form only: "[GPU is lost]" as a field value marks one row lost instead (see parseQueryGpuCsv).
  /^.*GPU is lost\.\s+Reboot the system.*$/m,
];

/** Decode a clocks_event_reasons bitmask ("0x0000000000000024") into reason names; unknown bits are named by value. */
export function decodeClocksEventReasons(mask: string): string[] {
  const m = /^0x([0-9a-fA-F]+)$/.exec(mask.trim());
  if (!m?.[1]) return [];
  let value = BigInt(`0x${m[1]}`);
  const names: string[] = [];
  for (const [bit, name] of CLOCKS_EVENT_REASON_BITS) {
    if (value & bit) names.push(name);
    value &= ~bit;
  }
  for (let bit = 1n; value > 0n; bit <<= 1n) {
    if (value & bit) names.push(`0x${bit.toString(16)}`);
    value &= ~bit;
  }
  return names;
}

function isLostValue(v: string): boolean {
  return LOST_MARKERS.some((m) => v.includes(m));
}

function num(v: string | undefined): number | null {
  if (v === undefined) return null;
  const t = v.trim();
  if (UNAVAILABLE.has(t) || isLostValue(t)) return null;
  // nounits leaves plain numbers; tolerate a unit anyway in case a caller dropped nounits.
  const n = Number.parseFloat(t);
  return Number.isFinite(n) ? n : null;
}

function yesNo(v: string | undefined): boolean | null {
  if (v === undefined) return null;
  const t = v.trim().toLowerCase();
  if (t === 'yes' || t === 'true' || t === '1') return true;
  if (t === 'no' || t === 'false' || t === '0') return false;
  return null;
}

function text(v: string | undefined): string | null {
  if (v === undefined) return null;
  const t = v.trim();
  return UNAVAILABLE.has(t) || isLostValue(t) ? null : t;
}

/** The driver's verdict from its words; words gpuops does not know are kept as recoveryActionRaw. */
function recoveryAction(words: string | null): {
  recoveryAction: GpuRecoveryAction | null;
  recoveryActionRaw?: string;
} {
  const { action, raw } = parseRecoveryAction(words);
  return raw === undefined ? { recoveryAction: action } : { recoveryAction: action, recoveryActionRaw: raw };
}

/** The first line of output that says why nvidia-smi could not report at all, or null. */
export function detectRunFailure(output: string): string | null {
  for (const re of RUN_FAILURES) {
    const m = re.exec(output);
    if (m) return m[0].trim();
  }
  return null;
}

type QueryGpuField = (typeof QUERY_GPU_FIELDS)[number];

/** The numeric GpuStatus properties, each with the --query-gpu field it is read from. */
const NUMBER_COLUMNS = {
  memoryTotalMiB: 'memory.total',
  memoryUsedMiB: 'memory.used',
  memoryFreeMiB: 'memory.free',
  utilizationGpuPct: 'utilization.gpu',
  temperatureC: 'temperature.gpu',
  powerDrawW: 'power.draw',
  powerLimitW: 'power.limit',
  eccUncorrectedVolatile: 'ecc.errors.uncorrected.volatile.total',
} as const satisfies Partial<Record<keyof GpuStatus, QueryGpuField>>;

/** The Yes/No GpuStatus properties, each with the --query-gpu field it is read from. */
const YES_NO_COLUMNS = {
  retiredPagesPending: 'retired_pages.pending',
  remappedRowsPending: 'remapped_rows.pending',
  remappedRowsFailure: 'remapped_rows.failure',
} as const satisfies Partial<Record<keyof GpuStatus, QueryGpuField>>;

/** Each property of `columns` read from its field. */
function readColumns<K extends string, T>(columns: Record<K, string>, read: (field: string) => T): Record<K, T> {
  return Object.fromEntries(Object.entries<string>(columns).map(([k, field]) => [k, read(field)])) as Record<K, T>;
}

/**
 * Parse `--query-gpu=<QUERY_GPU_FIELDS> --format=csv,noheader,nounits` output: one row per GPU, ", "-separated.
 * Rows whose values read ERR! / [Unknown Error] / [GPU is lost] come back with `lost: true`. Lines that are not rows
 * (nvidia-smi's own messages) are ignored here; see parseQueryGpuOutput for whole-run failures.
 */
export function parseQueryGpuCsv(csv: string, fields: readonly string[] = QUERY_GPU_FIELDS): GpuStatus[] {
  const gpus: GpuStatus[] = [];
  for (const line of csv.split(/\r?\n/)) {
    if (line.trim() === '') continue;
    const cols = line.split(',').map((c) => c.trim());
    if (cols.length !== fields.length || !/^\d+$/.test(cols[0] ?? '')) continue;
    const get = (f: string): string | undefined => {
      const i = fields.indexOf(f);
      return i < 0 ? undefined : cols[i];
    };
    const reasons = get(REASONS_FIELD) ?? get(LEGACY_REASONS_FIELD) ?? '';
    gpus.push({
      index: Number(cols[0]),
      uuid: get('uuid') ?? '',
      name: get('name') ?? '',
      pciBusId: get('pci.bus_id') ?? '',
      driverVersion: text(get('driver_version')),
      ...readColumns(NUMBER_COLUMNS, (f) => num(get(f))),
      ...readColumns(YES_NO_COLUMNS, (f) => yesNo(get(f))),
      clocksEventReasons: decodeClocksEventReasons(reasons),
      lost: cols.some(isLostValue),
      ...recoveryAction(text(get(RECOVERY_ACTION_FIELD))),
    });
  }
  return gpus;
}

/** Result of one GPU query: the GPUs, or why nvidia-smi could not report them. */
export interface GpuQueryResult {
  gpus: GpuStatus[];
  /** null when nvidia-smi answered; otherwise its own words ("No devices were found", "... GPU is lost ..."). */
  error: string | null;
}

/**
 * Interpret a whole `--query-gpu` run. A non-zero exit, "GPU is lost", "Unable to determine the device handle" or
 * "No devices were found" is a node-level GPU failure: error set, gpus empty (partial rows would under-report it).
 */
export function parseQueryGpuOutput(
  result: Pick<ToolResult, 'exitCode' | 'stdout' | 'stderr'> &
    Partial<Pick<ToolResult, 'spawnError' | 'timedOut' | 'command'>>,
  fields: readonly string[] = QUERY_GPU_FIELDS,
): GpuQueryResult {
  if (result.spawnError) return { gpus: [], error: `nvidia-smi could not start: ${result.spawnError}` };
  if (result.timedOut) return { gpus: [], error: GPU_QUERY_TIMED_OUT };
  const output = `${result.stdout}\n${result.stderr}`;
  const failure = detectRunFailure(output);
  if (failure !== null) return { gpus: [], error: failure };
  if (result.exitCode !== 0) {
    return {
      gpus: [],
      error: `nvidia-smi exited ${String(result.exitCode)}: ${firstLines(output, 3) || '(no output)'}`,
    };
  }
  return { gpus: parseQueryGpuCsv(result.stdout, fields), error: null };
}

/** One process holding GPU memory, from `--query-compute-apps`. */
export interface ComputeApp {
  gpuUuid: string;
  pid: number;
  processName: string;
  /** MiB; null when nvidia-smi cannot attribute memory (e.g. inside a VM or container without host PIDs). */
  usedMemoryMiB: number | null;
}

/** Fields asked of `--query-compute-apps`, in this order. */
export const COMPUTE_APPS_FIELDS = ['gpu_uuid', 'pid', 'process_name', 'used_memory'] as const;

/** Parse `--query-compute-apps=gpu_uuid,pid,process_name,used_memory --format=csv,noheader,nounits`. */
export function parseComputeAppsCsv(csv: string): ComputeApp[] {
  const apps: ComputeApp[] = [];
  for (const line of csv.split(/\r?\n/)) {
    const cols = line.split(',').map((c) => c.trim());
    // Process names may contain commas: the first two and the last column are fixed, the rest is the name.
    if (cols.length < 4 || !/^\d+$/.test(cols[1] ?? '')) continue;
    apps.push({
      gpuUuid: cols[0] ?? '',
      pid: Number(cols[1]),
      processName: cols.slice(2, -1).join(','),
      usedMemoryMiB: num(cols[cols.length - 1]),
    });
  }
  return apps;
}

/** Facts read out of `nvidia-smi -q -x` for one GPU. */
export interface GpuSnapshotFacts {
  /** PCI bus id from the `<gpu id="...">` attribute, e.g. 00000000:01:00.0. */
  pciBusId: string;
  productName: string | null;
  uuid: string | null;
  persistenceMode: string | null;
  powerLimitW: number | null;
  defaultPowerLimitW: number | null;
  enforcedPowerLimitW: number | null;
  clocks: { graphicsMHz: number | null; smMHz: number | null; memMHz: number | null };
  maxClocks: { graphicsMHz: number | null; smMHz: number | null; memMHz: number | null };
  /** `<gpu_recovery_action>` (R565+): the driver's verdict; null when absent, N/A, or words gpuops does not know. */
  recoveryAction: GpuRecoveryAction | null;
  /** The driver's words when they are not a recovery action gpuops knows. */
  recoveryActionRaw?: string;
}

/** The raw `-q -x` XML (what backups keep) and the facts gpuops reads from it. */
export interface GpuSnapshot {
  xml: string;
  driverVersion: string | null;
  cudaVersion: string | null;
  gpus: GpuSnapshotFacts[];
}

/**
 * `-q -x` as plain objects: every value a string (gpuops reads numbers with their units itself), `<gpu>` always an
 * array, the `id` attribute as `@_id`, entities decoded.
 */
const smiXmlParser = new XMLParser({
  ignoreAttributes: false,
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  isArray: (_name, jpath) => jpath === 'nvidia_smi_log.gpu',
});

/** An element of the parsed document: a text value, or an object of child elements. */
type XmlNode = string | { [tag: string]: XmlNode | XmlNode[] | undefined };

/** The element at `path` under `node` (the first of repeated elements), or undefined. */
function child(node: XmlNode | undefined, ...path: string[]): XmlNode | undefined {
  let cur = node;
  for (const tag of path) {
    if (cur === undefined || typeof cur === 'string') return undefined;
    const next = cur[tag];
    cur = Array.isArray(next) ? next[0] : next;
  }
  return cur;
}

/** Text of the leaf element at `path`, null when absent, empty, not a leaf, or one of nvidia-smi's N/A markers. */
function xmlText(node: XmlNode | undefined, ...path: string[]): string | null {
  const v = child(node, ...path);
  return typeof v === 'string' ? text(v) : null;
}

/** A leaf such as "140.00 W" or "2100 MHz" as its number. */
function xmlNum(node: XmlNode | undefined, ...path: string[]): number | null {
  const t = xmlText(node, ...path);
  return t === null ? null : num(t.replace(/\s*(W|MHz|MiB|C|%)$/, ''));
}

/** Thrown when `nvidia-smi -q -x` printed something that is not a well-formed nvidia_smi_log document. */
export class SmiXmlError extends Error {
  constructor(detail: string) {
    super(`nvidia-smi -q -x printed no valid XML: ${detail}`);
    this.name = 'SmiXmlError';
  }
}

/**
 * Parse the facts gpuops needs from `nvidia-smi -q -x`, with fast-xml-parser: each fact is read at its place in the
 * document (`<gpu>` → `<clocks>` → `<sm_clock>`), never from whichever element of that name comes first. Power
 * limits live in `<gpu_power_readings>` (drivers 535+, `current_power_limit`) or `<power_readings>` (older,
 * `power_limit`). Throws SmiXmlError for a malformed or truncated document (a backup must not keep half of one).
 */
export function parseSmiXml(xml: string): GpuSnapshot {
  const valid = XMLValidator.validate(xml);
  if (valid !== true) throw new SmiXmlError(`line ${valid.err.line}: ${valid.err.msg}`);
  const doc = child(smiXmlParser.parse(xml) as XmlNode, 'nvidia_smi_log');
  if (doc === undefined) throw new SmiXmlError('no <nvidia_smi_log> element');
  const gpuNodes = typeof doc === 'string' ? [] : ((doc.gpu ?? []) as XmlNode[]);
  const gpus: GpuSnapshotFacts[] = gpuNodes.map((g) => {
    const power = child(g, 'gpu_power_readings') ?? child(g, 'power_readings');
    const clocks = child(g, 'clocks');
    const maxClocks = child(g, 'max_clocks');
    const id = typeof g === 'string' ? undefined : g['@_id'];
    return {
      pciBusId: typeof id === 'string' ? id : '',
      productName: xmlText(g, 'product_name'),
      uuid: xmlText(g, 'uuid'),
      persistenceMode: xmlText(g, 'persistence_mode'),
      powerLimitW: xmlNum(power, 'current_power_limit') ?? xmlNum(power, 'power_limit'),
      defaultPowerLimitW: xmlNum(power, 'default_power_limit'),
      enforcedPowerLimitW: xmlNum(power, 'enforced_power_limit') ?? xmlNum(power, 'current_power_limit'),
      clocks: {
        graphicsMHz: xmlNum(clocks, 'graphics_clock'),
        smMHz: xmlNum(clocks, 'sm_clock'),
        memMHz: xmlNum(clocks, 'mem_clock'),
      },
      maxClocks: {
        graphicsMHz: xmlNum(maxClocks, 'graphics_clock'),
        smMHz: xmlNum(maxClocks, 'sm_clock'),
        memMHz: xmlNum(maxClocks, 'mem_clock'),
      },
      ...recoveryAction(xmlText(g, 'gpu_recovery_action')),
    };
  });
  return {
    xml,
    driverVersion: xmlText(doc, 'driver_version'),
    cudaVersion: xmlText(doc, 'cuda_version'),
    gpus,
  };
}

/** Outcome of `nvidia-smi --gpu-reset -i N`. */
export interface GpuResetResult {
  ok: boolean;
  /** Why it failed, when nvidia-smi said so in words gpuops recognises. */
  reason: 'in-use' | 'not-supported' | 'lost' | 'permission' | 'other' | null;
  /** nvidia-smi's own output, trimmed to a few lines. */
  message: string;
}

/**
 * Interpret `--gpu-reset` output. Success prints "GPU 00000000:01:00.0 was successfully reset." (newer drivers add
 * "All done."); a busy GPU prints "... is currently in use by another process." or "The following GPUs could not be
 * reset: ... In use by another client" and exits non-zero.
 */
export function parseGpuResetOutput(exitCode: number | null, output: string): GpuResetResult {
  const message = firstLines(output, 4) || '(no output)';
  if (exitCode === 0 && /successfully reset/i.test(output)) return { ok: true, reason: null, message };
  let reason: GpuResetResult['reason'] = 'other';
  if (/in use by another (?:client|process)|being used by one or more other processes/i.test(output)) reason = 'in-use';
  else if (/not supported|is not supported|cannot be reset|primary GPU/i.test(output)) reason = 'not-supported';
  else if (/GPU is lost|Unable to determine the device handle|fallen off the bus/i.test(output)) reason = 'lost';
  else if (/Insufficient Permissions|root privileges|permission denied/i.test(output)) reason = 'permission';
  else if (exitCode === 0) return { ok: true, reason: null, message };
  return { ok: false, reason, message };
}

/** Options of NvidiaSmi. */
export interface NvidiaSmiOptions {
  /** nvidia-smi binary; looked up on PATH at call time. */
  bin?: string;
  env?: Record<string, string | undefined>;
  /** Per-call timeout; a wedged driver can hang nvidia-smi, so keep it short (default 20 s). */
  timeoutMs?: number;
}

/** The nvidia-smi CLI. */
export class NvidiaSmi {
  private readonly bin: string;
  private readonly env: Record<string, string | undefined> | undefined;
  private readonly timeoutMs: number;
  /**
   * The --query-gpu field list the driver last accepted, and that driver's version: after one probe found which
   * fields it rejects, later probes ask with that list at once. The worker outlives a driver upgrade (it holds no
   * device handle), so a probe that sees another driver version asks with every field again.
   */
  private queryFields: readonly string[] = QUERY_GPU_FIELDS;
  private fieldsLearnedOn: string | null = null;

  constructor(opts: NvidiaSmiOptions = {}) {
    this.bin = opts.bin ?? 'nvidia-smi';
    this.env = opts.env;
    this.timeoutMs = opts.timeoutMs ?? 20_000;
  }

  private run(args: string[], timeoutMs = this.timeoutMs): Promise<ToolResult> {
    return runTool(this.bin, args, { timeoutMs, ...(this.env ? { env: this.env } : {}) });
  }

  /**
   * Health of every GPU. Never throws for a GPU failure: that is what `error` is for. A driver that rejects a field
   * (older than the throttle→event rename, or than the recovery action) is asked again without exactly that field,
   * once per field it lacks; the list it accepted is kept for the next probe of the same driver version.
   */
  async queryGpus(): Promise<GpuQueryResult> {
    let fields = this.queryFields;
    let result = await this.run([`--query-gpu=${fields.join(',')}`, '--format=csv,noheader,nounits']);
    for (
      let next;
      result.exitCode !== 0 && (next = fieldsWithoutRejected(fields, `${result.stdout}${result.stderr}`));
    ) {
      fields = next;
      result = await this.run([`--query-gpu=${fields.join(',')}`, '--format=csv,noheader,nounits']);
    }
    const parsed = parseQueryGpuOutput(result, fields);
    const driver = parsed.gpus[0]?.driverVersion ?? null;
    if (
      fields !== QUERY_GPU_FIELDS &&
      driver !== null &&
      this.fieldsLearnedOn !== null &&
      driver !== this.fieldsLearnedOn
    ) {
      // A new driver may know the fields the old one rejected.
      this.queryFields = QUERY_GPU_FIELDS;
      this.fieldsLearnedOn = null;
      return this.queryGpus();
    }
    if (result.exitCode === 0) {
      this.queryFields = fields;
      this.fieldsLearnedOn = driver;
    }
    return parsed;
  }

  /** Processes holding GPU memory. Throws when nvidia-smi fails. */
  async computeApps(): Promise<ComputeApp[]> {
    const result = await this.run([
      `--query-compute-apps=${COMPUTE_APPS_FIELDS.join(',')}`,
      '--format=csv,noheader,nounits',
    ]);
    if (result.exitCode !== 0) throw new Error(describeFailure(result));
    return parseComputeAppsCsv(result.stdout);
  }

  /** `nvidia-smi -q -x`: the full XML plus parsed facts. Throws when nvidia-smi fails. */
  async snapshotXml(): Promise<GpuSnapshot> {
    const result = await this.run(['-q', '-x']);
    if (result.exitCode !== 0) throw new Error(describeFailure(result));
    return parseSmiXml(result.stdout);
  }

  /**
   * `nvidia-smi --gpu-reset -i N`. Stops nothing itself: every process using the GPU (engine containers,
   * persistence daemon) must already be gone, or the reset is refused with reason 'in-use'.
   */
  async resetGpu(index: number): Promise<GpuResetResult> {
    if (!Number.isInteger(index) || index < 0)
      throw new RangeError(`GPU index must be a non-negative integer (got ${index})`);
    // A reset takes seconds, but on a sick GPU it can take much longer before the driver gives up.
    const result = await this.run(['--gpu-reset', '-i', String(index)], Math.max(this.timeoutMs, 120_000));
    if (result.spawnError) return { ok: false, reason: 'other', message: describeFailure(result) };
    if (result.timedOut) return { ok: false, reason: 'other', message: describeFailure(result) };
    return parseGpuResetOutput(result.exitCode, `${result.stdout}\n${result.stderr}`);
  }
}
