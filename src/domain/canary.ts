/**
 * Canary analysis: compare the canary with the stable variant over the same window of router stats and say pass,
 * fail or insufficient, with one reason per check. Pure; safe in workflows.
 */

/** The part of a variant's router stats (GET /admin/stats) the analysis reads. */
export interface VariantWindow {
  requests: number;
  errors: number;
  errorRate: number;
  ttftMs: { p95: number | null };
  tokensPerSecond: { mean: number | null };
}

/** Limits a canary must stay within (the deployment policy's thresholds). */
export interface CanaryThresholds {
  /** Requests each variant needs in the window before it is judged. */
  minSamples: number;
  /** Canary error rate minus stable error rate, at most. */
  maxErrorRateDelta: number;
  /** Canary TTFT p95 / stable TTFT p95, at most. */
  maxTtftP95Ratio: number;
  /** Canary tokens/s / stable tokens/s, at least. */
  minTokensPerSecondRatio: number;
}

export type CanaryVerdict = 'pass' | 'fail' | 'insufficient';

export interface CanaryAnalysis {
  verdict: CanaryVerdict;
  /** One line per failed check (fail), per missing input (insufficient), or the checks that held (pass). */
  reasons: string[];
  /** Null where a side had no value. */
  errorRateDelta: number | null;
  ttftP95Ratio: number | null;
  tokensPerSecondRatio: number | null;
  samples: { stable: number; canary: number };
}

/** What the router measured for one variant over an analysis round's window (null where it had no value). */
export interface VariantMeasure {
  requests: number;
  errorRate: number;
  ttftP95Ms: number | null;
  tokensPerSecond: number | null;
}

/** The part of a variant's window the record keeps per analysis round (null: no request in the window). */
export function measure(w: VariantWindow | undefined): VariantMeasure | null {
  if (!w) return null;
  return {
    requests: w.requests,
    errorRate: w.errorRate,
    ttftP95Ms: w.ttftMs.p95,
    tokensPerSecond: w.tokensPerSecond.mean,
  };
}

const round = (x: number): number => Math.round(x * 1000) / 1000;

/**
 * Judge a canary against stable in the same window. Errors are judged first and alone: a canary that already
 * fails more often than allowed, with at least minSamples requests, fails even if stable had too few requests to
 * compare latencies. Otherwise both sides need minSamples requests, or the verdict is insufficient.
 */
export function analyseCanary(
  stable: VariantWindow | undefined,
  canary: VariantWindow | undefined,
  t: CanaryThresholds,
): CanaryAnalysis {
  const s = stable?.requests ?? 0;
  const c = canary?.requests ?? 0;
  const samples = { stable: s, canary: c };
  const empty = { errorRateDelta: null, ttftP95Ratio: null, tokensPerSecondRatio: null, samples };
  if (c < t.minSamples || !canary) {
    return { ...empty, verdict: 'insufficient', reasons: [`canary has ${c} requests, needs ${t.minSamples}`] };
  }
  const errorRateDelta = round(canary.errorRate - (stable?.errorRate ?? 0));
  if (s < t.minSamples || !stable) {
    if (canary.errorRate > t.maxErrorRateDelta) {
      return {
        ...empty,
        errorRateDelta,
        verdict: 'fail',
        reasons: [`canary error rate ${pct(canary.errorRate)} exceeds ${pct(t.maxErrorRateDelta)} on its own`],
      };
    }
    return { ...empty, verdict: 'insufficient', reasons: [`stable has ${s} requests, needs ${t.minSamples}`] };
  }

  const failures: string[] = [];
  const held: string[] = [];
  const missing: string[] = [];
  if (errorRateDelta > t.maxErrorRateDelta) {
    failures.push(
      `error rate ${pct(canary.errorRate)} vs stable ${pct(stable.errorRate)}: delta ${pct(errorRateDelta)} > ${pct(t.maxErrorRateDelta)}`,
    );
  } else held.push(`error rate delta ${pct(errorRateDelta)} ≤ ${pct(t.maxErrorRateDelta)}`);

  const cT = canary.ttftMs.p95;
  const sT = stable.ttftMs.p95;
  const ttftP95Ratio = cT !== null && sT !== null && sT > 0 ? round(cT / sT) : null;
  // A canary that answered minSamples requests without one first token (e.g. all 4xx) is broken, not unmeasured.
  if (cT === null && sT !== null) failures.push(`canary produced no first token in ${samples.canary} requests`);
  else if (ttftP95Ratio === null) missing.push('TTFT p95 missing on one side');
  else if (ttftP95Ratio > t.maxTtftP95Ratio) {
    failures.push(`TTFT p95 ${cT} ms vs stable ${sT} ms: ${ttftP95Ratio}× > ${t.maxTtftP95Ratio}×`);
  } else held.push(`TTFT p95 ratio ${ttftP95Ratio}× ≤ ${t.maxTtftP95Ratio}×`);

  const cR = canary.tokensPerSecond.mean;
  const sR = stable.tokensPerSecond.mean;
  const tokensPerSecondRatio = cR !== null && sR !== null && sR > 0 ? round(cR / sR) : null;
  if (cR === null && sR !== null) failures.push(`canary generated no tokens in ${samples.canary} requests`);
  else if (tokensPerSecondRatio === null) missing.push('tokens/s missing on one side');
  else if (tokensPerSecondRatio < t.minTokensPerSecondRatio) {
    failures.push(
      `tokens/s ${round(cR ?? 0)} vs stable ${round(sR ?? 0)}: ${tokensPerSecondRatio}× < ${t.minTokensPerSecondRatio}×`,
    );
  } else held.push(`tokens/s ratio ${tokensPerSecondRatio}× ≥ ${t.minTokensPerSecondRatio}×`);

  const metrics = { errorRateDelta, ttftP95Ratio, tokensPerSecondRatio, samples };
  if (failures.length) return { ...metrics, verdict: 'fail', reasons: failures };
  if (missing.length) return { ...metrics, verdict: 'insufficient', reasons: missing };
  return { ...metrics, verdict: 'pass', reasons: held };
}

function pct(x: number): string {
  return `${round(x * 100)}%`;
}
