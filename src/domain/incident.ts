/**
 * recoverNode's pure decisions about one incident: the recovery budget, which engines and GPUs a fault implicates,
 * what the record keeps of a health report, and what an escalation tells a human. Workflow-safe.
 */
import type { HealthReport, Problem } from './classify';
import { parseDuration } from './durations';
import type { Rung } from './rungs';

/** The per-node recovery budget as the incident record shows it. */
export interface RecoveryBudget {
  used: number;
  max: number;
  window: string;
  exceeded: boolean;
}

/** Start of the budget window ending at `nowMs` (ISO): every recoverNode run for the node since then counts. */
export function budgetWindowStart(nowMs: number, window: string): string {
  return new Date(nowMs - parseDuration(window)).toISOString();
}

/** The budget after `used` earlier recoveries in the window: spent once `used` reaches `max`. */
export function recoveryBudget(used: number, max: number, window: string): RecoveryBudget {
  return { used, max, window, exceeded: used >= max };
}

/** What the incident record keeps of a health report. */
export function summarizeReport(r: HealthReport): {
  at: string;
  healthy: boolean;
  reachable: boolean;
  recommendedRung: Rung;
  problems: Problem[];
} {
  return {
    at: r.observedAt,
    healthy: r.healthy,
    reachable: r.observation.reachable,
    recommendedRung: r.recommendedRung,
    problems: r.problems,
  };
}

/** The evidence an incident starts from: Xid events and failing probes of the first diagnosis. */
export function incidentEvidence(r: HealthReport): {
  xids: { xid: number; message: string; time: string }[];
  probes: string[];
} {
  return {
    xids: r.observation.xids.map((x) => ({ xid: x.xid, message: x.message, time: x.time })),
    probes: r.problems.map((p) => `${p.kind} ${p.subject}: ${p.detail}`),
  };
}

/** Engines a set of problems implicates (by engine or container name); all engines when none is named. */
export function implicatedEngines<E extends { name: string; container: string }>(
  engines: readonly E[],
  problems: readonly Problem[],
): E[] {
  const named = engines.filter((e) => problems.some((p) => p.subject === e.name || p.subject === e.container));
  return named.length ? named : [...engines];
}

/** GPU indices a report's problems implicate (gpuN subjects or PCI bus ids); all of `gpus` when none is named. */
export function implicatedGpus(gpus: readonly number[], report: HealthReport): number[] {
  const busToIndex = new Map(report.observation.gpus.map((g) => [g.pciBusId.toLowerCase(), g.index]));
  const out = new Set<number>();
  for (const p of report.problems) {
    const m = /^gpu(\d+)$/.exec(p.subject);
    if (m?.[1]) out.add(Number(m[1]));
    for (const [bus, idx] of busToIndex) if (bus.endsWith(p.subject.toLowerCase())) out.add(idx);
  }
  return out.size ? [...out] : [...gpus];
}

/** Engines that must stop before GPU `index` is reset: those on it, and those without a GPU list (all GPUs). */
export function enginesOnGpu<E extends { gpus: readonly number[] }>(engines: readonly E[], index: number): E[] {
  return engines.filter((e) => e.gpus.includes(index) || e.gpus.length === 0);
}

/** What `nvidia-smi --gpu-reset` answered, as the GPU activity reports it. */
export interface GpuResetAnswer {
  ok: boolean;
  reason?: string | null | undefined;
  message: string;
}

/** The action line of a GPU reset, and why the rung cannot reset it in the guest (passthrough), if that is why. */
export function gpuResetOutcome(index: number, r: GpuResetAnswer): { line: string; impossible: string | null } {
  const line = `nvidia-smi --gpu-reset -i ${index}: ${r.ok ? 'ok' : `${r.reason ?? 'failed'}: ${r.message}`}`;
  // On a passthrough VM an in-guest reset is often impossible: the ladder goes on to the next rung.
  const impossible =
    !r.ok && (r.reason === 'not-supported' || r.reason === 'permission')
      ? `GPU ${index} cannot be reset in the guest (${r.reason})`
      : null;
  return { line, impossible };
}

/** What an escalation needs to know about the incident. */
export interface EscalationFacts {
  node: string;
  trigger: { source: string; detail: string };
  budget: RecoveryBudget;
  /** Every attempt so far, the escalation's own included. */
  rungs: readonly { rung: Rung; outcome: string; detail: string }[];
  /** The problems seen last. */
  problems: readonly Problem[];
}

/** Why a human is needed, and the notification that says so (title, text, fields). */
export function escalationNotice(f: EscalationFacts): {
  why: string;
  title: string;
  text: string;
  fields: Record<string, string | number>;
} {
  const tried = f.rungs
    .filter((r) => r.rung !== 'escalate')
    .map((r) => `- ${r.rung}: ${r.outcome}${r.detail ? ` — ${r.detail}` : ''}`)
    .join('\n');
  const why = f.budget.exceeded
    ? `recovery budget spent (${f.budget.used} recoveries in ${f.budget.window}, max ${f.budget.max})`
    : 'no rung restored health';
  const problems = f.problems.map((p) => `${p.kind} (${p.subject}): ${p.detail}`).join('; ') || 'none seen';
  return {
    why,
    title: `gpuops: node ${f.node} needs a human`,
    text:
      `${why}.\nTrigger: ${f.trigger.source} ${f.trigger.detail}\n` +
      `Problems now: ${problems}\n` +
      `Tried:\n${tried || '- nothing (escalate only)'}`,
    fields: { node: f.node, outcome: 'escalated', rungsTried: f.rungs.length, budgetUsed: f.budget.used },
  };
}
