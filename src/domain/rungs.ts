/** The recovery ladder, least to most disruptive. Pure; safe in workflows. */
export const RUNGS = ['none', 'restart-container', 'reset-gpu', 'restart-vm', 'escalate'] as const;
export type Rung = (typeof RUNGS)[number];

export function rungIndex(rung: Rung): number {
  return RUNGS.indexOf(rung);
}

/** The more disruptive of two rungs. */
export function maxRung(a: Rung, b: Rung): Rung {
  return rungIndex(a) >= rungIndex(b) ? a : b;
}
