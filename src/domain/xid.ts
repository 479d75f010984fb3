/**
 * NVIDIA Xid catalog (the subset that matters for recovery), after NVIDIA's "Xid Errors" documentation:
 * each Xid maps to the least disruptive recovery rung that clears it. Pure; safe in workflows.
 */
import type { Rung } from './rungs';

export interface XidInfo {
  name: string;
  /** First rung to try for this Xid. 'none' means informational: record, do not act. */
  rung: Rung;
}

/**
 * Xid 79, "GPU has fallen off the bus". Also what the kernel log's Xid-less probe-time report ("The NVIDIA GPU ...
 * installed in this system has fallen off the bus and is not responding to commands") is recorded as.
 */
export const XID_FALLEN_OFF_BUS = 79;

/**
 * Xids the kernel log is the only witness of: 79 (the GPU fell off the bus) and 119/120 (its GSP firmware timed out
 * or died). NVML cannot reach such a GPU, so whatever recovery action it last reported is stale; these keep the
 * table's rung even where the driver reports a verdict.
 */
export const KERNEL_ONLY_XIDS: ReadonlySet<number> = new Set([XID_FALLEN_OFF_BUS, 119, 120]);

export const XID_CATALOG: Readonly<Record<number, XidInfo>> = {
  13: { name: 'Graphics Engine Exception', rung: 'restart-container' },
  31: { name: 'GPU memory page fault', rung: 'restart-container' },
  32: { name: 'Invalid or corrupted push buffer stream', rung: 'restart-container' },
  43: { name: 'GPU stopped processing', rung: 'restart-container' },
  45: { name: 'Preemptive cleanup, due to previous errors', rung: 'none' },
  48: { name: 'Double Bit ECC Error', rung: 'reset-gpu' },
  61: { name: 'Internal micro-controller breakpoint/warning', rung: 'reset-gpu' },
  62: { name: 'Internal micro-controller halt', rung: 'reset-gpu' },
  63: { name: 'ECC page retirement or row remapping recording event', rung: 'none' },
  64: { name: 'ECC page retirement or row remapper recording failure', rung: 'reset-gpu' },
  74: { name: 'NVLink Error', rung: 'reset-gpu' },
  79: { name: 'GPU has fallen off the bus', rung: 'restart-vm' },
  92: { name: 'High single-bit ECC error rate', rung: 'none' },
  94: { name: 'Contained ECC error', rung: 'restart-container' },
  95: { name: 'Uncontained ECC error', rung: 'reset-gpu' },
  119: { name: 'GSP RPC Timeout', rung: 'reset-gpu' },
  120: { name: 'GSP Error', rung: 'reset-gpu' },
  140: { name: 'Unrecovered ECC Error', rung: 'reset-gpu' },
};

/**
 * Rung for one Xid event. Xid 154 ("GPU recovery action changed") carries the driver's own recommendation in its
 * message; unknown Xids are treated as needing a GPU reset, the safe middle of the ladder.
 */
export function rungForXid(xid: number, message = ''): Rung {
  if (xid === 154) {
    if (/node reboot required/i.test(message)) return 'restart-vm';
    if (/reset required|drain and reset/i.test(message)) return 'reset-gpu';
    return 'none';
  }
  return XID_CATALOG[xid]?.rung ?? 'reset-gpu';
}

export function xidName(xid: number): string {
  return XID_CATALOG[xid]?.name ?? (xid === 154 ? 'GPU recovery action changed' : 'Unknown Xid');
}

/**
 * One GPU's PCI address in one spelling, for matching an Xid to a GpuStatus: the kernel prints 0000:01:00,
 * nvidia-smi 00000000:01:00.0; both become "0000:01:00" (domain as four hex digits, bus, device; no function).
 */
export function pciBusKey(id: string): string {
  const parts = id
    .trim()
    .toLowerCase()
    .replace(/\.[0-7]$/, '')
    .split(':');
  const [domain = '0', bus = '', device = ''] = parts.length >= 3 ? parts.slice(-3) : ['0', ...parts];
  const d = Number.parseInt(domain, 16);
  return `${Number.isNaN(d) ? domain : d.toString(16).padStart(4, '0')}:${bus.padStart(2, '0')}:${device.padStart(2, '0')}`;
}
