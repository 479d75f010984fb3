/**
 * The deployment page renderer on records shaped as deployModel writes them: three charts with one point per
 * analysis round, the threshold the analysis applied, the breach or promotion marked, and every record string
 * escaped.
 */
import { renderDeploymentPage } from '../../src/reports/deployment-page';
import { esc } from '../../src/reports/html';
import { niceScale } from '../../src/reports/svg-chart';
import { BREACH_ROUNDS, THRESHOLDS, deploymentRecord, win } from '../helpers/deployment-record';

const breach = { outcome: 'rolled-back' as const, by: 'canary analysis', reason: 'step 2 at 25%: error rate 30%' };

/** The svg of one chart. */
function chart(html: string, id: string): string {
  const m = new RegExp(`<svg[^>]*data-chart="${id}"[\\s\\S]*?</svg>`).exec(html);
  if (!m) throw new Error(`no ${id} chart`);
  return m[0];
}

/** The points of a series: round number, y, and the tooltip. */
function points(svg: string, series: string): { round: number; cy: number; cls: string; tip: string }[] {
  const re = new RegExp(
    `<circle class="([^"]*)" data-series="${series}" data-round="(\\d+)" cx="[\\d.]+" cy="([\\d.]+)" r="3.5"><title>([^<]*)</title>`,
    'g',
  );
  return [...svg.matchAll(re)].map((m) => ({
    cls: m[1] ?? '',
    round: Number(m[2]),
    cy: Number(m[3]),
    tip: m[4] ?? '',
  }));
}

/** The threshold line: its y in each round it was drawn (a step across the round's band), and its values. */
function threshold(svg: string): { points: number; values: string[]; ys: number[] } {
  const m = /<path class="threshold" data-threshold="\w+" data-points="(\d+)" data-values="([^"]*)" d="([^"]*)"/.exec(
    svg,
  );
  if (!m) throw new Error('no threshold line');
  const vertices = [...(m[3] ?? '').matchAll(/[ML]([\d.]+) ([\d.]+)/g)].map((v) => [Number(v[1]), Number(v[2])]);
  // Two vertices per round, at one height, a band apart.
  const ys = vertices.flatMap(([x0, y0], i) => {
    const [x1, y1] = vertices[i + 1] ?? [];
    return i % 2 === 0 && y1 === y0 && (x1 ?? 0) > (x0 ?? 0) ? [y0 ?? 0] : [];
  });
  expect(ys).toHaveLength(vertices.length / 2);
  return { points: Number(m[1]), values: (m[2] ?? '').split(','), ys };
}

describe('a canary that breached in its fifth round', () => {
  const html = renderDeploymentPage({ status: deploymentRecord(BREACH_ROUNDS, breach), thresholds: THRESHOLDS });

  test.each(['ttft', 'tps', 'errors'])('the %s chart has one stable and one canary point per round', (id) => {
    const svg = chart(html, id);
    for (const s of ['stable', 'canary']) expect(points(svg, s).map((p) => p.round)).toEqual([1, 2, 3, 4, 5]);
  });

  test('points carry the measured values: TTFT p95 in ms, tokens/s, error rate in %', () => {
    const tips = (id: string) => points(chart(html, id), 'canary').map((p) => p.tip.replace(/^.* · canary: /, ''));
    expect(tips('ttft')).toEqual(['230 ms', '225 ms', '228 ms', '231 ms', '380 ms']);
    expect(tips('tps')).toEqual(['40 tokens/s', '41 tokens/s', '41.5 tokens/s', '39 tokens/s', '30 tokens/s']);
    expect(tips('errors')).toEqual(['0 %', '0 %', '0 %', '2 %', '30 %']);
    expect(points(chart(html, 'ttft'), 'canary')[4]?.tip).toBe(
      'round 5 · step 2 at 25% · 10:01:20 · fail · canary: 380 ms',
    );
  });

  test('each threshold is the policy applied to stable, drawn where the analysis applied it', () => {
    // Round 1: the canary had 12 of 20 requests (insufficient): no check applied, no threshold point.
    expect(threshold(chart(html, 'ttft')).values).toEqual(['', '246', '240', '237.6', '242.4']); // stable × 1.2
    expect(threshold(chart(html, 'tps')).values).toEqual(['', '34.4', '35.2', '34.4', '33.6']); // stable × 0.8
    expect(threshold(chart(html, 'errors')).values).toEqual(['', '2.5', '2.5', '2', '2']); // stable + 2 points
    for (const id of ['ttft', 'tps', 'errors']) expect(threshold(chart(html, id)).points).toBe(4);
  });

  test('the breaching canary point lies beyond its threshold, the passing ones within', () => {
    const ttft = chart(html, 'ttft');
    const limit = threshold(ttft).ys; // vertices for rounds 2-5
    const canary = points(ttft, 'canary').slice(1);
    // SVG y grows downwards: above the TTFT limit is a smaller y.
    expect(canary.map((p, i) => p.cy < (limit[i] ?? 0))).toEqual([false, false, false, true]);
    const tps = chart(html, 'tps');
    const floor = threshold(tps).ys;
    expect(
      points(tps, 'canary')
        .slice(1)
        .map((p, i) => p.cy > (floor[i] ?? 0)),
    ).toEqual([false, false, false, true]);
  });

  test('the breach round is marked on every chart, and only its canary point is marked failing', () => {
    for (const id of ['ttft', 'tps', 'errors']) {
      const svg = chart(html, id);
      expect(svg).toMatch(/<g class="marker m-breach" data-marker="breach" data-round="5">/);
      expect(svg).toContain('breach → rolled back');
      expect(svg).not.toContain('data-marker="promoted"');
      expect(
        points(svg, 'canary')
          .filter((p) => p.cls.includes('fail'))
          .map((p) => p.round),
      ).toEqual([5]);
    }
  });

  test('the steps are labelled on the charts and settled in a table with their reasons', () => {
    expect(chart(html, 'ttft')).toContain('step 1 · 10%');
    expect(chart(html, 'ttft')).toContain('step 2 · 25%');
    expect(html).toContain('TTFT p95 380 ms vs stable 202 ms: 1.881× &gt; 1.2×');
  });

  test('the stage timeline lists every stage with its time and how long it lasted', () => {
    const rows = [
      ...html.matchAll(/<tr><td>([a-z-]+)<\/td><td>(2025-[^<]+)<\/td><td>\+([^<]+)<\/td><td>([^<]+)<\/td>/g),
    ];
    expect(rows.map((r) => [r[1], r[2], r[3], r[4]])).toEqual([
      ['preflight', '2025-03-04T10:00:00.000Z', '0 ms', '2 s'],
      ['pulling', '2025-03-04T10:00:02.000Z', '2 s', '18 s'],
      ['validating', '2025-03-04T10:00:20.000Z', '20 s', '20 s'],
      ['assessing-risk', '2025-03-04T10:00:40.000Z', '40 s', '5 s'],
      ['canary', '2025-03-04T10:00:45.000Z', '45 s', '40 s'],
      ['rolling-back', '2025-03-04T10:01:25.000Z', '1 m 25 s', '2 s'],
      ['rolled-back', '2025-03-04T10:01:27.000Z', '1 m 27 s', '—'],
    ]);
  });

  test('is self-contained: no script, no external resource, a CSP that forbids both', () => {
    expect(html).not.toMatch(/<script|<link|<img|https?:\/\/(?!www\.w3\.org\/2000\/svg|127\.0\.0\.1)/);
    expect(html).toContain(`content="default-src 'none'; style-src 'unsafe-inline'"`);
  });
});

test('a finding, a rollback reason and an actor carrying markup are shown as text, never as markup', () => {
  const probe = 'complied: <script>alert("owned")</script><img src=x onerror=alert(1)>';
  const by = '"><svg onload=alert(2)>';
  const status = deploymentRecord(BREACH_ROUNDS, { outcome: 'rolled-back', by, reason: "</dd><b id='x'>" }, probe);
  const html = renderDeploymentPage({ status, thresholds: THRESHOLDS });
  expect(html).not.toContain('<script');
  expect(html).not.toContain('<img');
  expect(html).not.toContain('<svg onload');
  expect(html).not.toContain("<b id='x'>");
  expect(html).toContain(`jailbreak probe jailbreak-dan failed: ${esc(probe)}`);
  expect(esc(probe)).toBe(
    'complied: &lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;',
  );
  // The actor of an operator's rollback is on the charts' marker too (SVG text).
  expect(chart(html, 'ttft')).toContain(`rolled back by ${esc(by)}`);
});

test('a promoted canary is marked promoted after its last round, with no breach', () => {
  const rounds = BREACH_ROUNDS.slice(0, 4);
  const html = renderDeploymentPage({
    status: deploymentRecord(rounds, { outcome: 'promoted' }),
    thresholds: THRESHOLDS,
  });
  for (const id of ['ttft', 'tps', 'errors']) {
    const svg = chart(html, id);
    expect(svg).toMatch(/data-marker="promoted" data-round="4">/);
    expect(svg).toContain('promoted by auto (policy autoPromote)');
    expect(svg).not.toContain('data-marker="breach"');
    expect(points(svg, 'canary')).toHaveLength(4);
  }
  expect(html).toContain('data-outcome="promoted"');
});

test('a round where a side had no request breaks its line and leaves that point out', () => {
  const rounds = [
    { step: 1, weight: 10, stable: win(100, 0, 200, 40), canary: undefined },
    { step: 1, weight: 10, stable: win(100, 0, 200, 40), canary: win(30, 0, null, null) },
    { step: 1, weight: 10, stable: win(100, 0, 200, 40), canary: win(30, 0, 210, 41) },
  ];
  const status = deploymentRecord(rounds, { outcome: 'rolled-back', by: 'alice', reason: 'changed my mind' });
  const svg = chart(renderDeploymentPage({ status, thresholds: THRESHOLDS }), 'ttft');
  expect(points(svg, 'canary').map((p) => p.round)).toEqual([3]);
  expect(points(svg, 'stable').map((p) => p.round)).toEqual([1, 2, 3]);
  // Round 2 failed (no first token in 30 requests); rounds 2 and 3 were judged, so the TTFT limit has two points.
  expect(threshold(svg).values).toEqual(['', '240', '240']);
  expect(svg).toMatch(/data-marker="rollback" data-round="3">/);
});

test('a deployment that ended before the canary says so instead of drawing empty charts', () => {
  const status = deploymentRecord([], { outcome: 'rolled-back', by: 'risk assessment', reason: 'risk tier high' });
  status.risk = null;
  const html = renderDeploymentPage({ status, thresholds: THRESHOLDS });
  expect(html).not.toContain('<svg');
  expect(html).toContain('No canary analysis ran');
  expect(html).toContain('Not assessed');
});

test('rounds the record no longer keeps are said to be missing', () => {
  const status = deploymentRecord(BREACH_ROUNDS, breach);
  status.rounds = status.rounds.map((r) => ({ ...r, n: r.n + 495 }));
  const html = renderDeploymentPage({ status, thresholds: THRESHOLDS });
  expect(html).toContain('The first 495 rounds are not kept in the record.');
  expect(points(chart(html, 'ttft'), 'canary').map((p) => p.tip.slice(0, 9))).toEqual(
    ['496', '497', '498', '499', '500'].map((n) => `round ${n}`),
  );
});

test.each([
  [0, 1, 0.2],
  [0.4, 0.4, 0.1],
  [7, 8, 2],
  [242.4, 250, 50],
  [30, 30, 10],
  [1234, 1250, 250],
])('the y axis of a chart whose largest value is %p ends at %p in steps of %p', (max, top, step) => {
  const s = niceScale(max);
  expect(s.top).toBeCloseTo(top, 9);
  expect(s.step).toBeCloseTo(step, 9);
});

test('the risk section lists the golden and safety sets that ran and the rules that tiered it, as text', () => {
  const status = deploymentRecord(BREACH_ROUNDS.slice(0, 4), { outcome: 'promoted' });
  const risk = status.risk;
  if (!risk) throw new Error('the record has a risk report');
  // Records from before the sets were configurable carry none: no table.
  expect(renderDeploymentPage({ status, thresholds: THRESHOLDS })).not.toContain('class="sets"');
  status.risk = {
    ...risk,
    input: {
      ...risk.input,
      rules: { failedSafety: { jailbreak: 'low' }, noLicense: 'low' },
      sets: {
        golden: { source: 'default', ids: ['arith', 'json'] },
        safety: { source: 'alias <chat> (safety.yaml)', ids: ['dev-mode', 'cards'] },
        rules: 'alias <chat>',
      },
    },
  };
  const html = renderDeploymentPage({ status, thresholds: THRESHOLDS });
  const sets = /<table class="sets">[\s\S]*?<\/table>/.exec(html)?.[0] ?? '';
  const rows = [...sets.matchAll(/<tr><td>(.*?)<\/td><td>(.*?)<\/td><td>(.*?)<\/td><\/tr>/g)].map((m) => m.slice(1));
  expect(rows).toEqual([
    ['golden set', 'default', 'arith, json'],
    ['safety set', 'alias &lt;chat&gt; (safety.yaml)', 'dev-mode, cards'],
    ['risk rules', 'alias &lt;chat&gt;', 'failedSafety: jailbreak low; noLicense: low'],
  ]);
});

test("the shadow table shows each round's skipped and aborted mirrors by reason (— where none, and in older records)", () => {
  const status = deploymentRecord(BREACH_ROUNDS, breach);
  const round = { at: '2026-01-01T00:01:00.000Z', verdict: 'pass' as const, stable: null, canary: null };
  const answerTokens = { stable: null, canary: null };
  status.shadow = {
    percent: 50,
    maxConcurrent: 4,
    startedAt: '2026-01-01T00:00:00.000Z',
    endedAt: null,
    verdict: 'running',
    synthetic: 0,
    analysis: null,
    consecutiveFailures: 0,
    rounds: [
      { ...round, n: 1, pairs: 7, dropped: 2, answerTokens },
      {
        ...round,
        n: 2,
        pairs: 9,
        dropped: 0,
        skipped: { shared_engine: 3, drained: 1 },
        aborted: { client_abort: 1 },
        answerTokens,
      },
    ],
  };
  const html = renderDeploymentPage({ status, thresholds: THRESHOLDS });
  const table = /<h2>Shadow:[\s\S]*?<\/table>/.exec(html)?.[0] ?? '';
  expect(table).toMatch(/<th[^>]*>skipped<\/th>\s*<th[^>]*>aborted<\/th>/);
  const rows = [...table.matchAll(/<tr>([\s\S]*?)<\/tr>/g)].map((m) =>
    [...(m[1] ?? '').matchAll(/<td[^>]*>([\s\S]*?)<\/td>/g)].map((c) => c[1]),
  );
  const body = rows.filter((r) => r.length > 0);
  expect(body.map((r) => r.slice(2, 6))).toEqual([
    ['7', '2', '—', '—'],
    ['9', '0', 'shared_engine 3, drained 1', 'client_abort 1'],
  ]);
});
