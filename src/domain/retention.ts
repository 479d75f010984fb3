/**
 * restic's keep policy, as a pure function: which snapshots `restic forget --keep-*` keeps. gpuops uses it to
 * explain a retention policy before it runs and to check restic's verdict after. Workflow-safe.
 *
 * restic's rule: walk the snapshots newest first; for each --keep-<unit> with budget left, a snapshot whose
 * bucket (hour, day, ISO week, month, year, in the snapshot's own time zone) differs from the last kept bucket of
 * that rule is kept and spends one of the budget. --keep-last keeps the newest n outright.
 */

/** Retention policy: how many of each kind of snapshot to keep. */
export interface KeepPolicy {
  keepLast?: number | undefined;
  keepHourly?: number | undefined;
  keepDaily?: number | undefined;
  keepWeekly?: number | undefined;
  keepMonthly?: number | undefined;
  keepYearly?: number | undefined;
}

/** The part of a snapshot retention needs. */
export interface RetentionSnapshot {
  id: string;
  /** RFC 3339 with offset, as restic prints it; buckets use the wall-clock time it shows. */
  time: string;
}

/** A snapshot kept and the rules that kept it ("last", "daily", …). */
export interface RetentionVerdict {
  keep: { id: string; time: string; reasons: string[] }[];
  remove: { id: string; time: string }[];
}

interface Wall {
  year: number;
  month: number;
  day: number;
  hour: number;
}

function wallClock(time: string): Wall {
  const m = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2})/.exec(time);
  if (!m) throw new Error(`not an RFC 3339 time: "${time}"`);
  return { year: Number(m[1]), month: Number(m[2]), day: Number(m[3]), hour: Number(m[4]) };
}

/** ISO 8601 week of a calendar date: year*100 + week, as Go's time.ISOWeek used by restic. */
export function isoWeek(year: number, month: number, day: number): number {
  const d = new Date(Date.UTC(year, month - 1, day));
  const dow = d.getUTCDay() || 7; // Monday = 1 … Sunday = 7
  d.setUTCDate(d.getUTCDate() + 4 - dow); // the Thursday of this week decides its year
  const y = d.getUTCFullYear();
  const week = Math.ceil(((d.getTime() - Date.UTC(y, 0, 1)) / 86_400_000 + 1) / 7);
  return y * 100 + week;
}

/** Whether a policy keeps anything at all (restic refuses to forget with an empty policy). */
export function isEmptyPolicy(p: KeepPolicy): boolean {
  return ![p.keepLast, p.keepHourly, p.keepDaily, p.keepWeekly, p.keepMonthly, p.keepYearly].some(
    (n) => n !== undefined && n > 0,
  );
}

/** Which snapshots restic keeps under `policy`. An empty policy keeps everything (gpuops then skips forget). */
export function applyRetention(snapshots: readonly RetentionSnapshot[], policy: KeepPolicy): RetentionVerdict {
  const sorted = [...snapshots].sort((a, b) => Date.parse(b.time) - Date.parse(a.time));
  if (isEmptyPolicy(policy)) {
    return { keep: sorted.map((s) => ({ id: s.id, time: s.time, reasons: ['no policy'] })), remove: [] };
  }
  const rules: { name: string; left: number; bucket: (w: Wall, i: number) => number; last: number | null }[] = [
    { name: 'last', left: policy.keepLast ?? 0, bucket: (_w, i) => i, last: null },
    {
      name: 'hourly',
      left: policy.keepHourly ?? 0,
      bucket: (w) => ((w.year * 100 + w.month) * 100 + w.day) * 100 + w.hour,
      last: null,
    },
    { name: 'daily', left: policy.keepDaily ?? 0, bucket: (w) => (w.year * 100 + w.month) * 100 + w.day, last: null },
    { name: 'weekly', left: policy.keepWeekly ?? 0, bucket: (w) => isoWeek(w.year, w.month, w.day), last: null },
    { name: 'monthly', left: policy.keepMonthly ?? 0, bucket: (w) => w.year * 100 + w.month, last: null },
    { name: 'yearly', left: policy.keepYearly ?? 0, bucket: (w) => w.year, last: null },
  ];
  const out: RetentionVerdict = { keep: [], remove: [] };
  sorted.forEach((s, i) => {
    const w = wallClock(s.time);
    const reasons: string[] = [];
    for (const r of rules) {
      if (r.left <= 0) continue;
      const b = r.bucket(w, i);
      if (b !== r.last) {
        r.last = b;
        r.left--;
        reasons.push(r.name);
      }
    }
    if (reasons.length) out.keep.push({ id: s.id, time: s.time, reasons });
    else out.remove.push({ id: s.id, time: s.time });
  });
  return out;
}
