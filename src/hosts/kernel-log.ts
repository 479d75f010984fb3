/**
 * Xid events from the kernel log. The NVIDIA driver reports GPU faults only there ("NVRM: Xid (PCI:0000:01:00): 79,
 * ..."), so recovery decisions read `dmesg`. The parser is pure and exported for tests.
 */
import type { XidEvent } from '../domain/health';
import { XID_FALLEN_OFF_BUS } from '../domain/xid';
import { describeFailure, runTool, ToolError } from './exec';

// Prefixes a kernel log line may carry before the message, possibly several in a row:
//   dmesg --time-format iso     2024-06-01T10:15:32,123456+00:00 NVRM: ...
//   classic dmesg               [ 1234.567890] NVRM: ...
//   dmesg -T / --ctime          [Tue Dec  1 07:55:12 2026] NVRM: ...
//   dmesg --decode (-x)         kern  :err   : [ 1234.567890] NVRM: ...   (any of the time forms after it)
//   journalctl -k / syslog      Dec  1 07:55:12 host kernel: [ 1234.5] NVRM: ...   (the uptime only on some hosts)
//   rsyslog RFC 3339 / -o short-iso   2026-12-01T07:55:12.123456+00:00 host kernel: NVRM: ...
// Wall-clock time wins over seconds since boot when a line has both.
const PREFIXES: readonly { re: RegExp; time?: 'wall' | 'uptime' }[] = [
  { re: /^[a-z]+\s*:\s*(?:emerg|alert|crit|err|warn|notice|info|debug)\s*:\s*/ },
  {
    re: /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\s+\S+\s+kernel:\s*/,
    time: 'wall',
  },
  { re: /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\s+/, time: 'wall' },
  { re: /^([A-Z][a-z]{2}\s+\d{1,2}\s+\d{2}:\d{2}:\d{2})\s+\S+\s+kernel:\s*/, time: 'wall' },
  { re: /^\[\s*([A-Z][a-z]{2}\s+[A-Z][a-z]{2}\s+\d{1,2}\s+\d{2}:\d{2}:\d{2}\s+\d{4})\]\s*/, time: 'wall' },
  { re: /^\[\s*(\d+\.\d+)\]\s*/, time: 'uptime' },
  { re: /^kernel:\s*/ },
];

/** A kernel log line split into its timestamp (as printed; '' when it has none) and message. */
export interface KernelLine {
  time: string;
  message: string;
  /** false for a continuation line: no prefix of its own, indented under the line it continues. */
  prefixed: boolean;
}

/** Strip every known prefix off one kernel log line. */
export function splitKernelLine(line: string): KernelLine {
  let rest = line.trim();
  let wall = '';
  let uptime = '';
  let prefixed = false;
  for (let guard = 0; guard < PREFIXES.length; guard++) {
    const hit = PREFIXES.map((p) => ({ p, m: p.re.exec(rest) })).find((x) => x.m !== null);
    if (!hit?.m) break;
    prefixed = true;
    if (hit.p.time === 'wall' && wall === '') wall = hit.m[1] ?? '';
    if (hit.p.time === 'uptime' && uptime === '') uptime = hit.m[1] ?? '';
    rest = rest.slice(hit.m[0].length);
  }
  return { time: wall || uptime, message: rest, prefixed };
}

// The Xid record itself. pid/name appear as `pid=1234, name=python3`, `pid='<unknown>', name=<unknown>`, or not at
// all (older drivers: "NVRM: Xid (PCI:0000:01:00): 79, GPU has fallen off the bus.").
const XID =
  /NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+)(?:, pid=('?)([^,']*)\3)?(?:, name=('?)([^,']*)\5)?(?:, (.*))?$/;

// The probe-time report of a lost GPU, which no Xid line accompanies (the open and proprietary drivers alike print
// it from one printk with embedded newlines: dmesg indents the continuation lines, rsyslog repeats the prefix):
//   NVRM: The NVIDIA GPU 0000:b3:00.0
//   NVRM: (PCI ID: 10de:26b5) installed in this system has
//   NVRM: fallen off the bus and is not responding to commands.
const FALLEN_START = /^NVRM: The NVIDIA GPU\s+([0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?)\b/;
const FALLEN_TEXT = /installed in this system has\s+fallen off the bus/i;

function unknownToNull(v: string | undefined): string | null {
  if (v === undefined) return null;
  const t = v.trim();
  return t === '' || t === '<unknown>' ? null : t;
}

function xidOf(k: KernelLine): XidEvent | null {
  const x = XID.exec(k.message);
  if (!x?.[1] || !x[2]) return null;
  const pidText = unknownToNull(x[4]);
  const pid = pidText !== null && /^\d+$/.test(pidText) ? Number(pidText) : null;
  return {
    xid: Number(x[2]),
    pciBusId: x[1],
    time: k.time,
    pid,
    processName: unknownToNull(x[6]),
    message: (x[7] ?? '').trim(),
  };
}

/** Parse one kernel log line; null when it is not an NVRM Xid line. */
export function parseXidLine(line: string): XidEvent | null {
  return xidOf(splitKernelLine(line));
}

/**
 * A "GPU has fallen off the bus and is not responding" report starting at `lines[i]`, as Xid 79 (which is what it
 * means, and what the recovery ladder acts on), or null. It reads the two following lines too when they continue
 * the message: indented continuation lines, or lines of the same time (rsyslog's repeated prefix).
 */
function fallenOffBusAt(lines: readonly KernelLine[], i: number): XidEvent | null {
  const first = lines[i];
  const start = first ? FALLEN_START.exec(first.message) : null;
  if (!first || !start?.[1]) return null;
  let text = first.message;
  for (const next of lines.slice(i + 1, i + 3)) {
    const continues = !next.prefixed || next.time === first.time;
    if (!continues || !next.message.startsWith('NVRM:') || FALLEN_START.test(next.message)) break;
    text += ` ${next.message}`;
  }
  const sentence = text
    .replace(/\s*NVRM:\s*/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  if (!FALLEN_TEXT.test(sentence)) return null;
  return {
    xid: XID_FALLEN_OFF_BUS,
    pciBusId: start[1],
    time: first.time,
    pid: null,
    processName: null,
    message: sentence,
  };
}

/**
 * Every Xid event in a kernel log text, oldest first, including a lost GPU that the driver reported without an Xid
 * line (as Xid 79, see {@link fallenOffBusAt}).
 */
export function parseXidEvents(log: string): XidEvent[] {
  const lines = log.split(/\r?\n/).map(splitKernelLine);
  const out: XidEvent[] = [];
  lines.forEach((line, i) => {
    const e = xidOf(line) ?? fallenOffBusAt(lines, i);
    if (e) out.push(e);
  });
  return out;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/**
 * Milliseconds (with a microsecond fraction) since the epoch of a kernel timestamp, or null when it is not wall-clock
 * time (seconds since boot cannot be compared with an ISO `since`). Forms: ISO with dmesg's comma microseconds, with
 * or without a zone; `dmesg -T`'s "Tue Dec  1 07:55:12 2026" and syslog's "Dec  1 07:55:12", both in the host's local
 * time. Syslog prints no year: it is the year that puts the time no later than a day after `now`.
 */
export function kernelTimeMs(time: string, now: number = Date.now()): number | null {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:[.,](\d+))?(.*)$/.exec(time);
  if (m?.[1]) {
    const fraction = (m[2] ?? '').padEnd(6, '0');
    let zone = m[3] ?? '';
    if (/^[+-]\d{4}$/.test(zone)) zone = `${zone.slice(0, 3)}:${zone.slice(3)}`;
    const ms = Date.parse(`${m[1]}.${fraction.slice(0, 3)}${zone}`);
    // Keep the microseconds as a fraction: two Xids in the same millisecond must still order against `since`.
    return Number.isNaN(ms) ? null : ms + Number(`0.${fraction.slice(3, 6)}`);
  }
  const c = /^(?:[A-Z][a-z]{2}\s+)?([A-Z][a-z]{2})\s+(\d{1,2})\s+(\d{2}):(\d{2}):(\d{2})(?:\s+(\d{4}))?$/.exec(time);
  const month = c?.[1] ? MONTHS.indexOf(c[1]) : -1;
  if (!c || month < 0) return null;
  const at = (year: number): number =>
    new Date(year, month, Number(c[2]), Number(c[3]), Number(c[4]), Number(c[5])).getTime();
  if (c[6]) return at(Number(c[6]));
  const year = new Date(now).getFullYear();
  return at(year) > now + 24 * 3600_000 ? at(year - 1) : at(year);
}

/**
 * Events strictly after `since` (ISO). Events without wall-clock time are kept: dropping them could hide a fault,
 * and the caller dedupes by time and Xid anyway. `now` places syslog times, which carry no year.
 */
export function filterXidSince(
  events: readonly XidEvent[],
  since: string | undefined,
  now: number = Date.now(),
): XidEvent[] {
  if (!since) return [...events];
  const cutoff = Date.parse(since);
  if (Number.isNaN(cutoff)) throw new RangeError(`since must be an ISO timestamp (got "${since}")`);
  return events.filter((e) => {
    const t = kernelTimeMs(e.time, now);
    return t === null || t > cutoff;
  });
}

/** Re-exported for callers that match Xids to GPUs; the rule lives with the Xid table (workflow-safe). */
export { pciBusKey } from '../domain/xid';

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
