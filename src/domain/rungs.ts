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

/** A rung that acts on the node (everything above 'none' and below 'escalate'). */
export type ActionRung = Exclude<Rung, 'none' | 'escalate'>;
/** A rung recoverNode climbs: an action rung, or escalation to a human. */
export type LadderRung = Exclude<Rung, 'none'>;

/**
 * The rung an incident starts at: the one asked for, else the one the diagnosis calls for; 'none' (nothing to do)
 * when neither names a rung; 'escalate' only once the per-node budget is spent, so a spent budget never reboots.
 */
export function firstRung(requested: Rung | undefined, recommended: Rung, budgetExceeded: boolean): Rung {
  const start = requested ?? recommended;
  if (start === 'none') return 'none';
  return budgetExceeded ? 'escalate' : start;
}

/** The rungs climbed from `start` up to (and including) escalation, in order. */
export function ladderFrom(start: LadderRung): LadderRung[] {
  return RUNGS.slice(rungIndex(start)).filter((r): r is LadderRung => r !== 'none');
}

/** What each action rung needs of the node, and which of recoverNode's timeouts its verification waits. */
export const RUNG_RULES: Readonly<
  Record<ActionRung, { needs: 'node-worker' | 'vm'; verifyWithin: 'verifyTimeout' | 'bootTimeout'; unmet: string }>
> = {
  'restart-container': {
    needs: 'node-worker',
    verifyWithin: 'verifyTimeout',
    unmet: 'node unreachable: container actions need its node worker',
  },
  'reset-gpu': {
    needs: 'node-worker',
    verifyWithin: 'verifyTimeout',
    unmet: 'node unreachable: a GPU reset needs its node worker',
  },
  // A restarted VM's node worker and engines take a boot to come back.
  'restart-vm': {
    needs: 'vm',
    verifyWithin: 'bootTimeout',
    unmet: 'the node has no vm in gpuops.yaml: gpuops cannot power-cycle it',
  },
};

/** Why `rung` cannot act on the node as it is now (the attempt is skipped), or null when it can. */
export function rungUnmet(rung: ActionRung, node: { reachable: boolean; hasVm: boolean }): string | null {
  const rule = RUNG_RULES[rung];
  const met = rule.needs === 'vm' ? node.hasVm : node.reachable;
  return met ? null : rule.unmet;
}

/** How the guest of a restart-vm rung has fared so far. */
export interface GuestRestart {
  /** The reboot (ACPI) was carried out; false when it was refused, timed out or failed. */
  rebootOk: boolean;
  /** Hard resets issued in this rung (attempted, whatever their answer). */
  hardResets: number;
}

/** Hard resets one restart-vm rung may issue: one, never a loop. */
export const HARD_RESETS_PER_RUNG = 1;

/**
 * The hung-guest rule of the restart-vm rung: a guest that ignored its reboot — the ACPI request refused or timed
 * out (`after` null: before verifying), or a guest that is still unreachable once its boot timeout is over (`after`:
 * the health then) — gets one hard reset, never a loop.
 */
export function hardResetDue(guest: GuestRestart, after: { healthy: boolean; reachable: boolean } | null): boolean {
  if (guest.hardResets >= HARD_RESETS_PER_RUNG) return false;
  return after === null ? !guest.rebootOk : !after.healthy && !after.reachable;
}
