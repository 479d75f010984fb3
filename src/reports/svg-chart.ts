/**
 * A small line chart as inline SVG (no script, no external resource): one band per x value (an analysis round),
 * a polyline and one point per series value, a dashed threshold line, vertical markers (a breach, a promotion) and
 * labelled groups (canary steps). Values may be null: the line breaks there and that point is left out.
 */
import { esc } from './html';

export interface ChartSeries {
  /** Shown in the legend and the points' tooltips. */
  name: string;
  /** CSS class suffix and `data-series` of its line and points. */
  key: string;
  values: (number | null)[];
  /** Indexes whose point is marked as failing (a red ring). */
  failing?: ReadonlySet<number>;
}

export interface ChartMarker {
  index: number;
  label: string;
  kind: 'breach' | 'promoted' | 'rollback';
}

export interface LineChartSpec {
  /** `data-chart` of the svg. */
  id: string;
  title: string;
  /** Y axis unit, e.g. "ms". */
  unit: string;
  /** Tooltip prefix per x value (round, step, time). */
  labels: string[];
  /** Short x tick text per x value. */
  ticks: string[];
  /** Consecutive x ranges with a label (canary steps), drawn as separators. */
  groups: { start: number; label: string }[];
  series: ChartSeries[];
  threshold: { label: string; values: (number | null)[] };
  markers: ChartMarker[];
  format: (v: number) => string;
}

const W = 880;
const H = 290;
const M = { left: 64, right: 16, top: 40, bottom: 40 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;

const r1 = (x: number): string => String(Math.round(x * 10) / 10);

/** A round top for the y axis and its tick step (1, 2, 2.5 or 5 × 10^k, about five ticks). */
export function niceScale(max: number): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.2 };
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  return { top: step * Math.ceil(max / step - 1e-9), step };
}

/**
 * Path data through the non-null values, broken at each null. With `band`, a step line instead: each value across
 * its band, joined to the next band's when adjacent.
 */
function pathThrough(values: (number | null)[], x: (i: number) => number, y: (v: number) => number, band = 0): string {
  const parts: string[] = [];
  let pen = false;
  values.forEach((v, i) => {
    if (v === null) pen = false;
    else {
      const yv = r1(y(v));
      const at = band ? `${r1(x(i) - band / 2)} ${yv} L${r1(x(i) + band / 2)} ${yv}` : `${r1(x(i))} ${yv}`;
      parts.push(`${pen ? 'L' : 'M'}${at}`);
      pen = true;
    }
  });
  return parts.join(' ');
}

export function lineChart(spec: LineChartSpec): string {
  const n = spec.labels.length;
  const all = [...spec.series.flatMap((s) => s.values), ...spec.threshold.values].filter((v) => v !== null);
  const { top, step } = niceScale(Math.max(0, ...all));
  const band = PW / Math.max(1, n);
  const x = (i: number): number => M.left + (i + 0.5) * band;
  const y = (v: number): number => M.top + PH * (1 - v / top);
  const out: string[] = [];

  for (let t = 0; t <= top + step / 2; t += step) {
    out.push(
      `<line class="grid" x1="${M.left}" x2="${W - M.right}" y1="${r1(y(t))}" y2="${r1(y(t))}"/>`,
      `<text class="ytick" x="${M.left - 6}" y="${r1(y(t) + 4)}" text-anchor="end">${esc(spec.format(t))}</text>`,
    );
  }
  out.push(
    `<text class="axis" x="14" y="${r1(M.top + PH / 2)}" transform="rotate(-90 14 ${r1(M.top + PH / 2)})" text-anchor="middle">${esc(spec.unit)}</text>`,
  );
  const every = Math.max(1, Math.ceil(n / 20));
  spec.ticks.forEach((t, i) => {
    if (i % every === 0 || i === n - 1) {
      out.push(`<text class="xtick" x="${r1(x(i))}" y="${H - M.bottom + 16}" text-anchor="middle">${esc(t)}</text>`);
    }
  });
  out.push(`<text class="axis" x="${M.left + PW / 2}" y="${H - 6}" text-anchor="middle">analysis round</text>`);
  for (const g of spec.groups) {
    const gx = M.left + g.start * band;
    if (g.start > 0) out.push(`<line class="group" x1="${r1(gx)}" x2="${r1(gx)}" y1="${M.top}" y2="${M.top + PH}"/>`);
    out.push(`<text class="grouplabel" x="${r1(gx + 4)}" y="${M.top + 12}">${esc(g.label)}</text>`);
  }

  // The limit holds for a round's whole window: a step line across each band (one round alone is still a line).
  const t = spec.threshold;
  const tCount = t.values.filter((v) => v !== null).length;
  out.push(
    `<path class="threshold" data-threshold="${esc(spec.id)}" data-points="${tCount}" data-values="${t.values.map((v) => (v === null ? '' : r1(v))).join(',')}" d="${pathThrough(t.values, x, y, band)}"><title>${esc(t.label)}</title></path>`,
  );
  for (const s of spec.series) {
    out.push(`<path class="line s-${esc(s.key)}" data-series="${esc(s.key)}" d="${pathThrough(s.values, x, y)}"/>`);
    s.values.forEach((v, i) => {
      if (v === null) return;
      const fail = s.failing?.has(i) ? ' fail' : '';
      const tip = `${spec.labels[i] ?? ''} · ${s.name}: ${spec.format(v)} ${spec.unit}`;
      out.push(
        `<circle class="pt s-${esc(s.key)}${fail}" data-series="${esc(s.key)}" data-round="${i + 1}" cx="${r1(x(i))}" cy="${r1(y(v))}" r="3.5"><title>${esc(tip)}</title></circle>`,
      );
    });
  }
  spec.markers.forEach((m, k) => {
    const mx = x(m.index);
    // The label sits on the side of the line with more room.
    const right = mx < M.left + PW / 2;
    out.push(
      `<g class="marker m-${m.kind}" data-marker="${m.kind}" data-round="${m.index + 1}">` +
        `<line x1="${r1(mx)}" x2="${r1(mx)}" y1="${M.top - 4}" y2="${M.top + PH}"/>` +
        `<text x="${r1(right ? mx + 4 : mx - 4)}" y="${M.top + 26 + 14 * k}" text-anchor="${right ? 'start' : 'end'}">${esc(m.label)}</text></g>`,
    );
  });

  const legend = [...spec.series.map((s) => [`s-${s.key}`, s.name]), ['threshold', t.label]]
    .map(([cls, name], i) => {
      const lx = M.left + i * 230;
      return (
        `<line class="legend ${esc(cls)}" x1="${lx}" x2="${lx + 22}" y1="14" y2="14"/>` +
        `<text class="legendtext" x="${lx + 28}" y="18">${esc(name)}</text>`
      );
    })
    .join('');
  return (
    `<figure class="chart"><figcaption>${esc(spec.title)}</figcaption>` +
    `<svg xmlns="http://www.w3.org/2000/svg" data-chart="${esc(spec.id)}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(spec.title)}">` +
    `${legend}\n${out.join('\n')}\n</svg></figure>`
  );
}
