import { analyseCanary, type CanaryThresholds } from '../../src/domain/canary';
import { win as w } from '../helpers/deployment-record';

const t: CanaryThresholds = {
  minSamples: 10,
  maxErrorRateDelta: 0.02,
  maxTtftP95Ratio: 1.2,
  minTokensPerSecondRatio: 0.8,
};

test('passes a canary within every threshold and says which checks held', () => {
  const a = analyseCanary(w(20, 0, 120, 90), w(20, 0, 70, 150), t);
  expect(a.verdict).toBe('pass');
  expect(a.ttftP95Ratio).toBeCloseTo(0.583, 3);
  expect(a.tokensPerSecondRatio).toBeCloseTo(1.667, 3);
  expect(a.reasons).toHaveLength(3);
});

test('fails when canary TTFT p95 exceeds 1.2× stable', () => {
  const a = analyseCanary(w(20, 0, 100, 90), w(20, 0, 130, 90), t);
  expect(a.verdict).toBe('fail');
  expect(a.reasons).toEqual(['TTFT p95 130 ms vs stable 100 ms: 1.3× > 1.2×']);
});

test('a TTFT ratio of exactly the limit holds', () => {
  expect(analyseCanary(w(20, 0, 100, 90), w(20, 0, 120, 90), t).verdict).toBe('pass');
});

test('fails when the canary error rate exceeds stable by more than the allowed delta', () => {
  const a = analyseCanary(w(20, 0, 100, 90), w(20, 4, 100, 90), t);
  expect(a.verdict).toBe('fail');
  expect(a.errorRateDelta).toBeCloseTo(0.2);
  expect(a.reasons[0]).toMatch(/delta 20% > 2%/);
});

test('fails when tokens/s drop below 0.8× stable', () => {
  const a = analyseCanary(w(20, 0, 100, 100), w(20, 0, 100, 70), t);
  expect(a.verdict).toBe('fail');
  expect(a.reasons[0]).toMatch(/0\.7× < 0\.8×/);
});

test('reports every breached check, not just the first', () => {
  const a = analyseCanary(w(20, 0, 100, 100), w(20, 4, 300, 50), t);
  expect(a.verdict).toBe('fail');
  expect(a.reasons).toHaveLength(3);
});

test('is insufficient while the canary has fewer than minSamples requests', () => {
  const a = analyseCanary(w(50, 0, 100, 90), w(9, 5, 900, 1), t);
  expect(a.verdict).toBe('insufficient');
  expect(a.reasons).toEqual(['canary has 9 requests, needs 10']);
  expect(analyseCanary(w(50, 0, 100, 90), undefined, t).verdict).toBe('insufficient');
});

test('fails a canary whose own error rate is over the limit even when stable is too thin to compare', () => {
  expect(analyseCanary(w(3, 0, 100, 90), w(20, 4, 100, 90), t).verdict).toBe('fail');
  expect(analyseCanary(w(3, 0, 100, 90), w(20, 0, 100, 90), t)).toMatchObject({
    verdict: 'insufficient',
    reasons: ['stable has 3 requests, needs 10'],
  });
});

test('is insufficient when a latency or throughput figure is missing on one side', () => {
  const a = analyseCanary(w(20, 0, null, 90), w(20, 0, 100, 90), t);
  expect(a.verdict).toBe('insufficient');
  expect(a.reasons).toEqual(['TTFT p95 missing on one side']);
});

test('fails a canary that answered enough requests without producing a token (e.g. all 4xx)', () => {
  const a = analyseCanary(w(20, 0, 100, 90), w(20, 0, null, null), t);
  expect(a.verdict).toBe('fail');
  expect(a.reasons).toEqual([
    'canary produced no first token in 20 requests',
    'canary generated no tokens in 20 requests',
  ]);
});
