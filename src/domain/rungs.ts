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

/**
 * The command an engine lifecycle action runs, as the recovery record shows it: `docker restart ollama`,
 * `systemctl restart ollama.service`, or `restart process llama` for a keeper-run process. Engines recorded before
 * runtimes existed are docker's.
 */
export function runtimeAction(
  verb: 'restart' | 'start' | 'stop',
  engine: { container: string; runtime?: 'docker' | 'systemd' | 'process' },
): string {
  switch (engine.runtime ?? 'docker') {
    case 'docker':
      return `docker ${verb} ${engine.container}`;
    case 'systemd':
      return `systemctl ${verb} ${engine.container}`;
    case 'process':
      return `${verb} process ${engine.container}`;
  }
}
