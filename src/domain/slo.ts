/**
 * Latency SLOs of a deployment's validation stage, over the golden prompts' streamed answers: time to first token
 * p95 and output tokens/s. The first prompt loads the model, so it is left out when there are others. Pure; safe in
 * workflows.
 */
import type { PromptResult } from './risk';

export interface LatencySlo {
  ttftP95Ms: number;
  minTokensPerSecond: number;
}

export interface SloResult {
  ok: boolean;
  ttftP95Ms: number | null;
  tokensPerSecondMedian: number | null;
  /** Prompts measured (after the warm-up). */
  samples: number;
  detail: string;
}

/** Nearest-rank percentile of a non-empty list. */
function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? 0;
}

export function checkLatencySlos(golden: PromptResult[], slo: LatencySlo): SloResult {
  const answered = golden.filter((g) => g.ttftMs !== undefined && g.ttftMs !== null);
  const warm = answered.length > 1 ? answered.slice(1) : answered;
  const ttfts = warm.map((g) => g.ttftMs as number);
  const rates = warm.map((g) => g.tokensPerSecond).filter((x): x is number => typeof x === 'number');
  if (ttfts.length === 0) {
    return { ok: true, ttftP95Ms: null, tokensPerSecondMedian: null, samples: 0, detail: 'latency not measured' };
  }
  const ttftP95Ms = percentile(ttfts, 95);
  const tokensPerSecondMedian = rates.length ? percentile(rates, 50) : null;
  const problems: string[] = [];
  if (ttftP95Ms > slo.ttftP95Ms) problems.push(`TTFT p95 ${ttftP95Ms} ms > ${slo.ttftP95Ms} ms`);
  if (tokensPerSecondMedian !== null && tokensPerSecondMedian < slo.minTokensPerSecond) {
    problems.push(`output ${tokensPerSecondMedian} tokens/s < ${slo.minTokensPerSecond}`);
  }
  const measured = `TTFT p95 ${ttftP95Ms} ms, ${tokensPerSecondMedian ?? '?'} tokens/s over ${ttfts.length} prompts`;
  return {
    ok: problems.length === 0,
    ttftP95Ms,
    tokensPerSecondMedian,
    samples: ttfts.length,
    detail: problems.length ? `latency SLO missed: ${problems.join('; ')} (${measured})` : measured,
  };
}
