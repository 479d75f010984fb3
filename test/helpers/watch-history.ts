/**
 * What a watchNode history says about its probe rounds: each probeRound's run time, and per round the activities
 * and events it cost (tests and bench/recovery.ts read real histories with these).
 */
import type { temporal } from '@temporalio/proto';

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

/** Server time of an event, ms since the epoch. */
export function eventTime(e: HistoryEvent): number {
  return Number(e.eventTime?.seconds ?? 0) * 1000 + Math.round((e.eventTime?.nanos ?? 0) / 1e6);
}

/** Run time of each probeRound activity: when it started (ms since the epoch) and how long it ran. */
export function roundTimes(events: readonly HistoryEvent[]): { start: number; ms: number }[] {
  const rounds = new Set<number>();
  const started = new Map<number, number>();
  const out: { start: number; ms: number }[] = [];
  for (const e of events) {
    if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'probeRound') rounds.add(Number(e.eventId));
    const st = e.activityTaskStartedEventAttributes;
    if (st && rounds.has(Number(st.scheduledEventId))) started.set(Number(st.scheduledEventId), eventTime(e));
    const done = e.activityTaskCompletedEventAttributes;
    const begun = done ? started.get(Number(done.scheduledEventId)) : undefined;
    if (begun !== undefined) out.push({ start: begun, ms: eventTime(e) - begun });
  }
  return out;
}

/** The activities scheduled in a history, by type. */
export function scheduledActivities(events: readonly HistoryEvent[]): string[] {
  return events.flatMap((e) => {
    const name = e.activityTaskScheduledEventAttributes?.activityType?.name;
    return name ? [name] : [];
  });
}
