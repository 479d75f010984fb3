/** Recovery point objective status per backup plan: is the newest good backup young enough? Pure, workflow-safe. */
import { parseDuration } from './durations';

/** RPO standing of one plan. */
export interface RpoStatus {
  plan: string;
  /** Newest successful backup (snapshot time), ISO; null when there is none. */
  lastSuccess: string | null;
  /** Age of that backup in ms at `now`; null when there is none. */
  ageMs: number | null;
  rpoMs: number;
  /** No backup at all, or the newest is older than the RPO. */
  breached: boolean;
}

/** RPO status of a plan given its newest successful backup time. */
export function rpoStatus(plan: { id: string; rpo: string }, lastSuccess: string | null, now: number): RpoStatus {
  const rpoMs = parseDuration(plan.rpo);
  if (lastSuccess === null) return { plan: plan.id, lastSuccess: null, ageMs: null, rpoMs, breached: true };
  const ageMs = Math.max(0, now - Date.parse(lastSuccess));
  return { plan: plan.id, lastSuccess, ageMs, rpoMs, breached: ageMs > rpoMs };
}

/** "3h 12m", "2d 4h", "45s": an age for a table. */
export function formatAge(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}
