/**
 * Bounded history: a long canary continues as new between analysis rounds (every round adds about ten events, and
 * Temporal terminates a workflow at 51,200), carrying the deployment — its record, what the stages before the canary
 * answered, the saga's undos as data (./undo.ts) and where to resume (a stage and its state) — in the input's
 * `resume`. The workflow ID, so the alias's lock, its search attributes and firstExecutionRunId stay the same.
 */
import {
  allHandlersFinished,
  condition,
  log,
  makeContinueAsNewFunc,
  patched,
  workflowInfo,
} from '@temporalio/workflow';
import type { DeployResume } from '../../src/contracts';
import type { PromptResult } from '../../src/domain/risk';
import type { Deployment } from './deployment';
import type { deployModel } from './index';
import type { Plan } from './stages/plan';

/** Deployments from before it never continue as new (their histories issue the next round instead). */
export const CONTINUE_AS_NEW_PATCH = 'deploy-continue-as-new';

/** What the stages before the canary answered: what the canary (and a resumed run) goes on from. */
export interface Prepared {
  where: Plan;
  served: string;
  golden: PromptResult[];
}

/** A resume point: a stage that can continue as new, with its own state. */
export type ResumeAt = DeployResume['at'];

/** What the runs before this one prepared (null in a deployment's first run). */
export function resumed(dep: Deployment): Prepared | null {
  const r = dep.input.resume;
  // The plan is this workflow's own Plan, carried as data by the run before.
  return r ? { where: r.plan as unknown as Plan, served: r.served, golden: r.golden } : null;
}

/** Where this run resumes, when it resumes at `stage`. */
export function resumeAt<S extends ResumeAt['stage']>(
  dep: Deployment,
  stage: S,
): Extract<ResumeAt, { stage: S }> | null {
  const at = dep.input.resume?.at;
  return at?.stage === stage ? (at as Extract<ResumeAt, { stage: S }>) : null;
}

/** The history has grown to the bound (the input's maxHistoryEvents, or Temporal suggests it). */
function historyFull(dep: Deployment): boolean {
  const { historyLength, continueAsNewSuggested } = workflowInfo();
  return continueAsNewSuggested || historyLength >= dep.input.maxHistoryEvents;
}

/**
 * At a safe point (between two analysis rounds): when the history is full, continue as new at `at`, carrying the
 * deployment. Returns (the run goes on) while it is not full, while a promote or rollback waits to be honoured (it
 * is honoured in this run, next), or when an undo is not carried as data (a stage registered a bare closure).
 */
export async function continueIfFull(dep: Deployment, prepared: Prepared, at: ResumeAt): Promise<void> {
  if (!historyFull(dep)) return;
  // Update handlers here are synchronous; wait for any all the same, then re-check what they may have set.
  await condition(allHandlersFinished);
  const undo = dep.saga.data;
  if (dep.steered || !undo) {
    if (!undo) log.warn('history full, but an undo is not carried as data: not continuing as new');
    return;
  }
  if (!patched(CONTINUE_AS_NEW_PATCH)) return;
  const runs = (dep.input.resume?.runs ?? 0) + 1;
  dep.status.continuedAsNew = runs;
  const { historyLength } = workflowInfo();
  log.info('continuing as new to bound the history', { historyLength, runs, at: at.stage });
  const { served, golden } = prepared;
  const resume: DeployResume = { status: dep.status, plan: { ...prepared.where }, served, golden, undo, at, runs };
  // The bound as this run had it, written out: a later default must not change when a recorded run continued.
  const { maxHistoryEvents } = dep.input;
  await makeContinueAsNewFunc<typeof deployModel>()({ ...dep.raw, maxHistoryEvents, resume });
}
