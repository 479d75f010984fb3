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

/**
 * Run time of each probeRound activity: when it started probing (ms since the epoch) and how long the probing took —
 * its lead-in (the rest of the watcher's interval, waited out on the node before probing: patch
 * 'watch-probe-cadence') is not part of it.
 */
export function roundTimes(events: readonly HistoryEvent[]): { start: number; ms: number }[] {
  const leadIn = new Map<number, number>();
  const started = new Map<number, number>();
  const out: { start: number; ms: number }[] = [];
  for (const e of events) {
    const a = e.activityTaskScheduledEventAttributes;
    if (a?.activityType?.name === 'probeRound') leadIn.set(Number(e.eventId), roundLeadInMs(a));
    const st = e.activityTaskStartedEventAttributes;
    const lead = st ? leadIn.get(Number(st.scheduledEventId)) : undefined;
    if (st && lead !== undefined) started.set(Number(st.scheduledEventId), eventTime(e) + lead);
    const done = e.activityTaskCompletedEventAttributes;
    const begun = done ? started.get(Number(done.scheduledEventId)) : undefined;
    if (begun !== undefined) out.push({ start: begun, ms: eventTime(e) - begun });
  }
  return out;
}

/** The lead-in (ms) a scheduled probeRound was given, 0 when none. */
export function roundLeadInMs(a: temporal.api.history.v1.IActivityTaskScheduledEventAttributes): number {
  const data = a.input?.payloads?.[0]?.data;
  if (!data) return 0;
  const input = JSON.parse(Buffer.from(data).toString('utf8')) as { leadInMs?: unknown };
  return typeof input.leadInMs === 'number' ? input.leadInMs : 0;
}

/** The activities scheduled in a history, by type. */
export function scheduledActivities(events: readonly HistoryEvent[]): string[] {
  return events.flatMap((e) => {
    const name = e.activityTaskScheduledEventAttributes?.activityType?.name;
    return name ? [name] : [];
  });
}
