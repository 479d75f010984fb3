/**
 * watchNode's pure decisions: maintenance windows (open, clear, expire, what they cover) and which problems count
 * towards starting a recovery. Workflow-safe.
 */
import type { Problem } from './classify';
import { parseDuration } from './durations';

/** A maintenance window as watchNode keeps it (the contract's MaintenanceWindow). */
export interface Window {
  reason: string;
  /** Only this engine (its name); null: the whole node. */
  engine: string | null;
  by: string | null;
  since: string;
  until: string;
}

/** A checked `maintenance` Update (the contract's MaintenanceInput, parsed). */
export interface MaintenanceRequest {
  reason: string;
  duration?: string | undefined;
  until?: string | undefined;
  engine?: string | undefined;
  by?: string | undefined;
  clear: boolean;
}

/** The windows in force at `at`; expired ones drop out. */
export function activeWindows<W extends Window>(windows: readonly W[], at: number): W[] {
  return windows.filter((w) => Date.parse(w.until) > at);
}

/** Why a request names an engine the node does not have, or null when it names none or a known one. */
export function unknownEngine(req: MaintenanceRequest, known: readonly string[]): string | null {
  if (!req.engine || known.includes(req.engine)) return null;
  return `invalid maintenance: engine: must be one of ${known.join(', ')} (got "${req.engine}")`;
}

/**
 * The windows after a request at `at`: `clear` ends the windows of the engine it names (every window when it names
 * none); otherwise a window opens until `until` or for `duration`. Expired windows drop out either way.
 */
export function applyMaintenance(windows: readonly Window[], req: MaintenanceRequest, at: number): Window[] {
  if (req.clear) {
    return activeWindows(
      windows.filter((w) => (req.engine ? w.engine !== req.engine : false)),
      at,
    );
  }
  const until = req.until ?? new Date(at + parseDuration(req.duration ?? '0s')).toISOString();
  const opened: Window = {
    reason: req.reason,
    engine: req.engine ?? null,
    by: req.by ?? null,
    since: new Date(at).toISOString(),
    until,
  };
  return activeWindows([...windows, opened], at);
}

/** A problem is covered by maintenance when a node-wide window is open, or one for the engine it concerns. */
export function coveredByMaintenance(
  p: Problem,
  windows: readonly Window[],
  engines: readonly { name: string; container: string }[],
): boolean {
  return windows.some((w) => {
    if (w.engine === null) return true;
    const e = engines.find((x) => x.name === w.engine);
    return p.subject === w.engine || (e !== undefined && p.subject === e.container);
  });
}

/** The problems that count towards a recovery: critical ones that no open maintenance window covers. */
export function actionableProblems(
  problems: readonly Problem[],
  windows: readonly Window[],
  engines: readonly { name: string; container: string }[],
): Problem[] {
  return problems.filter((p) => p.severity === 'critical' && !coveredByMaintenance(p, windows, engines));
}

/**
 * The test generation's deadline in a watcher's probe round: as configured, else what single probes always gave it,
 * the probe timeout less 2 s (at least 1 s). A missed deadline counts as a hung engine and, after `failureThreshold`
 * rounds, restarts it: a busy but healthy engine (a slow first token under load) must not miss it.
 */
export function watchGenerateTimeoutMs(probeTimeout: string, generateTimeout?: string): number {
  if (generateTimeout !== undefined) return parseDuration(generateTimeout);
  return Math.max(1_000, parseDuration(probeTimeout) - 2_000);
}

/**
 * The default of the first one-activity rounds (before patch 'watch-probe-round-safety'): half the probe interval
 * within 1 – 5 s. Kept only so those runs replay as recorded; it read a loaded engine as hung.
 */
export function halfIntervalGenerateTimeoutMs(probeInterval: string, generateTimeout?: string): number {
  if (generateTimeout !== undefined) return parseDuration(generateTimeout);
  return Math.min(5_000, Math.max(1_000, Math.round(parseDuration(probeInterval) / 2)));
}

/** What one round does to a watcher's count of failed rounds and its last health. */
export interface RoundVerdict {
  consecutiveFailures: number;
  /** The health the watcher now holds (an unhealthy → healthy change releases router auto-drains). */
  healthy: boolean | undefined;
  /** The round saw nothing to decide on (a probe failed, nothing actionable): the previous state is kept. */
  blind: boolean;
}

/**
 * Fold one round into the watcher's state. Actionable problems count a failure; a healthy round resets the count; a
 * round with a failed probe (`unknown`) and nothing actionable keeps both the count and the last health: an engine
 * nobody probed is neither recovered nor sick, and must not put drained traffic back.
 */
export function roundVerdict(
  previous: { consecutiveFailures: number; healthy: boolean | undefined },
  round: { actionable: number; unknown: boolean; healthy: boolean },
): RoundVerdict {
  if (round.unknown && round.actionable === 0) return { ...previous, blind: true };
  return {
    consecutiveFailures: round.actionable > 0 ? previous.consecutiveFailures + 1 : 0,
    healthy: round.healthy,
    blind: false,
  };
}

/**
 * The rung a watcher starts recoverNode at: escalate when every actionable problem is a failed probe round (nothing
 * was seen to choose a rung from, and recoverNode's own diagnosis would likely fail the same way); else none given,
 * so recoverNode's diagnosis chooses.
 */
export function watcherStartRung(actionable: readonly Problem[]): 'escalate' | undefined {
  return actionable.length > 0 && actionable.every((p) => p.kind === 'probe-failed') ? 'escalate' : undefined;
}

/**
 * Longest wait (ms) a watcher leaves to the next probe round itself (probeRound's `leadInMs`) rather than to a timer:
 * the Temporal server fires no timer sooner than `history.timerProcessorMaxTimeShift` (1 s by default), so only a
 * longer rest is a timer's job (a lead-in holds the node worker's activity slot meanwhile).
 */
export const MAX_LEAD_IN_MS = 1_000;

/** A watcher's run of blind rounds in a row (rounds where a probe failed and nothing actionable was seen). */
export interface BlindStreak {
  rounds: number;
  /** When the streak's first blind round was observed; null when the last round was not blind. */
  since: string | null;
  /** Whether this streak has been notified (once per streak, however long it lasts). */
  alerted: boolean;
}

export const NO_BLIND_STREAK: BlindStreak = { rounds: 0, since: null, alerted: false };

/**
 * Fold one round into the blind streak. `alert`: the streak is at least `alertAfter` rounds long (0: never alert) and
 * has not been alerted, once per streak; held while `quiet` (a node-wide maintenance window: a node taken down on
 * purpose is expected to be unseen), so a streak that outlasts the window alerts at its first round after it.
 * `answered`: the first round that saw something after an alerted streak (the all-clear). Otherwise `send` is null: a
 * watcher that cannot see its node decides nothing, so it must say so, but only once.
 *
 * `canSend` is asked only when there is something to send; when it says no (a run from before the alert, replaying
 * on newer code), nothing is sent and a warning stays owed: the first round that can send it does.
 */
export function foldBlindStreak(
  previous: BlindStreak,
  round: { blind: boolean; at: string; quiet?: boolean },
  alertAfter: number,
  canSend: () => boolean = () => true,
): { streak: BlindStreak; send: 'alert' | 'answered' | null } {
  if (!round.blind) {
    return { streak: NO_BLIND_STREAK, send: previous.alerted && canSend() ? 'answered' : null };
  }
  const rounds = previous.rounds + 1;
  const alert = alertAfter > 0 && !previous.alerted && rounds >= alertAfter && round.quiet !== true && canSend();
  return {
    streak: { rounds, since: previous.since ?? round.at, alerted: previous.alerted || alert },
    send: alert ? 'alert' : null,
  };
}
