/**
 * One incident's state and the three things every rung does with it: probe the node, verify its health after an
 * action, and act — each action and its failure logged into the rung's attempt in one place. The context is the one
 * writer of the incident record and of the workflow's stage.
 */
import {
  TemporalFailure,
  isCancellation,
  setCurrentDetails,
  sleep,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { z } from 'zod';
import type { NodeFacts } from '../../activities/recovery';
import { verifiesRecovery, type HealthReport } from '../../src/domain/classify';
import { parseDuration } from '../../src/domain/durations';
import { budgetWindowStart, incidentEvidence, recoveryBudget, summarizeReport } from '../../src/domain/incident';
import type { LadderRung } from '../../src/domain/rungs';
import { SEARCH_ATTRIBUTES, type IncidentRecord, type RecoverNodeInput, type RungAttempt } from '../../src/contracts';
import { workflowMetrics } from '../metrics';
import { probeNode } from '../probe';
import { recoveryActivities, type RecoveryActivities } from './activities';

/** recoverNode's input once parsed (defaults filled in). */
export type RecoverInput = z.output<typeof RecoverNodeInput>;

/** The innermost message of a failure: an activity's own error, not "Activity task failed". */
export function failureMessage(err: unknown): string {
  let e: unknown = err;
  while (e instanceof TemporalFailure && e.cause) e = e.cause;
  return e instanceof Error ? e.message : String(e);
}

export class RecoveryContext {
  readonly record: IncidentRecord;
  readonly acts: RecoveryActivities;
  /** Seconds an engine gets to stop before docker kills it. */
  readonly stopSec: number;
  /** The node's engines, GPUs and VM (from gpuops.yaml); set by {@link diagnose}. */
  facts!: NodeFacts;
  /** The latest health report: the diagnosis, then each verification. */
  current!: HealthReport;

  constructor(readonly input: RecoverInput) {
    this.acts = recoveryActivities(input);
    this.stopSec = Math.max(1, Math.round(parseDuration(input.containerStopTimeout) / 1000));
    this.record = {
      node: input.node,
      reason: input.reason,
      trigger: input.trigger,
      startedAt: this.now(),
      endedAt: null,
      outcome: 'in-progress',
      budget: recoveryBudget(0, input.maxRecoveries, input.budgetWindow),
      initial: null,
      evidence: { xids: [], probes: [] },
      rungs: [],
      final: null,
      escalation: null,
    };
  }

  now(): string {
    return new Date(Date.now()).toISOString();
  }

  /** The stage operators filter on (search attribute) and the line the UI shows. */
  stage(stage: string, details: string): void {
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.stage, value: stage }]);
    setCurrentDetails(`Recovering **${this.input.node}** — ${details}`);
  }

  /** Facts, the budget (every recoverNode run for this node in the window counts, whoever started it), a probe. */
  async diagnose(): Promise<HealthReport> {
    const { control } = this.acts;
    this.facts = await control.nodeFacts({ node: this.input.node });
    const used = await control.countRecentRecoveries({
      node: this.input.node,
      since: budgetWindowStart(Date.now(), this.input.budgetWindow),
      excludeRunId: workflowInfo().runId,
    });
    this.record.budget = recoveryBudget(used, this.input.maxRecoveries, this.input.budgetWindow);
    const { generateTimeout } = this.input;
    this.current = await this.probe(
      new Date(Date.now() - 10 * 60_000).toISOString(),
      generateTimeout !== undefined ? parseDuration(generateTimeout) : undefined,
    );
    this.record.initial = summarizeReport(this.current);
    this.record.evidence = incidentEvidence(this.current);
    return this.current;
  }

  /** One probe round; only Xid events after `since` count; `generateTimeoutMs`: the test generation's deadline. */
  probe(since: string, generateTimeoutMs?: number): Promise<HealthReport> {
    return probeNode(this.input.node, {
      generate: this.input.generate,
      expectedGpus: this.facts.gpus.length || undefined,
      xidSince: since,
      pickupTimeout: this.input.pickupTimeout,
      probeTimeout: this.input.probeTimeout,
      ...(generateTimeoutMs !== undefined ? { generateTimeoutMs } : {}),
    });
  }

  /** Probe until healthy or `timeout` has passed; the last report either way. */
  async verify(since: string, timeout: string): Promise<HealthReport> {
    const deadline = Date.now() + parseDuration(timeout);
    let last = await this.probe(since);
    while (!verifiesRecovery(last) && Date.now() < deadline) {
      await sleep(this.input.verifyInterval);
      last = await this.probe(since);
    }
    return last;
  }

  /**
   * Do one action of a rung and log it in the attempt: `line` of its result, or `<what> failed: <why>` (then the
   * failure is rethrown for the rung to decide).
   */
  async act<T>(
    attempt: RungAttempt,
    what: string,
    run: () => Promise<T>,
    line: (result: T) => string | string[] = () => what,
  ): Promise<T> {
    try {
      const result = await run();
      attempt.actions.push(...[line(result)].flat());
      return result;
    } catch (err) {
      attempt.actions.push(isCancellation(err) ? `${what}: cancelled` : `${what} failed: ${failureMessage(err)}`);
      throw err;
    }
  }

  /**
   * A rung's actions: a failed action ends them and is recorded as the attempt's detail, and verification still
   * runs (a command whose answer was lost may still have worked). A cancellation ends the recovery. Resolves to
   * `actions`' own answer (whether anything was done that verification could show), true after a failure.
   */
  async actions(attempt: RungAttempt, actions: () => Promise<boolean>): Promise<boolean> {
    try {
      return await actions();
    } catch (err) {
      if (isCancellation(err)) throw err;
      attempt.detail = `action failed: ${failureMessage(err)}`;
      return true;
    }
  }

  /** Open the attempt of the next rung. */
  begin(rung: LadderRung): RungAttempt {
    const attempt: RungAttempt = {
      rung,
      startedAt: this.now(),
      endedAt: '',
      actions: [],
      outcome: 'failed',
      detail: '',
    };
    this.record.rungs.push(attempt);
    this.stage(rung, `rung **${rung}**`);
    return attempt;
  }

  /** Close an attempt that did nothing verification could show. */
  skip(attempt: RungAttempt, why: string | null): void {
    attempt.outcome = 'skipped';
    if (why !== null) attempt.detail = why;
    attempt.endedAt = this.now();
  }

  /**
   * Close an attempt on the health seen after it. Healthy: the incident is recovered, and engines drained by an
   * earlier escalation go back into the router. Resolves to whether the ladder ends here.
   */
  async judge(attempt: RungAttempt, report: HealthReport): Promise<boolean> {
    this.current = report;
    attempt.endedAt = this.now();
    if (!verifiesRecovery(report)) {
      attempt.outcome = 'still-faulty';
      attempt.detail ||= `still faulty after ${attempt.rung}: ${report.problems.map((p) => p.kind).join(', ')}`;
      return false;
    }
    attempt.outcome = 'healthy';
    const blind = (report.observation.probeFailures ?? []).map((f) => f.probe);
    attempt.detail ||= blind.length ? `verified healthy (not seen: ${blind.join(', ')})` : 'verified healthy';
    this.record.outcome = 'recovered';
    const engines = this.facts.engines.map((e) => e.url);
    await this.act(
      attempt,
      'undrain engines',
      () => this.acts.control.undrainEngines({ node: this.input.node, engines }),
      (u) => u.note ?? `undrained ${u.drained.join(', ') || 'nothing'}`,
    );
    return true;
  }

  /** End the incident: the final health, the end time and the closing stage. */
  finish(): IncidentRecord {
    const r = this.record;
    r.final = r.outcome === 'no-fault-found' ? r.initial : summarizeReport(this.current);
    r.endedAt = this.now();
    if (r.outcome === 'no-fault-found') this.stage('no-fault-found', 'no fault found; nothing done');
    else this.stage(r.outcome, `${r.outcome} after ${r.rungs.map((a) => a.rung).join(' → ')}`);
    const metrics = workflowMetrics();
    metrics.add('recoveries', { node: r.node, outcome: r.outcome });
    for (const a of r.rungs) metrics.add('recoveryRungs', { node: r.node, rung: a.rung, outcome: a.outcome });
    return r;
  }
}
