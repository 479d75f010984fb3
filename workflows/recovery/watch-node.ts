/**
 * watchNode: probes a node forever (continue-as-new keeps its history bounded) and starts `recoverNode` when a fault
 * persists outside maintenance. A small state class owns the watcher's status; the handlers and the loop call it.
 */
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import {
  ApplicationFailure,
  ParentClosePolicy,
  allHandlersFinished,
  condition,
  makeContinueAsNewFunc,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  startChild,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { z } from 'zod';
import type { NodeFacts } from '../../activities/recovery';
import { restartLoopProblems, type HealthReport, type Problem } from '../../src/domain/classify';
import { parseDuration } from '../../src/domain/durations';
import {
  actionableProblems,
  activeWindows,
  applyMaintenance,
  foldBlindStreak,
  halfIntervalGenerateTimeoutMs,
  MAX_LEAD_IN_MS,
  NO_BLIND_STREAK,
  roundVerdict,
  unknownEngine,
  watchGenerateTimeoutMs,
  watcherStartRung,
  type BlindStreak,
} from '../../src/domain/watch';
import { parseInput } from '../../src/domain/validation';
import {
  MaintenanceInput,
  SEARCH_ATTRIBUTES,
  WatchNodeInput,
  getWatchStatusQuery,
  setMaintenanceUpdate,
  workflowIds,
  type MaintenanceWindow,
  type SetMaintenanceInput,
  type WatchStatus,
} from '../../src/contracts';
import { ROUND_SAFETY_PATCH, probeNode, probeNodeRound, type ProbeOptions, type RoundOptions } from '../probe';
import { controlCall, watchFacts, type ControlActivities } from './activities';
import { failureMessage } from './context';
import { recoverNode } from './recover-node';

type WatchInput = z.output<typeof WatchNodeInput>;

/** The patch that folded a probe round into one activity (and continue-as-new on the server's suggestion). */
const SINGLE_PROBE_ACTIVITY = 'watch-single-probe-activity';

/**
 * The patch that made the interval a cadence, start to start: what is left of the interval after the round is
 * waited out (nothing when the round took longer), by a timer when it is at least {@link MAX_LEAD_IN_MS}, else by
 * the next round itself on the node worker (its `leadInMs`): the Temporal server fires no timer sooner than
 * `history.timerProcessorMaxTimeShift` (1 s by default), so a 300 ms timer takes a second. Before it every round
 * slept a whole interval after the last one ended, so a round of r seconds made every probe period interval + r
 * (+ up to 1 s at sub-second remainders), and detection after `failureThreshold` rounds as much slower.
 */
export const PROBE_CADENCE_PATCH = 'watch-probe-cadence';

/**
 * The patch that tells the notifiers when a watcher has been blind for `blindAlertAfter` rounds in a row (and when
 * its probes answer again), and carries the streak across continue-as-new. Runs recorded before it notified nobody.
 */
export const BLIND_ALERT_PATCH = 'watch-blind-round-alert';

/** The watcher's state: its status (the Query's answer), the node's facts, and restart counts between probes. */
class NodeWatch {
  readonly status: WatchStatus;
  facts: NodeFacts | null = null;
  private restartCounts: Record<string, number> = {};
  /** Whether the last probe saw the node healthy (carried across continue-as-new); undefined before the first. */
  lastHealthy: boolean | undefined;
  /** Blind rounds in a row so far (carried across continue-as-new). */
  blind: BlindStreak;
  /**
   * The blind-streak notifications, chained so an all-clear never overtakes its warning; the rounds never wait on
   * them (a dead webhook would stall them).
   */
  private blindNotices: Promise<void> = Promise.resolve();
  /** How many have not settled: the run probes on rather than continue as new while one is in flight. */
  blindNoticesInFlight = 0;
  private readonly notifier = proxyActivities<ControlActivities>(controlCall);

  constructor(private readonly input: WatchInput) {
    this.status = {
      node: input.node,
      probes: 0,
      consecutiveFailures: input.state?.consecutiveFailures ?? 0,
      lastReport: null,
      maintenance: activeWindows(input.state?.maintenance ?? [], Date.now()),
      lastAction: null,
    };
    this.lastHealthy = input.state?.healthy;
    this.blind = input.state?.blind ?? NO_BLIND_STREAK;
    if (input.state?.blindAlert) this.status.blindAlert = input.state.blindAlert;
  }

  /** The status as of now (expired maintenance windows left out; the blind streak while there is one). */
  snapshot(): WatchStatus {
    return {
      ...this.status,
      maintenance: activeWindows(this.status.maintenance, Date.now()),
      ...(this.blind.rounds > 0 ? { blind: { ...this.blind } } : {}),
    };
  }

  /** The `maintenance` Update: open or clear a window; an engine must be one of the node's. */
  async setMaintenance(m: SetMaintenanceInput): Promise<MaintenanceWindow[]> {
    const req = MaintenanceInput.parse(m);
    // The engine list comes from the node's config, fetched at start; an early update waits for it.
    await condition(() => this.facts !== null);
    const unknown = unknownEngine(req, this.facts?.engines.map((e) => e.name) ?? []);
    if (unknown) throw ApplicationFailure.nonRetryable(unknown, 'ValidationError');
    this.status.maintenance = applyMaintenance(this.status.maintenance, req, Date.now());
    return this.status.maintenance;
  }

  probeOptions(facts: NodeFacts): ProbeOptions {
    const probeMs = parseDuration(this.input.probeInterval);
    return {
      generate: this.input.generate,
      expectedGpus: facts.gpus.length || undefined,
      xidSince: new Date(Date.now() - Math.max(probeMs * 3, 60_000)).toISOString(),
      pickupTimeout: this.input.pickupTimeout,
      probeTimeout: this.input.probeTimeout,
    };
  }

  /**
   * A one-activity round's options: the test generation gets its own deadline, by default what single probes gave
   * it (runs from before the patch replay with the half-interval default they were recorded with).
   */
  roundOptions(facts: NodeFacts): RoundOptions {
    const { probeInterval, probeTimeout, generateTimeout } = this.input;
    const generateTimeoutMs = patched(ROUND_SAFETY_PATCH)
      ? watchGenerateTimeoutMs(probeTimeout, generateTimeout)
      : halfIntervalGenerateTimeoutMs(probeInterval, generateTimeout);
    return { ...this.probeOptions(facts), generateTimeoutMs };
  }

  /**
   * One probe round: one activity since 'watch-single-probe-activity'; histories from before replay five. `leadInMs`:
   * how long the round waits on the node before it probes (the interval's sub-second rest).
   */
  async probe(facts: NodeFacts, leadInMs = 0): Promise<HealthReport> {
    return patched(SINGLE_PROBE_ACTIVITY)
      ? probeNodeRound(this.input.node, { ...this.roundOptions(facts), ...(leadInMs > 0 ? { leadInMs } : {}) })
      : probeNode(this.input.node, this.probeOptions(facts));
  }

  /**
   * Take in one probe's report; the problems that count towards a recovery (critical, outside maintenance). A round
   * with a failed probe (report.unknown) and nothing actionable is neither: the count and the last health stay.
   */
  observe(report: HealthReport): Problem[] {
    const s = this.status;
    s.probes++;
    s.maintenance = activeWindows(s.maintenance, Date.now());
    // Only rounds since the patch can be unknown; the check records nothing for the others.
    const unknown = report.unknown === true && patched(ROUND_SAFETY_PATCH);
    const failed = new Set(report.observation.probeFailures?.map((f) => f.probe) ?? []);
    // Added after the first release: histories recorded before it replay without the restart-loop check.
    const loops = patched('restart-loop-detection')
      ? restartLoopProblems(this.restartCounts, report.observation.containers)
      : [];
    // No container list is no restart count: the baseline stays for the next round that sees them.
    if (!(unknown && failed.has('inspectContainers'))) {
      this.restartCounts = Object.fromEntries(report.observation.containers.map((c) => [c.name, c.restartCount]));
    }
    const problems = [...report.problems, ...loops];
    const actionable = actionableProblems(problems, s.maintenance, this.facts?.engines ?? []);
    s.lastReport = {
      at: report.observedAt,
      healthy: report.healthy,
      recommendedRung: report.recommendedRung,
      problems: problems.map((p) => `${p.kind} ${p.subject}`),
    };
    const { blind, consecutiveFailures, healthy } = roundVerdict(
      { consecutiveFailures: s.consecutiveFailures, healthy: this.lastHealthy },
      { actionable: actionable.length, unknown, healthy: report.healthy },
    );
    s.consecutiveFailures = consecutiveFailures;
    this.lastHealthy = healthy;
    this.foldBlind(blind, report, [...failed], s.lastReport.problems);
    const health = blind
      ? `UNKNOWN (${[...failed].join(', ')} failed; ${s.consecutiveFailures}/${this.input.failureThreshold} kept)`
      : report.healthy
        ? 'healthy'
        : `UNHEALTHY (${s.consecutiveFailures}/${this.input.failureThreshold})`;
    const paused = s.maintenance.length ? ` — maintenance: ${s.maintenance.map((w) => w.reason).join('; ')}` : '';
    setCurrentDetails(`Watching **${this.input.node}**: ${health}${paused}`);
    return actionable;
  }

  /**
   * Count a blind round (or end the streak) and start the notification the streak calls for: a warning once it is
   * `blindAlertAfter` rounds long (held while a node-wide maintenance window is open), an all-clear at the first round
   * that sees again after one.
   */
  private foldBlind(blind: boolean, report: HealthReport, failed: string[], problems: string[]): void {
    const before = this.blind;
    const quiet = this.status.maintenance.some((w) => w.engine === null);
    const round = { blind, at: report.observedAt, quiet };
    // Runs from before the patch send nothing when they replay; a warning they owe goes out once the run is live.
    const { streak, send } = foldBlindStreak(before, round, this.input.blindAlertAfter, () =>
      patched(BLIND_ALERT_PATCH),
    );
    this.blind = streak;
    if (send === null) return;
    const { node, failureThreshold } = this.input;
    const fields = { node, kind: 'watch-blind', since: streak.since ?? before.since };
    const notice =
      send === 'alert'
        ? {
            title: `watcher blind on ${node}: ${streak.rounds} rounds in a row with a failed probe`,
            text:
              `Since ${streak.since}, every probe round on ${node} had a failed probe (last: ${failed.join(', ')}) ` +
              `and saw nothing actionable: the watcher can neither see a fault nor clear one. Its count of failed ` +
              `rounds is held at ${this.status.consecutiveFailures}/${failureThreshold}. Check the node worker's log ` +
              `and the failing probe's tool.`,
            severity: 'warning' as const,
            fields: { ...fields, rounds: streak.rounds, failedProbes: failed.join(',') },
          }
        : {
            title: `watcher on ${node} sees again after ${before.rounds} blind rounds`,
            text:
              `The watcher on ${node} sees again after ${before.rounds} blind rounds since ${before.since}; the node ` +
              `is ${report.healthy ? 'healthy' : `unhealthy (${problems.join('; ')})`}.`,
            severity: 'info' as const,
            fields: { ...fields, rounds: before.rounds, healthy: report.healthy },
          };
    const rounds = notice.fields.rounds;
    const at = new Date(Date.now()).toISOString();
    this.blindNoticesInFlight++;
    this.blindNotices = this.blindNotices
      .then(() => this.notifier.notify(notice))
      .then(
        (r) => {
          this.blindNoticesInFlight--;
          this.status.blindAlert = {
            at,
            kind: send,
            rounds,
            sent: r.sent,
            failed: r.failed.map((f) => `${f.name}: ${f.error}`),
          };
        },
        (err: unknown) => {
          this.blindNoticesInFlight--;
          // Never stop watching over a notifier: the streak and the failure show in `status`; no more tries.
          const failed = [`notify failed: ${failureMessage(err)}`];
          this.status.blindAlert = { at, kind: send, rounds, sent: [], failed };
        },
      );
  }

  /**
   * The node is healthy after an unhealthy probe (or at the watcher's first probe): the router may have drained it
   * by itself while its engines refused connections, and this is the word that puts it back. One activity per such
   * transition, none per healthy round; the router answers which engines it released (none, usually).
   */
  async releaseRouterDrains(control: ControlActivities): Promise<void> {
    const engines = this.facts?.engines.map((e) => e.url) ?? [];
    const at = new Date(Date.now()).toISOString();
    try {
      const r = await control.releaseAutoDrain({ node: this.input.node, engines });
      if (r.released.length > 0 || r.note) this.status.routerRelease = { at, released: r.released, note: r.note };
    } catch (err) {
      // Never stop watching over the router: the router's own recheck releases the drain if this never does.
      this.status.routerRelease = { at, released: [], note: `release failed: ${(err as Error).message}` };
    }
  }

  /** Start recoverNode for persistent problems and wait for it; someone else's running recovery is joined, not doubled. */
  async recover(actionable: Problem[]): Promise<void> {
    const reason = actionable.map((p) => `${p.kind} (${p.subject}): ${p.detail}`).join('; ');
    const action = { at: new Date(Date.now()).toISOString(), action: 'recover', detail: reason };
    this.status.lastAction = action;
    // Only failed probe rounds: straight to escalation (watcherStartRung). Runs from before the patch started none.
    const rung = watcherStartRung(actionable);
    const startRung = rung !== undefined && patched(ROUND_SAFETY_PATCH) ? { startRung: rung } : {};
    try {
      const child = await startChild(recoverNode, {
        workflowId: workflowIds.recover(this.input.node),
        // The recovery must outlive this run's continue-as-new.
        parentClosePolicy: ParentClosePolicy.ABANDON,
        staticSummary: `Recover ${this.input.node}: ${actionable[0]?.kind ?? 'fault'} (watcher)`,
        args: [
          {
            ...this.input.recovery,
            node: this.input.node,
            reason,
            ...startRung,
            // The diagnosis gives a hung engine the deadline this watcher's rounds gave it, not the health timeout.
            generateTimeout: `${watchGenerateTimeoutMs(this.input.probeTimeout, this.input.generateTimeout)}ms`,
            trigger: { source: 'watcher', detail: `${this.status.consecutiveFailures} consecutive failed probes` },
          },
        ],
      });
      const incident = await child.result();
      action.detail = `${incident.outcome} after ${incident.rungs.map((r) => r.rung).join(' → ') || 'no action'}`;
    } catch (err) {
      // Someone else (Alertmanager, an operator) may already be recovering this node.
      action.detail =
        err instanceof WorkflowExecutionAlreadyStartedError
          ? 'a recovery is already running'
          : `recovery failed: ${(err as Error).message}`;
    }
    this.status.consecutiveFailures = 0;
  }
}

/** The `maintenance` Update's validator: a malformed request is rejected before it reaches the history. */
function validateMaintenance(m: SetMaintenanceInput): void {
  const r = MaintenanceInput.safeParse(m);
  if (!r.success) {
    throw ApplicationFailure.nonRetryable(
      `invalid maintenance: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
      'ValidationError',
    );
  }
}

/**
 * Watch a node: probe every interval on its pinned queue; after `failureThreshold` consecutive failed probes (and
 * outside maintenance) start `recoverNode` and wait for it. ID `watch:<node>`. Messages: Update `maintenance`,
 * Query `status`.
 */
export async function watchNode(rawInput: WatchNodeInput): Promise<never> {
  const input = parseInput(WatchNodeInput, rawInput, 'watchNode input');
  upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.node, value: input.node }]);
  const watch = new NodeWatch(input);
  setHandler(getWatchStatusQuery, () => watch.snapshot());
  setHandler(setMaintenanceUpdate, (m) => watch.setMaintenance(m), { validator: validateMaintenance });

  // Handlers are registered before the first await so queries and updates work from the first moment.
  const control = proxyActivities<ControlActivities>(watchFacts);
  const facts = await control.nodeFacts({ node: input.node });
  watch.facts = facts;
  const intervalMs = parseDuration(input.probeInterval);
  /** The interval's sub-second rest after the last round, waited out by the next round on the node. */
  let leadInMs = 0;
  // A blind-streak notification still in flight keeps the run probing past its count (it settles within its five
  // tries), so continue-as-new never holds up the rounds to wait for a webhook.
  for (let i = 0; i < input.probesPerRun || watch.blindNoticesInFlight > 0; i++) {
    const wasHealthy = watch.lastHealthy;
    // Workflow time when this round's probing begins: the round's activity counts against the interval.
    const roundStarted = Date.now() + leadInMs;
    const report = await watch.probe(facts, leadInMs);
    leadInMs = 0;
    const actionable = watch.observe(report);
    // Added with the router's auto-drain: histories recorded before it replay without the release call.
    if (report.healthy && wasHealthy !== true && patched('release-router-auto-drain'))
      await watch.releaseRouterDrains(control);
    let intervalFrom = roundStarted;
    if (watch.status.consecutiveFailures >= input.failureThreshold) {
      await watch.recover(actionable);
      // After a recovery a whole interval passes before the next round, as it always did: recoverNode has just
      // verified the node itself.
      intervalFrom = Date.now();
    }
    if (!patched(PROBE_CADENCE_PATCH)) await sleep(intervalMs);
    else {
      const left = intervalMs - (Date.now() - intervalFrom);
      if (left >= MAX_LEAD_IN_MS) await sleep(left);
      else if (left > 0) leadInMs = left;
    }
    // The breaks below wait for a blind-streak notification in flight (none in runs from before it).
    const noticeInFlight = watch.blindNoticesInFlight > 0;
    // Under Worker Versioning a run stays pinned to the control-worker version it started on; when a newer one is
    // current, move to it now rather than after this run's remaining probes (README: upgrading while workflows run).
    if (
      !noticeInFlight &&
      workflowInfo().targetWorkerDeploymentVersionChanged &&
      patched('watch-upgrade-on-continue-as-new')
    )
      break;
    // The server says the history is getting large (events or bytes): start over now, whatever the count says.
    if (!noticeInFlight && workflowInfo().continueAsNewSuggested && patched(SINGLE_PROBE_ACTIVITY)) break;
  }
  // The rest of the interval the next round would have waited out on the node: the next run's first round follows
  // nodeFacts at once, so it is waited out here (a timer: about a second, once per run).
  if (leadInMs > 0) await sleep(leadInMs);
  // Wait for in-flight Update handlers (no blind-streak notification is in flight: the loop probed on until none
  // was), then start over with bounded history, carrying the state. The next run's first task goes to the
  // deployment's current version (AUTO_UPGRADE), so a watcher that runs forever still picks up new code at its next
  // run; unversioned workers ignore the option.
  await condition(allHandlersFinished);
  return makeContinueAsNewFunc<typeof watchNode>({ initialVersioningBehavior: 'AUTO_UPGRADE' })({
    ...rawInput,
    state: {
      consecutiveFailures: watch.status.consecutiveFailures,
      maintenance: watch.status.maintenance,
      ...(watch.lastHealthy !== undefined && patched('release-router-auto-drain')
        ? { healthy: watch.lastHealthy }
        : {}),
      ...(watch.blind.rounds > 0 && patched(BLIND_ALERT_PATCH) ? { blind: watch.blind } : {}),
      ...(watch.status.blindAlert && patched(BLIND_ALERT_PATCH) ? { blindAlert: watch.status.blindAlert } : {}),
    },
  });
}
