/**
 * One deployment's state, and its only writer of what others read: the stage (and GpuopsStage), the weights (and
 * GpuopsCanaryWeight), the outcome. The Update handlers validate against it and set its flags; the stages read it
 * and call its methods. A requested rollback is honoured where a stage begins and wherever the deployment waits,
 * never by hand in the stages.
 */
import {
  ApplicationFailure,
  CancellationScope,
  ContinueAsNew,
  condition,
  isCancellation,
  log,
  patched,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { Duration } from '@temporalio/common';
import type { z } from 'zod';
import { expectationRefusal, type Expectation } from '../../src/domain/deploy-expectation';
import { parseDuration } from '../../src/domain/durations';
import { aliasesWhere, weightsAfter, type RouteOp } from '../../src/domain/route-ops';
import { formatIssues, parseInput } from '../../src/domain/validation';
import type { Variant } from '../../src/router/routes';
import {
  ApproveDeploymentInput,
  DeployModelInput,
  PromoteCanaryInput,
  RollbackDeploymentInput,
  SEARCH_ATTRIBUTES,
  approveDeploymentUpdate,
  getDeploymentStatusQuery,
  promoteCanaryUpdate,
  rollbackDeploymentUpdate,
  workflowIds,
  type DeployUndo,
  type DeploymentStatus,
  type DeployStage,
  type RollbackOutcome,
} from '../../src/contracts';
import { workflowMetrics } from '../metrics';
import { Saga, failureMessage } from '../saga';
import { deploymentActivities, type DeploymentActivities } from './activities';
import { legacyChangeRoute } from './legacy';
import { addUndo } from './undo';

/** deployModel's input after parsing (defaults filled in). */
export type DeployInput = z.output<typeof DeployModelInput>;

/**
 * Route changes go through one changeRoute activity (If-Match; a conflict is retried by its retry policy). Histories
 * from before it read the table (getRoutes) and wrote it (putRoutes) from the workflow, re-reading on a conflict.
 */
export const ROUTE_OPS_PATCH = 'deploy-route-ops-activity';

/** Deployments from before it end without writing the HTML deployment page (no activity after the outcome). */
export const HTML_REPORT_PATCH = 'deploy-html-report';

/** A rollback the deployment decided on (a breach, a refused check, an operator): the saga undoes what was done. */
export class Rollback extends Error {
  constructor(
    readonly by: string,
    readonly reason: string,
  ) {
    super(reason);
  }
}

/**
 * Stages whose start honours a requested rollback. Not `assessing-risk`, which only writes its report (the approval
 * gate right after it honours one), nor `promoting`: promotion is decided by then, and a rollback asked meanwhile is
 * a route switch in the rollback window.
 */
const HONOURS_ROLLBACK: ReadonlySet<DeployStage> = new Set<DeployStage>([
  'preflight',
  'pulling',
  'loading-canary-slot',
  'validating',
  'awaiting-approval',
  'shadow',
  'canary',
  'awaiting-promotion',
  'rollback-window',
]);

/** The workflow's clock as an ISO time, for the record. */
export const now = (): string => new Date(Date.now()).toISOString();

/** The workflow's clock `d` (a duration such as "24h") from now, as an ISO time: when a wait of `d` ends. */
export const fromNow = (d: string): string => new Date(Date.now() + parseDuration(d)).toISOString();

const refuse = (message: string): never => {
  throw ApplicationFailure.nonRetryable(message, 'Refused');
};

/** zod in an Update validator: a malformed input is refused with the field and the rule. */
function checkUpdateInput<S extends z.ZodType>(schema: S, input: unknown, name: string): void {
  const r = schema.safeParse(input);
  if (!r.success) refuse(`invalid ${name} input: ${formatIssues(r.error).join('; ')}`);
}

export class Deployment {
  /** The audit record: what the `status` query answers and deployModel returns. */
  readonly status: DeploymentStatus;
  /**
   * The undos of what this deployment changed; a rollback runs them in reverse and records them in `status.undo`.
   * Those before promotion carry their data (./undo.ts), so they cross continue-as-new.
   */
  readonly saga: Saga<DeployUndo>;
  readonly acts: DeploymentActivities;
  /** Who the router's audit log names for this deployment's changes. */
  readonly actor: string;
  approval: ApproveDeploymentInput | null = null;
  promotion: PromoteCanaryInput | null = null;
  private rollbackAsked: RollbackDeploymentInput | null = null;
  private finished = false;
  private windowClosed = false;
  private cancelled: unknown = null;

  private constructor(
    readonly input: DeployInput,
    /** The input as given: what a continue-as-new starts the next run with (and its `resume`). */
    readonly raw: DeployModelInput,
  ) {
    this.actor = workflowInfo().workflowId;
    this.acts = deploymentActivities(input);
    // A run continued as new goes on with the record so far (see ./resume.ts).
    this.status = input.resume?.status ?? newRecord(this.actor, input);
    this.saga = new Saga(this.status.undo);
  }

  get policy(): DeployInput['policy'] {
    return this.input.policy;
  }

  /** Parse the input, insist on the workflow ID that locks the alias, answer the Updates and Query. */
  static start(raw: DeployModelInput): Deployment {
    const input = parseInput(DeployModelInput, raw, 'deployModel input');
    const want = workflowIds.deploy(input.node, input.alias);
    const { workflowId } = workflowInfo();
    if (workflowId !== want) {
      // The ID is the lock that keeps deployments to one alias one at a time; any other ID would bypass it.
      throw ApplicationFailure.create({
        type: 'ValidationError',
        nonRetryable: true,
        message: `invalid deployModel input: workflow ID must be ${want} (got ${workflowId})`,
      });
    }
    if (input.resume) refuseForeignResume(input);
    const dep = new Deployment(input, raw);
    dep.listen();
    upsertSearchAttributes([
      { key: SEARCH_ATTRIBUTES.node, value: input.node },
      { key: SEARCH_ATTRIBUTES.alias, value: input.alias },
      { key: SEARCH_ATTRIBUTES.model, value: input.model },
      { key: SEARCH_ATTRIBUTES.canaryWeight, value: dep.status.weights.canary },
    ]);
    if (input.resume) dep.resumeRun(input.resume.undo);
    return dep;
  }

  /** A run continued as new: the same undos from their data, and the stage it is in, as the run before left it. */
  private resumeRun(undos: DeployUndo[]): void {
    for (const u of undos) addUndo(this, u);
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.stage, value: this.status.stage }]);
    this.details(`${this.status.stage} (continued as new)`);
  }

  /** The UI's current details. */
  private details(text: string): void {
    const { model, alias, node } = this.input;
    setCurrentDetails(`Deploying **${model}** → \`${alias}\` on **${node}** — ${text}`);
  }

  /** A promote or rollback was asked and is not honoured yet (a continue-as-new waits for it to be). */
  get steered(): boolean {
    return this.promotion !== null || this.rollbackAsked !== null;
  }

  private listen(): void {
    setHandler(getDeploymentStatusQuery, () => this.status);
    setHandler(
      approveDeploymentUpdate,
      (a) => {
        this.approval = a;
        return this.status;
      },
      { validator: (a: ApproveDeploymentInput) => this.validateApprove(a) },
    );
    setHandler(
      promoteCanaryUpdate,
      (p) => {
        this.promotion = p;
        return this.status;
      },
      { validator: (p: PromoteCanaryInput) => this.validatePromote(p) },
    );
    setHandler(
      rollbackDeploymentUpdate,
      (r) => {
        this.rollbackAsked ??= r;
        return this.status;
      },
      { validator: (r: RollbackDeploymentInput) => this.validateRollback(r) },
    );
  }

  private validateApprove(a: ApproveDeploymentInput): void {
    checkUpdateInput(ApproveDeploymentInput, a, 'approve');
    this.checkExpectation(a.expect);
    if (this.finished) refuse(`the deployment has finished (${this.status.outcome})`);
    if (this.status.stage !== 'awaiting-approval') refuse(`nothing awaits approval (stage ${this.status.stage})`);
  }

  private validatePromote(p: PromoteCanaryInput): void {
    const { stage, live, analyses, outcome } = this.status;
    checkUpdateInput(PromoteCanaryInput, p, 'promote');
    this.checkExpectation(p.expect);
    if (this.finished) refuse(`the deployment has finished (${outcome})`);
    if (this.rollbackAsked || stage === 'rolling-back') refuse('the deployment is rolling back');
    if (stage === 'rollback-window' || stage === 'promoting') refuse('already promoted');
    if (stage !== 'canary' && stage !== 'awaiting-promotion') refuse(`no canary is running (stage ${stage})`);
    const latest = live?.analysis ?? analyses.at(-1)?.analysis;
    if (latest?.verdict === 'fail' && !p.force) {
      refuse(`the canary analysis is failing (${latest.reasons.join('; ')}); send force: true to override`);
    }
  }

  private validateRollback(r: RollbackDeploymentInput): void {
    checkUpdateInput(RollbackDeploymentInput, r, 'rollback');
    this.checkExpectation(r.expect);
    if (this.finished) refuse(`the deployment has finished (${this.status.outcome})`);
    if (this.windowClosed) refuse('the rollback window has closed: deploy the old version again to go back');
  }

  /**
   * An Update that names the deployment it means (model, digest, revision, run) is refused, naming what runs, when
   * this is another one: its sender's start may have joined this run instead of starting its own.
   */
  private checkExpectation(e: Expectation | undefined): void {
    const { workflowId, stage, model, digest, expectedDigest, revision } = this.status;
    const { runId, firstExecutionRunId } = workflowInfo();
    const running = { workflowId, stage, model, digest, expectedDigest, revision, runId, firstExecutionRunId };
    const why = expectationRefusal(e, running);
    if (why) refuse(why);
  }

  /**
   * Enter a stage (record, timing, GpuopsStage, the UI's details); then honour a requested rollback. `waitingUntil`:
   * for a stage that waits, when its wait ends (the status shows it; entering any other stage clears it).
   */
  stage(s: DeployStage, details: string, waitingUntil: string | null = null): void {
    this.status.stage = s;
    this.status.waitingUntil = waitingUntil;
    this.status.timings.stages.push({ stage: s, at: now() });
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.stage, value: s }]);
    this.details(details);
    if (HONOURS_ROLLBACK.has(s)) this.honourRollback();
  }

  private honourRollback(): void {
    const r = this.rollbackAsked;
    if (r) throw new Rollback(r.by, `rollback requested: ${r.reason}`);
  }

  /**
   * Wait until `done` holds or `timeout` passes (a timeout of 0 ms does not wait), then honour a requested rollback,
   * which also ends the wait. Answers whether `done` held. `cancelEndsWait`: cancelling the workflow ends the wait
   * (the workflow ends Cancelled when it finishes) instead of failing it.
   */
  async waitFor(done: () => boolean, timeout: Duration, opts: { cancelEndsWait?: boolean } = {}): Promise<boolean> {
    const over = (): boolean => done() || this.rollbackAsked !== null;
    try {
      if (!over() && timeout !== 0) await condition(over, timeout);
    } catch (err) {
      if (!opts.cancelEndsWait || !isCancellation(err)) throw err;
      this.cancelled = err;
    }
    this.honourRollback();
    return done();
  }

  /** The one writer of the weights and GpuopsCanaryWeight (upserted when the canary's weight changes). */
  private setWeights(weights: { stable: number; canary: number }): void {
    const moved = weights.canary !== this.status.weights.canary;
    this.status.weights = weights;
    if (moved) upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.canaryWeight, value: weights.canary }]);
  }

  /** Move the alias's traffic: the canary gets `canary`%, stable the rest (one atomic PATCH of the weights). */
  async moveWeights(canary: number): Promise<void> {
    const weights = { stable: 100 - canary, canary };
    await this.acts.control.setWeights({ alias: this.input.alias, weights, actor: this.actor });
    this.setWeights(weights);
  }

  /** Apply a route operation to the alias (src/domain/route-ops), then record the weights it leaves. */
  async changeRoute(op: RouteOp): Promise<void> {
    const { alias } = this.input;
    const viaActivity = patched(ROUTE_OPS_PATCH);
    if (viaActivity) await this.acts.routes.changeRoute({ alias, op, actor: this.actor });
    else await legacyChangeRoute(this.acts.control, { alias, actor: this.actor }, op);
    const weights = weightsAfter(op);
    // Before the patch, removing the canary left the weights as the (earlier) weight-0 undo had set them.
    if (weights && (viaActivity || op.op !== 'removeCanary')) this.setWeights(weights);
  }

  /** Does a variant of any route (read from the router now) satisfy `pred`? Guards undos of shared engines. */
  async routed(pred: (v: Variant) => boolean): Promise<boolean> {
    const doc = await this.acts.control.getRoutes();
    return aliasesWhere(doc.routes, pred).length > 0;
  }

  /** The rollback window is over: a rollback is refused from now on. */
  closeWindow(): void {
    this.windowClosed = true;
  }

  /** The deployment succeeded. */
  complete(): void {
    this.status.rollbackWindowEndsAt = null;
    this.status.outcome = 'promoted';
    this.stage('promoted', `${this.input.model} serves 100% of ${this.input.alias}`);
  }

  /** Roll back after `err` (a Rollback, a cancellation or a failure): the saga, non-cancellable, then the outcome. */
  abort(err: unknown): Promise<void> {
    // Continuing as new is no failure: the next run goes on with the deployment (./resume.ts).
    if (err instanceof ContinueAsNew) throw err;
    if (err instanceof Rollback) return this.rollBack(err.by, err.reason, 'rolled-back');
    if (isCancellation(err)) {
      this.cancelled = err;
      return this.rollBack('deployModel', 'the workflow was cancelled', 'cancelled');
    }
    this.status.error = failureMessage(err);
    return this.rollBack('deployModel', `failed: ${this.status.error}`, 'failed');
  }

  private rollBack(by: string, reason: string, outcome: RollbackOutcome): Promise<void> {
    return CancellationScope.nonCancellable(async () => {
      this.status.rollback = { by, reason };
      this.status.live = null;
      this.stage('rolling-back', `rolling back: ${reason}`);
      await this.saga.compensate();
      this.status.outcome = outcome;
      this.stage(outcome, `${outcome}: ${reason}`);
    });
  }

  /**
   * The end: Updates are refused from now on; the deployment page is written (HTML_REPORT_PATCH). A cancelled
   * deployment ends Cancelled, after its saga ran.
   */
  async finish(): Promise<DeploymentStatus> {
    this.finished = true;
    this.status.timings.endedAt = now();
    const { node, alias, outcome, timings } = this.status;
    // The stage it reached: the last one before rolling back (or promoted itself).
    const reached = [...timings.stages].reverse().find((s) => s.stage !== 'rolling-back' && s.stage !== outcome);
    const stage = outcome === 'promoted' ? 'promoted' : (reached?.stage ?? 'starting');
    workflowMetrics().add('deployments', { node, alias, stage, outcome });
    if (patched(HTML_REPORT_PATCH)) await this.writePage();
    if (this.cancelled) throw this.cancelled;
    return this.status;
  }

  /**
   * Write the deployment page beside the risk report and link it from `status.reports`. Non-cancellable: a
   * cancelled deployment gets its page too. A page that cannot be written is logged; it does not change the outcome.
   */
  private writePage(): Promise<void> {
    const { workflowId, runId } = workflowInfo();
    const { minSamples, maxErrorRateDelta, maxTtftP95Ratio, minTokensPerSecondRatio, failureLimit } = this.policy;
    const thresholds = { minSamples, maxErrorRateDelta, maxTtftP95Ratio, minTokensPerSecondRatio, failureLimit };
    return CancellationScope.nonCancellable(async () => {
      try {
        const page = await this.acts.control.writeDeploymentReport({
          workflowId,
          runId,
          status: this.status,
          thresholds,
        });
        this.status.reports = { ...this.status.reports, html: page.html };
      } catch (err) {
        log.warn('deployment page not written', { error: failureMessage(err) });
      }
    });
  }
}

/** A deployment's record as it starts: stage `starting`, nothing done yet. */
export function newRecord(workflowId: string, input: DeployInput): DeploymentStatus {
  return {
    workflowId,
    node: input.node,
    alias: input.alias,
    engine: input.engine,
    model: input.model,
    revision: input.revision ?? null,
    stage: 'starting',
    outcome: 'in-progress',
    digest: null,
    expectedDigest: input.expectedDigest ?? null,
    stable: null,
    canary: null,
    weights: { stable: 100, canary: 0 },
    pull: null,
    preflight: { disk: null, memory: null, offload: null },
    validation: [],
    latency: null,
    riskTier: null,
    risk: null,
    reports: null,
    analyses: [],
    rounds: [],
    live: null,
    requestedBy: input.requestedBy,
    approvedBy: null,
    promotedBy: null,
    rollbackWindowEndsAt: null,
    waitingUntil: null,
    rollback: null,
    undo: [],
    cleanup: [],
    error: null,
    timings: { startedAt: now(), endedAt: null, stages: [] },
  };
}

/**
 * `resume` is the deployment's own, carried by a run into the one it continues as new. Anywhere else (a start that
 * hands one in, forged or copied from a resumed run's input) it would skip validation, risk and approval: refused.
 */
function refuseForeignResume(input: DeployInput): void {
  const { workflowId, continuedFromExecutionRunId } = workflowInfo();
  const r = input.resume;
  if (!r) return;
  const at = r.at;
  const problem = !continuedFromExecutionRunId
    ? 'resume: is set only by a deployment continuing as new, never by a start'
    : r.status.workflowId !== workflowId
      ? `resume: is another deployment's (${r.status.workflowId}), not ${workflowId}'s`
      : at.stage === 'canary' && at.step >= input.policy.canarySteps.length
        ? `resume.at.step: must be a canary step (0 to ${input.policy.canarySteps.length - 1})`
        : null;
  if (problem) {
    throw ApplicationFailure.create({
      type: 'ValidationError',
      nonRetryable: true,
      message: `invalid deployModel input: ${problem}`,
    });
  }
}
