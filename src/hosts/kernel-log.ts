/**
 * Xid events from the kernel log. The NVIDIA driver reports GPU faults only there ("NVRM: Xid (PCI:0000:01:00): 79,
 * ..."), so recovery decisions read `dmesg`. The parser is pure and exported for tests.
 */
import type { XidEvent } from '../domain/health';
import { describeFailure, runTool, ToolError } from './exec';

// Prefixes a kernel log line may carry before the message:
//   dmesg --time-format iso   2024-06-01T10:15:32,123456+00:00 NVRM: ...
//   classic dmesg             [ 1234.567890] NVRM: ...
//   journalctl -k / syslog    Jun 01 10:15:32 host kernel: NVRM: ...
const ISO_PREFIX = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:[+-]\d{2}:?\d{2}|Z)?)\s+/;
const UPTIME_PREFIX = /^\[\s*(\d+\.\d+)\]\s+/;
const SYSLOG_PREFIX = /^([A-Z][a-z]{2}\s+\d{1,2}\s+\d{2}:\d{2}:\d{2})\s+\S+\s+kernel:\s+/;

// The Xid record itself. pid/name appear as `pid=1234, name=python3`, `pid='<unknown>', name=<unknown>`, or not at
// all (older drivers: "NVRM: Xid (PCI:0000:01:00): 79, GPU has fallen off the bus.").
const XID =
  /NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+)(?:, pid=('?)([^,']*)\3)?(?:, name=('?)([^,']*)\5)?(?:, (.*))?$/;

function unknownToNull(v: string | undefined): string | null {
  if (v === undefined) return null;
  const t = v.trim();
  return t === '' || t === '<unknown>' ? null : t;
}

/** Parse one kernel log line; null when it is not an NVRM Xid line. */
export function parseXidLine(line: string): XidEvent | null {
  let rest = line.trim();
  let time = '';
  for (const re of [ISO_PREFIX, UPTIME_PREFIX, SYSLOG_PREFIX]) {
    const m = re.exec(rest);
    if (m?.[1]) {
      time = m[1];
      rest = rest.slice(m[0].length);
      break;
    }
  }
  const x = XID.exec(rest);
  if (!x?.[1] || !x[2]) return null;
  const pidText = unknownToNull(x[4]);
  const pid = pidText !== null && /^\d+$/.test(pidText) ? Number(pidText) : null;
  return {
    xid: Number(x[2]),
    pciBusId: x[1],
    time,
    pid,
    processName: unknownToNull(x[6]),
    message: (x[7] ?? '').trim(),
  };
}

/** Every Xid event in a kernel log text, oldest first. */
export function parseXidEvents(log: string): XidEvent[] {
  const out: XidEvent[] = [];
  for (const line of log.split(/\r?\n/)) {
    const e = parseXidLine(line);
    if (e) out.push(e);
  }
  return out;
}

/**
 * Milliseconds (with a microsecond fraction) since the epoch of a kernel timestamp, or null when it is not wall-clock time (seconds since boot
 * cannot be compared with an ISO `since`). dmesg writes microseconds after a comma; Date wants a dot and millis.
 */
export function kernelTimeMs(time: string): number | null {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:[.,](\d+))?(.*)$/.exec(time);
  if (!m?.[1]) return null;
  const fraction = (m[2] ?? '').padEnd(6, '0');
  let zone = m[3] ?? '';
  if (/^[+-]\d{4}$/.test(zone)) zone = `${zone.slice(0, 3)}:${zone.slice(3)}`;
  const ms = Date.parse(`${m[1]}.${fraction.slice(0, 3)}${zone}`);
  // Keep the microseconds as a fraction: two Xids in the same millisecond must still order against `since`.
  return Number.isNaN(ms) ? null : ms + Number(`0.${fraction.slice(3, 6)}`);
}

/**
 * Events strictly after `since` (ISO). Events without wall-clock time are kept: dropping them could hide a fault,
 * and the caller dedupes by time and Xid anyway.
 */
export function filterXidSince(events: readonly XidEvent[], since: string | undefined): XidEvent[] {
  if (!since) return [...events];
  const cutoff = Date.parse(since);
  if (Number.isNaN(cutoff)) throw new RangeError(`since must be an ISO timestamp (got "${since}")`);
  return events.filter((e) => {
    const t = kernelTimeMs(e.time);
    return t === null || t > cutoff;
  });
}

/**
 * Two spellings of one GPU's PCI address compared: the kernel prints 0000:01:00, nvidia-smi 00000000:01:00.0.
 * Returns "bus:device" lower-case ("01:00") for matching an Xid to a GpuStatus.
 */
export function pciBusKey(id: string): string {
  const parts = id
    .toLowerCase()
    .replace(/\.\d+$/, '')
    .split(':');
  return parts.slice(-2).join(':');
}

/** Options of KernelLog. */
export interface KernelLogOptions {
  /** dmesg binary; looked up on PATH at call time. */
  bin?: string;
  env?: Record<string, string | undefined>;
  timeoutMs?: number;
}

/** Thrown when the kernel log cannot be read (kernel.dmesg_restrict without CAP_SYSLOG, no dmesg). */
export class KernelLogError extends ToolError {
  /** true when the worker lacks the privilege to read the log: retrying will not help. */
  readonly permissionDenied: boolean;
  constructor(message: string, result: ConstructorParameters<typeof ToolError>[1]) {
    super(message, result);
    this.name = 'KernelLogError';
    this.permissionDenied = /Operation not permitted|Permission denied|EPERM|EACCES/i.test(
      `${result.stderr} ${result.spawnError ?? ''}`,
    );
  }
}

/** The kernel ring buffer, read with `dmesg --time-format iso`. */
export class KernelLog {
  private readonly bin: string;
  private readonly env: Record<string, string | undefined> | undefined;
  private readonly timeoutMs: number;

  constructor(opts: KernelLogOptions = {}) {
    this.bin = opts.bin ?? 'dmesg';
    this.env = opts.env;
    this.timeoutMs = opts.timeoutMs ?? 20_000;
  }

  /** Xid events, optionally only those after `since` (ISO). Throws KernelLogError when dmesg fails. */
  async xidEvents(opts: { since?: string } = {}): Promise<XidEvent[]> {
    const result = await runTool(this.bin, ['--time-format', 'iso'], {
      timeoutMs: this.timeoutMs,
      ...(this.env ? { env: this.env } : {}),
    });
    if (result.exitCode !== 0) throw new KernelLogError(describeFailure(result), result);
    return filterXidSince(parseXidEvents(result.stdout), opts.since);
  }
}
