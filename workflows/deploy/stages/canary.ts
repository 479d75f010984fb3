/**
 * Canary: the new version gets the first step's weight, then each step is analysed against stable in the same window
 * every analysisInterval until it passes (a breach rolls back at the next analysis, not at the end of the step),
 * topped up with synthetic requests from the golden set while real traffic is too thin. A promote ends the steps.
 */
import { analyseCanary, measure, type CanaryAnalysis } from '../../../src/domain/canary';
import { parseDuration } from '../../../src/domain/durations';
import { addCanary } from '../../../src/domain/route-ops';
import type { Variant } from '../../../src/router/routes';
import {
  MAX_CANARY_ROUNDS,
  type CanaryPosition,
  type CanaryRound,
  type CanaryStepRecord,
} from '../../../src/contracts';
import { Rollback, fromNow, now, type Deployment } from '../deployment';
import { continueIfFull, resumeAt, type Prepared, type ResumeAt } from '../resume';
import { addUndo } from '../undo';
import type { Plan } from './plan';

/** How one canary step ended. */
export type StepOutcome = { kind: 'pass' } | { kind: 'promote' } | { kind: 'breach' | 'starved'; reason: string };

interface Step {
  /** 1-based. */
  n: number;
  weight: number;
  /** Synthetic traffic: prompts, and the API to send them through (Ollama's unless the engine is not Ollama). */
  prompts: string[];
  api?: 'openai';
}

/** Counters of one step across its analysis rounds. */
interface Rounds {
  synthetic: number;
  failures: number;
  starved: number;
}

/** The new version as a route variant. */
export function canaryVariant(plan: Plan, served: string, weight: number): Variant {
  return { name: 'canary', engine: plan.slot.url, engineType: plan.slot.type, model: served, weight };
}

/**
 * Add the canary variant (undo first), then run each step; a breach or a starved step rolls back. A run continued
 * as new (../resume.ts) re-enters the step it left, between two of its rounds.
 */
export async function canary(dep: Deployment, prepared: Prepared): Promise<void> {
  const { where: plan, served, golden } = prepared;
  const steps = dep.policy.canarySteps;
  const from = resumeAt(dep, 'canary');
  if (!from) {
    // The undo goes first, so a rollback removes the variant even if adding it half failed; after a shadow stage the
    // variant is there already, and so is that undo.
    if (dep.status.shadow?.verdict !== 'pass') addUndo(dep, { undo: 'remove-canary' });
    await dep.changeRoute(addCanary(canaryVariant(plan, served, steps[0] ?? 10)));
    // Weight 0 is the quickest undo (one PATCH): added last, it runs first on rollback.
    addUndo(dep, { undo: 'canary-weight-0' });
  }
  const traffic = {
    prompts: golden.map((g) => g.prompt),
    ...(plan.slot.type === 'ollama' ? {} : { api: 'openai' as const }),
  };
  const carry = (at: ResumeAt): Promise<void> => continueIfFull(dep, prepared, at);
  for (const [i, weight] of steps.entries()) {
    if (from && i < from.step) continue;
    const resuming = from?.step === i ? from : null;
    if (!resuming) {
      if (i > 0) await dep.moveWeights(weight);
      dep.stage('canary', `canary step ${i + 1}/${steps.length} at ${weight}%`);
    }
    const outcome = await canaryStep(dep, { n: i + 1, weight, ...traffic }, resuming, carry);
    if (outcome.kind === 'promote') break;
    if (outcome.kind !== 'pass') throw new Rollback('canary analysis', outcome.reason);
  }
  dep.status.live = null;
}

/**
 * One step, analysed every analysisInterval over the step's own window until it passes, breaches or starves.
 * `from`: where a run before this one left the step. Between two rounds `carry` may continue as new.
 */
export async function canaryStep(
  dep: Deployment,
  step: Step,
  from: CanaryPosition | null,
  carry: (at: CanaryPosition) => Promise<void>,
): Promise<StepOutcome> {
  const { policy } = dep;
  const start = from?.startedAt ?? Date.now();
  const deadline = start + parseDuration(policy.stepDuration);
  const intervalMs = parseDuration(policy.analysisInterval);
  const rounds: Rounds = {
    synthetic: from?.synthetic ?? 0,
    failures: from?.failures ?? 0,
    starved: from?.starved ?? 0,
  };
  const where = `step ${step.n} at ${step.weight}%`;
  let analyseNow = from?.analyseNow ?? false;
  let analysed = false;
  for (;;) {
    // A safe point: no round in flight. At least one round per run, so a run always makes progress.
    if (analysed) await carry({ stage: 'canary', step: step.n - 1, startedAt: start, ...rounds, analyseNow });
    analysed = true;
    const untilDeadline = Math.min(intervalMs, Math.max(0, deadline - Date.now()));
    const wait = analyseNow ? 0 : Date.now() >= deadline ? intervalMs : untilDeadline;
    analyseNow = false;
    await dep.waitFor(() => dep.promotion !== null, wait);
    if (dep.promotion) return { kind: 'promote' };
    const record = await analyse(dep, step, start, rounds);
    const { verdict, reasons } = record.analysis;
    const stepOver = Date.now() >= deadline;
    if (rounds.failures >= policy.failureLimit) {
      return settle(dep, record, { kind: 'breach', reason: `${where}: ${reasons.join('; ')}` });
    }
    if (stepOver && verdict === 'pass') return settle(dep, record, { kind: 'pass' });
    if (verdict !== 'insufficient') continue;
    if (stepOver && ++rounds.starved > 3) {
      return settle(dep, record, { kind: 'starved', reason: `${where}: not enough data (${reasons.join('; ')})` });
    }
    analyseNow = await topUp(dep, step, record.analysis, rounds);
  }
}

/** Canary against stable over the step's window so far; the live analysis in the record. */
async function analyse(dep: Deployment, step: Step, start: number, rounds: Rounds): Promise<CanaryStepRecord> {
  const window = `${Math.max(1, Date.now() - start)}ms`;
  const stats = await dep.acts.control.getStats({ alias: dep.input.alias, window });
  const analysis = analyseCanary(stats.variants.stable, stats.variants.canary, dep.policy);
  rounds.failures = analysis.verdict === 'fail' ? rounds.failures + 1 : 0;
  const record = { step: step.n, weight: step.weight, at: now(), window, synthetic: rounds.synthetic, analysis };
  dep.status.live = { ...record, consecutiveFailures: rounds.failures };
  keepRound(dep.status.rounds, {
    n: (dep.status.rounds.at(-1)?.n ?? 0) + 1,
    step: step.n,
    weight: step.weight,
    at: record.at,
    verdict: analysis.verdict,
    stable: measure(stats.variants.stable),
    canary: measure(stats.variants.canary),
  });
  return record;
}

/** Append a round, dropping the oldest beyond MAX_CANARY_ROUNDS. */
function keepRound(kept: CanaryRound[], round: CanaryRound): void {
  kept.push(round);
  if (kept.length > MAX_CANARY_ROUNDS) kept.splice(0, kept.length - MAX_CANARY_ROUNDS);
}

/** The step's verdict: its last analysis joins the record. */
function settle(dep: Deployment, record: CanaryStepRecord, outcome: StepOutcome): StepOutcome {
  dep.status.analyses.push(record);
  return outcome;
}

/**
 * Send the synthetic requests the window still lacks, within the step's budget. Answers whether it sent any (then
 * the next analysis runs at once).
 */
async function topUp(dep: Deployment, step: Step, analysis: CanaryAnalysis, rounds: Rounds): Promise<boolean> {
  const { minSamples, maxSyntheticPerStep } = dep.policy;
  const need = Math.max(
    (minSamples - analysis.samples.canary) / (step.weight / 100),
    (minSamples - analysis.samples.stable) / ((100 - step.weight) / 100),
  );
  const count = Math.min(Math.ceil(need * 1.3) + 2, maxSyntheticPerStep - rounds.synthetic);
  // Nothing to top up (budget spent, or the window is short of something traffic cannot fix): wait for more.
  if (!(need > 0) || count <= 0) return false;
  const { prompts, api } = step;
  await dep.acts.traffic.sendSyntheticTraffic({
    alias: dep.input.alias,
    prompts,
    count,
    concurrency: 4,
    ...(api ? { api } : {}),
  });
  rounds.synthetic += count;
  return true;
}

/** Without autoPromote, a passed canary waits (up to approvalTimeout) for the promote Update. */
export async function awaitPromotion(dep: Deployment): Promise<void> {
  const { autoPromote, approvalTimeout } = dep.policy;
  if (dep.promotion || autoPromote) return;
  dep.stage(
    'awaiting-promotion',
    `canary passed at ${dep.status.weights.canary}%: waiting for promote`,
    fromNow(approvalTimeout),
  );
  const promoted = await dep.waitFor(() => dep.promotion !== null, approvalTimeout);
  if (!promoted) throw new Rollback('deployModel', `no promote within ${approvalTimeout}`);
}
