/**
 * Shadow (only when the policy has `shadow`): before the canary gets any weight, the router mirrors a share of the
 * alias's requests to it and drops its answers, so clients only ever get stable's. Every analysisInterval the mirrored
 * pairs — stable's answer and the canary's to the same requests — are judged with the canary thresholds
 * (analyseCanary); failureLimit failing analyses in a row, or a stage starved of pairs, roll back before any user
 * request was served by the canary. A pass stops the mirroring and hands over to the canary steps.
 */
import { patched } from '@temporalio/workflow';
import { analyseCanary, measure, type CanaryThresholds } from '../../../src/domain/canary';
import { parseDuration } from '../../../src/domain/durations';
import { addShadow, removeShadow } from '../../../src/domain/route-ops';
import { MAX_CANARY_ROUNDS, type ShadowPosition, type ShadowRecord } from '../../../src/contracts';
import type { ShadowStats } from '../../../src/router/stats';
import { Rollback, now, type Deployment } from '../deployment';
import { continueIfFull, resumeAt, type Prepared } from '../resume';
import { addUndo } from '../undo';
import { canaryVariant } from './canary';

type Verdict = { kind: 'pass' } | { kind: 'fail' | 'starved'; reason: string };

/** Deployments from before it size the shadow stage's synthetic traffic as if every mirrored request paired. */
export const SHADOW_YIELD_PATCH = 'deploy-shadow-synthetic-by-pair-yield';

type PairCounts = Pick<ShadowStats, 'pairs' | 'dropped'> & Partial<Pick<ShadowStats, 'skipped' | 'aborted'>>;

const total = (by: Partial<Record<string, number>> | undefined): number =>
  Object.values(by ?? {}).reduce<number>((a, n) => a + (n ?? 0), 0);

/** The share of the requests picked for mirroring that became pairs (1 before any was picked; never below 5 %). */
function pairYield(p: PairCounts | undefined): number {
  if (!p) return 1;
  const picked = p.pairs + p.dropped + total(p.skipped) + total(p.aborted);
  return picked > 0 ? Math.min(1, Math.max(0.05, p.pairs / picked)) : 1;
}

/** `skipped shared_engine 3, drained 1`, or '' when none. */
function byReason(what: string, by: Partial<Record<string, number>> | undefined): string {
  const parts = Object.entries(by ?? {}).map(([k, n]) => `${k} ${n ?? 0}`);
  return parts.length > 0 ? `${what} ${parts.join(', ')}` : '';
}

/** The synthetic requests the stage may send: golden prompts, through the API the slot speaks. */
interface Traffic {
  prompts: string[];
  api?: 'openai';
}

/**
 * Mirror to the canary (undo first), analyse the pairs until the stage passes; a fail or starvation rolls back. A
 * run continued as new (../resume.ts) re-enters the stage between two of its rounds, or skips it once it passed.
 */
export async function shadow(dep: Deployment, prepared: Prepared): Promise<void> {
  const cfg = dep.policy.shadow;
  if (!cfg || resumeAt(dep, 'canary')) return;
  const { where: plan, served, golden } = prepared;
  const from = resumeAt(dep, 'shadow');
  let record = from ? dep.status.shadow : undefined;
  if (!record) {
    record = {
      percent: cfg.percent,
      maxConcurrent: cfg.maxConcurrent,
      startedAt: now(),
      endedAt: null,
      verdict: 'running',
      synthetic: 0,
      analysis: null,
      consecutiveFailures: 0,
      rounds: [],
    };
    dep.status.shadow = record;
    dep.stage('shadow', `shadow: mirroring ${cfg.percent}% of the requests to the canary for ${cfg.duration}`);
    // The canary's own undo: removing the variant also ends the mirroring (every route op but addShadow clears it).
    addUndo(dep, { undo: 'remove-canary' });
    await dep.changeRoute(addShadow(canaryVariant(plan, served, 0), cfg.percent, cfg.maxConcurrent));
  }
  const traffic: Traffic = {
    prompts: golden.map((g) => g.prompt),
    ...(plan.slot.type === 'ollama' ? {} : { api: 'openai' as const }),
  };
  const carry = (at: ShadowPosition): Promise<void> => continueIfFull(dep, prepared, at);
  const verdict = await analyseShadow(dep, record, traffic, from, carry);
  record.verdict = verdict.kind;
  record.endedAt = now();
  if (verdict.kind !== 'pass') throw new Rollback('shadow analysis', verdict.reason);
  await dep.changeRoute(removeShadow());
}

/** Analyse every analysisInterval over the stage's window until it passes (after `duration`), fails or starves. */
async function analyseShadow(
  dep: Deployment,
  record: ShadowRecord,
  traffic: Traffic,
  from: ShadowPosition | null,
  carry: (at: ShadowPosition) => Promise<void>,
): Promise<Verdict> {
  const { policy } = dep;
  const cfg = policy.shadow ?? { duration: '0s', percent: 100, minSamples: undefined };
  const start = from?.startedAt ?? Date.now();
  const deadline = start + parseDuration(cfg.duration);
  const intervalMs = parseDuration(policy.analysisInterval);
  const thresholds: CanaryThresholds = { ...policy, minSamples: cfg.minSamples ?? policy.minSamples };
  let starved = from?.starved ?? 0;
  let analyseNow = from?.analyseNow ?? false;
  let analysed = false;
  for (;;) {
    // A safe point: no round in flight. At least one round per run, so a run always makes progress.
    if (analysed) await carry({ stage: 'shadow', startedAt: start, starved, analyseNow });
    analysed = true;
    const over = Date.now() >= deadline;
    await dep.waitFor(() => false, analyseNow ? 0 : over ? intervalMs : Math.min(intervalMs, deadline - Date.now()));
    analyseNow = false;
    const window = `${Math.max(1, Date.now() - start)}ms`;
    const stats = await dep.acts.control.getStats({ alias: dep.input.alias, window });
    const pairs = stats.shadow?.canary;
    const analysis = analyseCanary(pairs?.primary, pairs?.shadow, thresholds);
    record.analysis = analysis;
    record.consecutiveFailures = analysis.verdict === 'fail' ? record.consecutiveFailures + 1 : 0;
    record.rounds.push({
      n: (record.rounds.at(-1)?.n ?? 0) + 1,
      at: now(),
      verdict: analysis.verdict,
      pairs: pairs?.pairs ?? 0,
      dropped: pairs?.dropped ?? 0,
      skipped: pairs?.skipped ?? {},
      aborted: pairs?.aborted ?? {},
      stable: measure(pairs?.primary),
      canary: measure(pairs?.shadow),
      answerTokens: { stable: pairs?.answerTokens.primary ?? null, canary: pairs?.answerTokens.shadow ?? null },
    });
    if (record.rounds.length > MAX_CANARY_ROUNDS) record.rounds.splice(0, record.rounds.length - MAX_CANARY_ROUNDS);
    const reasons = analysis.reasons.join('; ');
    if (record.consecutiveFailures >= policy.failureLimit) return { kind: 'fail', reason: `shadow: ${reasons}` };
    const stageOver = Date.now() >= deadline;
    if (stageOver && analysis.verdict === 'pass') return { kind: 'pass' };
    if (analysis.verdict !== 'insufficient') continue;
    if (stageOver && ++starved > 3) {
      const dropped = pairs?.dropped ?? 0;
      const lost = [byReason('skipped', pairs?.skipped), byReason('aborted', pairs?.aborted)].filter(Boolean);
      return {
        kind: 'starved',
        reason: `shadow: not enough mirrored pairs (${reasons}; ${dropped} dropped at the cap${lost.map((l) => `, ${l}`).join('')})`,
      };
    }
    // Mirrored pairs still missing: synthetic requests through the router are mirrored like real ones, and as many of
    // them become pairs as the router's caps and skips let through (one copy at a time on an engine shared with
    // stable): sized by the yield seen so far (runs from before SHADOW_YIELD_PATCH assume every copy pairs).
    const rate = patched(SHADOW_YIELD_PATCH) ? pairYield(pairs) : 1;
    const need = (thresholds.minSamples - analysis.samples.canary) / (cfg.percent / 100) / rate;
    const count = Math.min(Math.ceil(need * 1.3) + 2, policy.maxSyntheticPerStep - record.synthetic);
    if (!(need > 0) || count <= 0) continue;
    await dep.acts.traffic.sendSyntheticTraffic({ alias: dep.input.alias, count, concurrency: 4, ...traffic });
    record.synthetic += count;
    analyseNow = true;
  }
}
