/** Durations as operators write them ("500ms", "30s", "5m", "1h", "7d"). Pure; safe in workflows. */
const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

export function parseDuration(text: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text);
  if (!m || m[1] === undefined || m[2] === undefined)
    throw new Error(`"${text}" is not a duration such as 500ms, 30s, 5m, 1h or 7d`);
  return Number(m[1]) * (UNITS[m[2]] ?? 1);
}
