/**
 * What `--follow` shows of a long transfer (a model pull, a restic backup): amounts, rate and ETA as a bar on a
 * terminal or one plain line. Pure: the caller gives the samples and their times.
 */

/** One transfer as the follower sees it. */
export interface ProgressView {
  /** What moves ("pull pulling 2bada8a74506", "backup"). */
  label: string;
  done: number;
  /** Null while the size is not known yet. */
  total: number | null;
  /** Amounts are bytes (shown as MiB/GiB); otherwise `done` and `total` are fractions shown as a percentage only. */
  bytes: boolean;
  /** Units per second (RateMeter); null until it can be measured. */
  rate: number | null;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'] as const;

/** 1536 → "1.5 KiB", 0 → "0 B" (binary units, one decimal). */
export function formatBytes(n: number): string {
  let v = Math.max(0, n);
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(v)} B` : `${v.toFixed(1)} ${UNITS[i]}`;
}

/** Seconds as "42s", "3m 05s" or "2h 07m" (rounded up: an ETA never promises too early). */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds - 1e-6)); // 57.999…9 or 58.000…1 from float division reads 58s
  if (s < 60) return `${s}s`;
  const pad = (n: number): string => String(n).padStart(2, '0');
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}

/** Seconds left at the current rate; null when the size or a rate is not known. */
export function etaSeconds(v: Pick<ProgressView, 'done' | 'total' | 'rate'>): number | null {
  if (v.total === null || v.rate === null || v.rate <= 0) return null;
  return Math.max(0, v.total - v.done) / v.rate;
}

/** "42.0%  512.0 MiB / 1.2 GiB  12.3 MiB/s  ETA 1m 05s" (the parts that are known). */
function figures(v: ProgressView): string {
  const parts: string[] = [];
  if (v.total !== null && v.total > 0) parts.push(`${Math.min(100, (v.done / v.total) * 100).toFixed(1)}%`);
  if (v.bytes) {
    parts.push(v.total !== null ? `${formatBytes(v.done)} / ${formatBytes(v.total)}` : formatBytes(v.done));
    if (v.rate !== null) parts.push(`${formatBytes(v.rate)}/s`);
  }
  const eta = etaSeconds(v);
  parts.push(eta === null ? 'ETA --' : `ETA ${formatDuration(eta)}`);
  return parts.join('  ');
}

/** Bar cells when the line has room for at least this many. */
const MIN_BAR = 10;
const MAX_BAR = 40;

/**
 * The transfer as one line. Without `width`: "label: figures" (a log line). With `width` (a terminal's columns):
 * "label [=====>     ] figures", the bar filling what is left of the width (none when under 10 cells), the label
 * shortened with "…" so the line never wraps.
 */
export function renderProgress(v: ProgressView, width?: number): string {
  const tail = figures(v);
  const plain = `${v.label}: ${tail}`;
  if (width === undefined) return plain;
  const room = width - tail.length - 4; // label and bar; 4: the spaces and brackets around the bar
  let label = v.label;
  let cells = Math.min(MAX_BAR, room - label.length);
  if (cells < MIN_BAR) {
    cells = MIN_BAR;
    const labelRoom = room - MIN_BAR;
    if (labelRoom < 8) return plain.length <= width ? plain : `${plain.slice(0, Math.max(0, width - 1))}…`;
    label = `${v.label.slice(0, labelRoom - 1)}…`;
  }
  const frac = v.total !== null && v.total > 0 ? Math.min(1, Math.max(0, v.done / v.total)) : 0;
  const filled = Math.floor(frac * cells);
  const bar = filled >= cells ? '='.repeat(cells) : `${'='.repeat(filled)}>${' '.repeat(cells - filled - 1)}`;
  return `${label} [${bar}] ${tail}`;
}

/**
 * The rate of a transfer from samples of its progress, over the last `windowMs`. A sample counts when the amount
 * moved (heartbeats repeat the last value between beats); a new transfer (another key, or the amount going back,
 * as when a pull starts its next layer) starts over.
 */
export class RateMeter {
  private key: string | null = null;
  private samples: { at: number; done: number }[] = [];

  constructor(private readonly windowMs = 60_000) {}

  /** Add a sample taken at `atMs`; answers units per second, or null until two samples apart in time. */
  sample(key: string, done: number, atMs: number): number | null {
    const last = this.samples.at(-1);
    if (key !== this.key || (last && done < last.done)) {
      this.key = key;
      this.samples = [];
    }
    if (this.samples.at(-1)?.done !== done) this.samples.push({ at: atMs, done });
    this.samples = this.samples.filter((s, i, all) => i === all.length - 1 || atMs - s.at <= this.windowMs);
    const first = this.samples[0];
    const newest = this.samples.at(-1);
    if (!first || !newest || newest.at <= first.at) return null;
    return ((newest.done - first.done) * 1000) / (newest.at - first.at);
  }
}
