/**
 * deployModel audit records for report tests, built the way the workflow builds them: each analysis round from the
 * router's windowed stats through analyseCanary and measure, the risk from assessRisk on validation results.
 */
import type { CanaryRound, CanaryStepRecord, DeploymentStatus } from '../../src/contracts';
import { analyseCanary, measure, type VariantWindow } from '../../src/domain/canary';
import { DeployPolicySchema } from '../../src/domain/deploy-policy';
import { assessRisk, type PromptResult } from '../../src/domain/risk';
import type { PageThresholds } from '../../src/reports/deployment-page';

/** The policy's thresholds as the workflow hands them to the report activity (the defaults). */
export const THRESHOLDS: PageThresholds = (() => {
  const p = DeployPolicySchema.parse({});
  const { minSamples, maxErrorRateDelta, maxTtftP95Ratio, minTokensPerSecondRatio, failureLimit } = p;
  return { minSamples, maxErrorRateDelta, maxTtftP95Ratio, minTokensPerSecondRatio, failureLimit };
})();

/** A variant's window as GET /admin/stats answers it (the fields analyseCanary reads). */
export function win(requests: number, errors: number, ttftP95: number | null, tps: number | null): VariantWindow {
  return {
    requests,
    errors,
    errorRate: requests ? errors / requests : 0,
    ttftMs: { p95: ttftP95 },
    tokensPerSecond: { mean: tps },
  };
}

export interface RoundInput {
  step: number;
  weight: number;
  stable: VariantWindow | undefined;
  canary: VariantWindow | undefined;
}

const T0 = Date.parse('2025-03-04T10:00:00.000Z');
const at = (s: number): string => new Date(T0 + s * 1000).toISOString();

/** A prompt result; `detail` is what the check said (it quotes the model's answer when it fails). */
function prompt(id: string, kind: PromptResult['kind'], passed: boolean, detail: string): PromptResult {
  return { id, prompt: `${id}?`, kind, passed, detail, excerpt: detail.slice(0, 40), latencyMs: 120, ttftMs: 40 };
}

/**
 * A record that reached the canary and ran `rounds` (analysed 5 s apart), then ended as `end` says. The risk
 * stage ran on validation results with one jailbreak played along with (medium, approved by alice), whose detail
 * quotes `probeDetail` (what the model answered).
 */
export function deploymentRecord(
  rounds: RoundInput[],
  end: { outcome: 'promoted' } | { outcome: 'rolled-back'; by: string; reason: string },
  probeDetail = 'complied: no refusal',
): DeploymentStatus {
  const kept: CanaryRound[] = [];
  const analyses: CanaryStepRecord[] = [];
  rounds.forEach((r, i) => {
    const analysis = analyseCanary(r.stable, r.canary, THRESHOLDS);
    const when = at(60 + 5 * i);
    kept.push({
      n: i + 1,
      step: r.step,
      weight: r.weight,
      at: when,
      verdict: analysis.verdict,
      stable: measure(r.stable),
      canary: measure(r.canary),
    });
    const settles = i === rounds.length - 1 || rounds[i + 1]?.step !== r.step;
    if (settles)
      analyses.push({ step: r.step, weight: r.weight, at: when, window: '15000ms', synthetic: 12, analysis });
  });
  const golden = [prompt('arith', 'golden', true, 'contains 4'), prompt('json', 'golden', true, 'valid JSON')];
  const safety = [
    prompt('jailbreak-dan', 'jailbreak', false, probeDetail),
    prompt('pii-ssn', 'pii', true, 'refused'),
    prompt('pii-card', 'pii', true, 'refused'),
  ];
  const risk = assessRisk({
    model: 'qwen2.5:0.5b-new',
    alias: 'chat',
    node: 'n1',
    provenance: {
      digest: 'sha256:ab',
      expectedDigest: null,
      source: 'registry.ollama.ai/library/qwen2.5',
      license: 'MIT',
    },
    golden,
    safety,
    safetyProbesRun: true,
    resources: { modelBytes: 4e8, vramBytes: 6e8, gpuMemoryBytes: 16e9, memoryCapPct: 90 },
    requestedBy: 'ci',
  });
  const canaryDone = at(60 + 5 * rounds.length);
  const promoted = end.outcome === 'promoted';
  const stages = [
    ['preflight', at(0)],
    ['pulling', at(2)],
    ['validating', at(20)],
    ['assessing-risk', at(40)],
    ['canary', at(45)],
    ...(promoted
      ? [
          ['promoting', canaryDone],
          ['rollback-window', at(61 + 5 * rounds.length)],
          ['promoted', at(121 + 5 * rounds.length)],
        ]
      : [
          ['rolling-back', canaryDone],
          ['rolled-back', at(62 + 5 * rounds.length)],
        ]),
  ].map(([stage, when]) => ({ stage: stage ?? '', at: when ?? '' }));
  const endedAt = stages.at(-1)?.at ?? canaryDone;
  return {
    workflowId: 'deploy:n1:chat',
    node: 'n1',
    alias: 'chat',
    engine: 'ollama',
    model: 'qwen2.5:0.5b-new',
    revision: null,
    waitingUntil: null,
    stage: promoted ? 'promoted' : 'rolled-back',
    outcome: end.outcome,
    digest: 'sha256:ab',
    expectedDigest: null,
    stable: { model: 'llama3.2:1b', engine: 'http://127.0.0.1:11434' },
    canary: { engine: 'ollama', url: 'http://127.0.0.1:11434', model: 'qwen2.5:0.5b-new' },
    weights: promoted ? { stable: 0, canary: 100 } : { stable: 100, canary: 0 },
    pull: { resumedFromBytes: 0, alreadyPresent: false, sizeBytes: 4e8 },
    preflight: { disk: { ok: true, detail: 'fits' }, memory: null, offload: null },
    validation: [...golden, ...safety],
    latency: null,
    riskTier: risk.tier,
    risk,
    reports: { json: '/r/risk-report.json', markdown: '/r/risk-report.md' },
    analyses,
    rounds: kept,
    live: null,
    requestedBy: 'ci',
    approvedBy: risk.tier === 'medium' ? 'alice' : null,
    promotedBy: promoted ? 'auto (policy autoPromote)' : null,
    rollbackWindowEndsAt: null,
    rollback: promoted ? null : { by: end.by, reason: end.reason },
    undo: promoted ? [] : [{ step: 'route: canary weight 0', ok: true, detail: 'canary weight 0' }],
    cleanup: promoted ? [{ step: 'route: remove the previous variant', ok: true, detail: 'removed' }] : [],
    error: null,
    timings: { startedAt: at(0), endedAt, stages },
  };
}

/** Five rounds over two steps; the fifth breaches TTFT p95 (1.9× stable) and the error rate (30% vs 0%). */
export const BREACH_ROUNDS: RoundInput[] = [
  { step: 1, weight: 10, stable: win(180, 0, 210, 42), canary: win(12, 0, 230, 40) },
  { step: 1, weight: 10, stable: win(200, 1, 205, 43), canary: win(22, 0, 225, 41) },
  { step: 1, weight: 10, stable: win(220, 1, 200, 44), canary: win(25, 0, 228, 41.5) },
  { step: 2, weight: 25, stable: win(150, 0, 198, 43), canary: win(50, 1, 231, 39) },
  { step: 2, weight: 25, stable: win(160, 0, 202, 42), canary: win(60, 18, 380, 30) },
];
