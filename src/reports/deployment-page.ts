/**
 * The deployment page: one self-contained HTML file per deployModel run (inline CSS and SVG, no script, no external
 * resource, so it opens offline and from an audit archive). Canary against stable per analysis round — TTFT p95,
 * tokens/s and error rate, each with the threshold the analysis applied and the breach or promotion marked — the
 * stages with their times, and the risk findings. Pure: the record in, the page out.
 */
import type { CanaryRound, DeploymentStatus, ShadowRound } from '../contracts/deploy';
import type { CanaryThresholds, VariantMeasure } from '../domain/canary';
import { duration, esc, num, table } from './html';
import { describeRules } from '../domain/risk-rules';
import { lineChart, type ChartMarker, type ChartSeries } from './svg-chart';

/** The policy limits the page draws: the analysis thresholds and how many failures in a row roll back. */
export interface PageThresholds extends CanaryThresholds {
  failureLimit: number;
}

export interface DeploymentPageInput {
  status: DeploymentStatus;
  thresholds: PageThresholds;
}

/** One chart's metric: how to read it from a side, and the limit the analysis held the canary to in a round. */
interface Metric {
  id: string;
  title: string;
  unit: string;
  read: (m: VariantMeasure) => number | null;
  /** The canary's limit this round; null where the analysis did not apply this check. */
  limit: (r: CanaryRound, t: PageThresholds) => number | null;
  limitLabel: (t: PageThresholds) => string;
  format: (v: number) => string;
}

/** Both sides have minSamples: the latency checks apply (analyseCanary). */
const compared = (r: CanaryRound, t: PageThresholds): boolean =>
  (r.stable?.requests ?? 0) >= t.minSamples && (r.canary?.requests ?? 0) >= t.minSamples;

/** A chart whose limit is stable × a policy ratio (a ceiling or a floor), applied where both sides were judged. */
function ratioMetric(
  m: Pick<Metric, 'id' | 'title' | 'unit' | 'read' | 'format'>,
  ratio: 'maxTtftP95Ratio' | 'minTokensPerSecondRatio',
  word: 'limit' | 'floor',
): Metric {
  return {
    ...m,
    limit: (r, t) => {
      const s = r.stable ? m.read(r.stable) : null;
      return compared(r, t) && s !== null && s > 0 ? s * t[ratio] : null;
    },
    limitLabel: (t) => `${word}: stable × ${t[ratio]}`,
  };
}

const METRICS: Metric[] = [
  ratioMetric(
    {
      id: 'ttft',
      title: 'Time to first token, p95',
      unit: 'ms',
      read: (m) => m.ttftP95Ms,
      format: (v) => num(v, v < 100 ? 1 : 0),
    },
    'maxTtftP95Ratio',
    'limit',
  ),
  ratioMetric(
    {
      id: 'tps',
      title: 'Output tokens per second, mean',
      unit: 'tokens/s',
      read: (m) => m.tokensPerSecond,
      format: (v) => num(v, 1),
    },
    'minTokensPerSecondRatio',
    'floor',
  ),
  {
    id: 'errors',
    title: 'Error rate',
    unit: '%',
    read: (m) => m.errorRate * 100,
    // Against stable when stable had minSamples; on its own (the delta as an absolute rate) when it had not.
    limit: (r, t) => {
      if ((r.canary?.requests ?? 0) < t.minSamples) return null;
      const base = (r.stable?.requests ?? 0) >= t.minSamples ? (r.stable?.errorRate ?? 0) : 0;
      return (base + t.maxErrorRateDelta) * 100;
    },
    limitLabel: (t) => `limit: stable + ${num(t.maxErrorRateDelta * 100, 2)} pts`,
    format: (v) => num(v, 2),
  },
];

const time = (iso: string): string => iso.slice(11, 19);

/** Where the canary ended on the charts: the round that rolled it back, or the promotion after the last round. */
export function chartMarkers(status: DeploymentStatus, rounds: CanaryRound[]): ChartMarker[] {
  const last = rounds.length - 1;
  const lastRound = rounds[last];
  if (!lastRound) return [];
  const markers: ChartMarker[] = [];
  if (status.promotedBy) markers.push({ index: last, kind: 'promoted', label: `promoted by ${status.promotedBy}` });
  if (status.rollback?.by === 'canary analysis') {
    const breach = lastRound.verdict === 'fail';
    markers.push({
      index: last,
      kind: 'breach',
      label: breach ? 'breach → rolled back' : 'too little data → rolled back',
    });
  } else if (status.rollback) {
    markers.push({ index: last, kind: 'rollback', label: `rolled back by ${status.rollback.by}` });
  }
  return markers;
}

function charts(status: DeploymentStatus, t: PageThresholds): string {
  const rounds = status.rounds ?? [];
  if (rounds.length === 0)
    return '<p class="none">No canary analysis ran: the deployment ended before any traffic moved.</p>';
  const labels = rounds.map((r) => `round ${r.n} · step ${r.step} at ${r.weight}% · ${time(r.at)} · ${r.verdict}`);
  const ticks = rounds.map((r) => String(r.n));
  const groups = rounds.flatMap((r, i) =>
    i === 0 || rounds[i - 1]?.step !== r.step ? [{ start: i, label: `step ${r.step} · ${r.weight}%` }] : [],
  );
  const failing = new Set(rounds.flatMap((r, i) => (r.verdict === 'fail' ? [i] : [])));
  const markers = chartMarkers(status, rounds);
  const dropped = (rounds[0]?.n ?? 1) - 1;
  const note = dropped > 0 ? `<p class="note">The first ${dropped} rounds are not kept in the record.</p>` : '';
  return (
    note +
    METRICS.map((m) => {
      const series: ChartSeries[] = [
        { name: 'stable', key: 'stable', values: rounds.map((r) => (r.stable ? m.read(r.stable) : null)) },
        { name: 'canary', key: 'canary', values: rounds.map((r) => (r.canary ? m.read(r.canary) : null)), failing },
      ];
      const threshold = { label: m.limitLabel(t), values: rounds.map((r) => m.limit(r, t)) };
      return lineChart({ ...m, labels, ticks, groups, series, threshold, markers });
    }).join('\n')
  );
}

function thresholdsText(t: PageThresholds): string {
  const items = [
    `TTFT p95 at most stable × ${t.maxTtftP95Ratio}`,
    `tokens/s at least stable × ${t.minTokensPerSecondRatio}`,
    `error rate at most stable + ${num(t.maxErrorRateDelta * 100, 2)} percentage points ` +
      `(${num(t.maxErrorRateDelta * 100, 2)}% on its own while stable has fewer than ${t.minSamples} requests)`,
    `judged once each side has ${t.minSamples} requests in the window`,
    `${t.failureLimit} failing analysis${t.failureLimit === 1 ? '' : 'es'} in a row roll${t.failureLimit === 1 ? 's' : ''} back`,
  ];
  return `<ul class="thresholds">${items.map((i) => `<li>${esc(i)}</li>`).join('')}</ul>`;
}

function steps(status: DeploymentStatus): string {
  if (status.analyses.length === 0) return '';
  const rows = status.analyses.map((a) => [
    esc(a.step),
    `${esc(a.weight)}%`,
    esc(a.at),
    esc(a.window),
    esc(a.synthetic),
    `${esc(a.analysis.samples.stable)} / ${esc(a.analysis.samples.canary)}`,
    `<span class="verdict v-${esc(a.analysis.verdict)}">${esc(a.analysis.verdict)}</span>`,
    a.analysis.reasons.map(esc).join('<br>'),
  ]);
  return `<h3>How each step settled</h3>${table(
    ['step', 'weight', 'at', 'window', 'synthetic', 'requests stable / canary', 'verdict', 'reasons'],
    rows,
  )}`;
}

/** The shadow stage's rounds: stable's answers and the canary's to the same mirrored requests (no client saw the latter). */
function shadow(status: DeploymentStatus): string {
  const sh = status.shadow;
  if (!sh) return '';
  const side = (m: VariantMeasure | null, read: (m: VariantMeasure) => number | null, f: (v: number) => string) => {
    const v = m ? read(m) : null;
    return v === null ? '—' : esc(f(v));
  };
  const pair = (r: ShadowRound, read: (m: VariantMeasure) => number | null, f: (v: number) => string): string =>
    `${side(r.stable, read, f)} / ${side(r.canary, read, f)}`;
  const ms = (v: number): string => `${num(v, 0)} ms`;
  /** `shared_engine 3, drained 1`, or — when none. */
  const reasons = (by: Partial<Record<string, number>> | undefined): string => {
    const parts = Object.entries(by ?? {}).map(([k, n]) => `${k} ${n ?? 0}`);
    return parts.length > 0 ? esc(parts.join(', ')) : '—';
  };
  const rows = sh.rounds.map((r) => [
    esc(r.n),
    esc(time(r.at)),
    esc(r.pairs),
    esc(r.dropped),
    reasons(r.skipped),
    reasons(r.aborted),
    pair(r, (m) => m.ttftP95Ms, ms),
    pair(
      r,
      (m) => m.tokensPerSecond,
      (v) => num(v),
    ),
    pair(
      r,
      (m) => m.errorRate,
      (v) => `${num(v * 100, 2)}%`,
    ),
    `${r.answerTokens.stable === null ? '—' : esc(num(r.answerTokens.stable))} / ${r.answerTokens.canary === null ? '—' : esc(num(r.answerTokens.canary))}`,
    `<span class="verdict v-${esc(r.verdict)}">${esc(r.verdict)}</span>`,
  ]);
  const verdictReasons = sh.analysis ? `<p>${sh.analysis.reasons.map(esc).join('<br>')}</p>` : '';
  return `<h2>Shadow: canary against stable on mirrored requests</h2>
<p data-shadow-verdict="${esc(sh.verdict)}">${esc(sh.percent)}% of the requests mirrored (at most ${esc(sh.maxConcurrent)} at a time; the canary's answers were dropped, clients got stable's), ${esc(sh.synthetic)} synthetic: <span class="verdict v-${esc(sh.verdict)}">${esc(sh.verdict)}</span></p>
${verdictReasons}${table(
    [
      'round',
      'at',
      'pairs',
      'dropped',
      'skipped',
      'aborted',
      'TTFT p95 stable / canary',
      'tokens/s stable / canary',
      'errors stable / canary',
      'answer tokens stable / canary',
      'verdict',
    ],
    rows,
  )}`;
}

function timeline(status: DeploymentStatus): string {
  const { startedAt, endedAt, stages } = status.timings;
  const t0 = Date.parse(startedAt);
  const end = endedAt ? Date.parse(endedAt) : Date.parse(stages.at(-1)?.at ?? startedAt);
  const total = Math.max(1, end - t0);
  const rows = stages.map((s, i) => {
    const at = Date.parse(s.at);
    const next = stages[i + 1];
    const until = next ? Date.parse(next.at) : end;
    const left = ((at - t0) / total) * 100;
    const width = Math.max(0.3, ((until - at) / total) * 100);
    const bar = `<div class="bar"><span class="st-${esc(s.stage)}" style="margin-left:${num(left, 2)}%;width:${num(width, 2)}%"></span></div>`;
    return [esc(s.stage), esc(s.at), `+${esc(duration(at - t0))}`, esc(until > at ? duration(until - at) : '—'), bar];
  });
  return table(['stage', 'at', 'since start', 'lasted', ''], rows, 'timeline');
}

function risk(status: DeploymentStatus): string {
  const r = status.risk;
  if (!r) return '<p class="none">Not assessed: the deployment ended before the risk stage.</p>';
  const rows = r.findings.map((f) => [
    `<span class="tier t-${esc(f.tier)}">${esc(f.tier)}</span>`,
    esc(f.area),
    esc(f.detail),
  ]);
  const sets = r.input.sets;
  const setRows = sets
    ? [
        ['golden set', sets.golden.source, sets.golden.ids.join(', ') || 'none'],
        ['safety set', sets.safety.source, sets.safety.ids.join(', ') || 'not run'],
        ['risk rules', sets.rules, describeRules(r.input.rules).join('; ') || 'built-in tiers'],
      ].map((row) => row.map(esc))
    : [];
  return (
    `<p>Tier <span class="tier t-${esc(r.tier)}">${esc(r.tier)}</span> — ${esc(r.decision)}</p>` +
    (setRows.length ? table(['what ran', 'source', 'ids / rules'], setRows, 'sets') : '') +
    (rows.length ? table(['tier', 'area', 'finding'], rows, 'findings') : '<p class="none">No findings.</p>')
  );
}

function sagaSteps(title: string, list: { step: string; ok: boolean; detail: string }[]): string {
  if (list.length === 0) return '';
  const rows = list.map((u) => [esc(u.step), u.ok ? 'ok' : '<strong class="bad">failed</strong>', esc(u.detail)]);
  return `<h2>${esc(title)}</h2>${table(['step', 'result', 'detail'], rows)}`;
}

function summary(s: DeploymentStatus): string {
  const ended = s.timings.endedAt;
  const facts: [string, string | null][] = [
    ['workflow', s.workflowId],
    ['node / engine', `${s.node} / ${s.engine}`],
    ['model', s.revision ? `${s.model} @ ${s.revision}` : s.model],
    ['digest', s.digest],
    ['stable before', s.stable ? `${s.stable.model} on ${s.stable.engine}` : null],
    ['canary ran on', s.canary ? `${s.canary.engine} (${s.canary.url})` : null],
    ['weights at the end', `stable ${s.weights.stable}% / canary ${s.weights.canary}%`],
    ['requested by', s.requestedBy],
    ['approved by', s.approvedBy],
    ['promoted by', s.promotedBy],
    ['rolled back', s.rollback ? `by ${s.rollback.by}: ${s.rollback.reason}` : null],
    ['error', s.error],
    ['started', s.timings.startedAt],
    ['ended', ended ? `${ended} (after ${duration(Date.parse(ended) - Date.parse(s.timings.startedAt))})` : null],
  ];
  const rows = facts.filter((f): f is [string, string] => f[1] !== null);
  return `<dl class="facts">${rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join('')}</dl>`;
}

const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:960px;padding:0 16px;color:#1f2937}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb}h3{font-size:15px}
.outcome{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;color:#fff;background:#6b7280}
.o-promoted{background:#15803d}.o-rolled-back,.o-failed{background:#b91c1c}.o-cancelled{background:#a16207}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px}dt{color:#6b7280}dd{margin:0;word-break:break-all}
table{border-collapse:collapse;width:100%;margin:8px 0}th,td{border-bottom:1px solid #e5e7eb;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f9fafb}.none,.note{color:#6b7280}.bad{color:#b91c1c}
.tier,.verdict{font-weight:600}.t-high,.v-fail{color:#b91c1c}.t-medium,.v-insufficient{color:#a16207}.t-low,.v-pass{color:#15803d}
.timeline td:last-child{width:40%}.bar{background:#f3f4f6;height:10px}.bar span{display:block;height:10px;background:#60a5fa}
.bar .st-promoted{background:#15803d}.bar .st-rolled-back,.bar .st-rolling-back,.bar .st-failed{background:#b91c1c}
figure.chart{margin:12px 0}figcaption{font-weight:600}svg{width:100%;height:auto;font-size:11px}
svg .grid{stroke:#e5e7eb}svg .group{stroke:#9ca3af;stroke-dasharray:2 3}svg .grouplabel{fill:#6b7280}
svg .ytick,svg .xtick,svg .axis,svg .legendtext{fill:#4b5563}
svg .line{fill:none;stroke-width:2}svg .s-stable{stroke:#2563eb}svg .s-canary{stroke:#d97706}
svg circle.s-stable{fill:#2563eb}svg circle.s-canary{fill:#d97706}svg circle.fail{stroke:#b91c1c;stroke-width:2.5}
svg .threshold{fill:none;stroke:#b91c1c;stroke-width:1.5;stroke-dasharray:6 4}svg .legend{stroke-width:3}
svg .legend.threshold{stroke-width:2}svg .marker line{stroke-width:2;stroke-dasharray:4 2}
svg .m-breach line,svg .m-rollback line{stroke:#b91c1c}svg .m-breach text,svg .m-rollback text{fill:#b91c1c;font-weight:600}
svg .m-promoted line{stroke:#15803d}svg .m-promoted text{fill:#15803d;font-weight:600}
`;

/** The page for one deployment record. */
export function renderDeploymentPage({ status, thresholds }: DeploymentPageInput): string {
  const s = status;
  const title = `${s.model} → ${s.alias} on ${s.node}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Deployment: ${esc(title)}</title>
<style>${CSS}</style>
</head>
<body>
<h1>Deployment of ${esc(s.model)} → ${esc(s.alias)}</h1>
<p><span class="outcome o-${esc(s.outcome)}" data-outcome="${esc(s.outcome)}">${esc(s.outcome)}</span> on ${esc(s.node)}, stage ${esc(s.stage)}</p>
${summary(s)}
${shadow(s)}
<h2>Canary against stable</h2>
${thresholdsText(thresholds)}
${charts(s, thresholds)}
${steps(s)}
<h2>Stages</h2>
${timeline(s)}
<h2>Risk</h2>
${risk(s)}
${sagaSteps('Rollback steps', s.undo)}
${sagaSteps('Clean-up', s.cleanup)}
<p class="note">Written by gpuops when the deployment ended${s.timings.endedAt ? ` (${esc(s.timings.endedAt)})` : ''}.</p>
</body>
</html>
`;
}
