import { checkLatencySlos } from '../../src/domain/slo';
import type { PromptResult } from '../../src/domain/risk';

const r = (id: string, ttftMs: number | null, tokensPerSecond: number | null): PromptResult => ({
  id,
  prompt: id,
  kind: 'golden',
  passed: true,
  detail: '',
  excerpt: '',
  latencyMs: 1,
  ttftMs,
  tokensPerSecond,
});
const slo = { ttftP95Ms: 1000, minTokensPerSecond: 10 };

test('the warm-up prompt (cold load) is left out; within the SLOs passes', () => {
  const x = checkLatencySlos([r('a', 9000, 5), r('b', 200, 80), r('c', 300, 90)], slo);
  expect(x).toMatchObject({ ok: true, ttftP95Ms: 300, tokensPerSecondMedian: 80, samples: 2 });
});

test('a slow first token or a slow generation misses the SLO, naming both numbers', () => {
  const x = checkLatencySlos([r('a', 100, 50), r('b', 1500, 8), r('c', 1200, 9)], slo);
  expect(x.ok).toBe(false);
  expect(x.detail).toBe(
    'latency SLO missed: TTFT p95 1500 ms > 1000 ms; output 8 tokens/s < 10 (TTFT p95 1500 ms, 8 tokens/s over 2 prompts)',
  );
});

test('records without latency (older runs, no answers) are not judged', () => {
  expect(checkLatencySlos([r('a', null, null)], slo)).toMatchObject({ ok: true, samples: 0 });
});
