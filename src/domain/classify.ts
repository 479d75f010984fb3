/**
 * Fault classification: observations in, problems (each with the first recovery rung it calls for) out.
 * Pure and deterministic, so workflows call it directly and unit tests pin its behaviour.
 */
import { RECOVERY_ACTION_RUNGS, RECOVERY_ACTION_WORDS } from './driver-verdict';
import type { ContainerState, GpuStatus, NodeObservation, XidEvent } from './health';
import { maxRung, type Rung } from './rungs';
import { KERNEL_ONLY_XIDS, pciBusKey, rungForXid, xidName } from './xid';

export type FaultKind =
  | 'node-unreachable'
  | 'container-missing'
  | 'container-exited'
  | 'container-unhealthy'
  | 'container-oom-killed'
  | 'container-restarting'
  | 'engine-down'
  | 'engine-hung'
  | 'cuda-oom'
  | 'gpu-lost'
  | 'gpu-xid'
  | 'gpu-recovery-action'
  | 'gpu-ecc'
  | 'gpu-remap-pending'
  | 'gpu-missing'
  | 'disk-low'
  | 'probe-failed';

export interface Problem {
  kind: FaultKind;
  /** What it concerns: a container name, engine name, `gpu0`, a path, or the node id. */
  subject: string;
  /** One line an operator can act on. */
  detail: string;
  /** First rung that should clear it. */
  rung: Rung;
  severity: 'warning' | 'critical';
}

/** A stopped half of a canary slot pair whose partner runs: intended downtime, not a fault. */
export interface StandbyEngine {
  /** Engine name, when the observation names the container's engine. */
  engine: string | null;
  container: string;
  /** The running partner's container. */
  partner: string;
}

export interface HealthReport {
  node: string;
  observedAt: string;
  healthy: boolean;
  /**
   * Some probe of the round failed (observation.probeFailures): what it would have seen is not known, so the report
   * is not healthy even without a critical problem. A watcher counts such a round neither as healthy nor as failed
   * unless a critical problem it did see says so. Absent when every probe answered.
   */
  unknown?: true;
  /** The most disruptive rung any problem calls for ('none' when healthy). */
  recommendedRung: Rung;
  problems: Problem[];
  /** Halves of canary slot pairs that are stopped on purpose: neither problems nor recovered. */
  standby: StandbyEngine[];
  observation: NodeObservation;
}

export interface ClassifyOptions {
  /** Number of GPUs the config expects; fewer visible means one fell off the bus. */
  expectedGpus?: number;
  /** Free-space floor for model stores, bytes (default 10 GiB). */
  minFreeDiskBytes?: number;
}

const CUDA_OOM = /CUDA out of memory|cudaMalloc failed: out of memory|CUBLAS_STATUS_ALLOC_FAILED|OutOfMemoryError/i;

/**
 * Exit codes of a deliberate `docker stop`: 0 (the engine handled SIGTERM and exited cleanly) or 143 (terminated by
 * SIGTERM). 137 is not among them: a SIGKILL may as well be a crash, and a crash of a serving engine must not pass
 * for standby.
 */
const CLEAN_STOP_EXIT_CODES: readonly number[] = [0, 143];

/**
 * A container stopped on purpose: created and never started, or exited with a clean-stop code and not OOM-killed.
 * What `standbyEngine` leaves behind.
 */
export function isCleanStop(c: ContainerState): boolean {
  if (!c.exists || c.running) return false;
  if (c.status === 'created') return true;
  return c.status === 'exited' && !c.oomKilled && CLEAN_STOP_EXIT_CODES.includes(c.exitCode);
}

/**
 * Canary slot halves that are standby: stopped cleanly (exited or never started, not OOM-killed) while their partner
 * container runs. When both halves are down neither is standby: that is an outage.
 */
export function standbyContainers(containers: readonly ContainerState[]): StandbyEngine[] {
  const byName = new Map(containers.map((c) => [c.name, c]));
  return containers.flatMap((c) => {
    if (c.slotPartner === undefined || !isCleanStop(c)) return [];
    const partner = byName.get(c.slotPartner);
    if (!partner?.exists || !partner.running || partner.status === 'restarting') return [];
    return [{ engine: c.engine ?? null, container: c.name, partner: partner.name }];
  });
}

export function classifyNode(obs: NodeObservation, opts: ClassifyOptions = {}): HealthReport {
  const problems: Problem[] = [];
  const add = (p: Problem): void => {
    problems.push(p);
  };

  if (!obs.reachable) {
    add({
      kind: 'node-unreachable',
      subject: obs.node,
      detail: 'node worker did not pick up the probe in time',
      rung: 'restart-vm',
      severity: 'critical',
    });
  }

  if (obs.roundError !== undefined) {
    // Picked up but never answered: the node worker is alive and something on the node blocks every probe. Nothing
    // was seen, so no rung can be chosen from evidence; a human decides (escalation drains and notifies).
    add({
      kind: 'probe-failed',
      subject: obs.node,
      detail: `the probe round failed: ${obs.roundError}`,
      rung: 'escalate',
      severity: 'critical',
    });
  }
  const failures = obs.probeFailures ?? [];
  for (const f of failures) {
    // A blind spot, not a fault: what the other probes saw still decides the node's health.
    add({
      kind: 'probe-failed',
      subject: f.probe,
      detail: `${f.probe} failed: ${f.error}`,
      rung: 'none',
      severity: 'warning',
    });
  }

  const standby = standbyContainers(obs.containers);
  const standbyNames = new Set(standby.map((x) => x.container));
  const standbyEngines = new Set(standby.flatMap((x) => (x.engine === null ? [] : [x.engine])));

  for (const c of obs.containers) {
    if (standbyNames.has(c.name)) continue;
    if (!c.exists) {
      add({
        kind: 'container-missing',
        subject: c.name,
        detail: 'container does not exist',
        rung: 'escalate',
        severity: 'critical',
      });
      continue;
    }
    if (c.oomKilled) {
      add({
        kind: 'container-oom-killed',
        subject: c.name,
        detail: `container was OOM-killed (exit code ${c.exitCode})`,
        rung: 'restart-container',
        severity: 'critical',
      });
    } else if (!c.running && c.status !== 'restarting') {
      add({
        kind: 'container-exited',
        subject: c.name,
        detail: `container is ${c.status} (exit code ${c.exitCode})`,
        rung: 'restart-container',
        severity: 'critical',
      });
    }
    if (c.status === 'restarting') {
      add({
        kind: 'container-restarting',
        subject: c.name,
        detail: `container is restarting (restart count ${c.restartCount})`,
        rung: 'restart-container',
        severity: 'critical',
      });
    }
    if (c.running && c.health === 'unhealthy') {
      add({
        kind: 'container-unhealthy',
        subject: c.name,
        detail: 'docker healthcheck reports unhealthy',
        rung: 'restart-container',
        severity: 'critical',
      });
    }
    const oomLine = c.logSignals.find((l) => CUDA_OOM.test(l));
    if (oomLine) {
      add({
        kind: 'cuda-oom',
        subject: c.name,
        detail: `CUDA out of memory: ${oomLine}`,
        rung: 'restart-container',
        severity: 'critical',
      });
    }
  }

  for (const e of obs.engines) {
    if (standbyEngines.has(e.name)) continue;
    if (!e.reachable && e.unanswered) {
      add({
        kind: 'engine-hung',
        subject: e.name,
        detail: `${e.type} at ${e.url} did not answer its health check in time${e.error ? ` (${e.error})` : ''}, though nothing refused the connection: frozen, wedged or unreachable`,
        rung: 'restart-container',
        severity: 'critical',
      });
    } else if (!e.reachable || (!e.healthy && !e.loading)) {
      add({
        kind: 'engine-down',
        subject: e.name,
        detail: `${e.type} at ${e.url} ${e.reachable ? 'is unhealthy' : 'is unreachable'}${e.error ? `: ${e.error}` : ''}`,
        rung: 'restart-container',
        severity: 'critical',
      });
    } else if (e.generation?.skipped) {
      // The deadline ran short before the generation could have its share: nothing says the engine is hung.
      add({
        kind: 'probe-failed',
        subject: e.name,
        detail: `test generation skipped: ${e.generation.error ?? 'no time left'}`,
        rung: 'none',
        severity: 'warning',
      });
    } else if (e.generation && !e.generation.ok) {
      add({
        kind: 'engine-hung',
        subject: e.name,
        detail: `health answers but a test generation failed after ${e.generation.ms} ms: ${e.generation.error ?? 'no answer'}`,
        rung: 'restart-container',
        severity: 'critical',
      });
    }
  }

  if (obs.gpuError !== null) {
    add({
      kind: 'gpu-lost',
      subject: 'gpu',
      detail: `nvidia-smi failed: ${obs.gpuError}`,
      rung: 'restart-vm',
      severity: 'critical',
    });
  }
  for (const g of obs.gpus) {
    const subject = `gpu${g.index}`;
    if (g.lost) {
      add({
        kind: 'gpu-lost',
        subject,
        detail: `${g.name} (${g.pciBusId}) reports lost / ERR!`,
        rung: 'restart-vm',
        severity: 'critical',
      });
    }
    if (g.eccUncorrectedVolatile !== null && g.eccUncorrectedVolatile > 0) {
      add({
        kind: 'gpu-ecc',
        subject,
        detail: `${g.eccUncorrectedVolatile} uncorrected volatile ECC error(s)`,
        rung: 'reset-gpu',
        severity: 'critical',
      });
    }
    if (g.remappedRowsPending === true || g.retiredPagesPending === true) {
      add({
        kind: 'gpu-remap-pending',
        subject,
        detail: 'row remapping / page retirement pending: a GPU reset applies it',
        rung: 'reset-gpu',
        severity: 'warning',
      });
    }
  }
  // No GPU list (the probe failed, or the whole round) is not a GPU that fell off the bus.
  const gpusSeen = obs.roundError === undefined && !failures.some((f) => f.probe === 'queryGpus');
  if (opts.expectedGpus !== undefined && gpusSeen && obs.gpuError === null && obs.gpus.length < opts.expectedGpus) {
    add({
      kind: 'gpu-missing',
      subject: 'gpu',
      detail: `expected ${opts.expectedGpus} GPU(s), nvidia-smi shows ${obs.gpus.length}`,
      rung: 'restart-vm',
      severity: 'critical',
    });
  }

  for (const g of obs.gpus) {
    const p = driverVerdictProblem(g);
    if (p) add(p);
  }
  const verdicts = new Map(obs.gpus.map((g) => [pciBusKey(g.pciBusId), g]));
  for (const x of obs.xids) {
    const p = xidProblem(x, verdicts.get(pciBusKey(x.pciBusId)));
    if (p) add(p);
  }

  const minFree = opts.minFreeDiskBytes ?? 10 * 1024 ** 3;
  for (const d of obs.disks) {
    if (d.freeBytes < minFree) {
      add({
        kind: 'disk-low',
        subject: d.path,
        detail: `${(d.freeBytes / 1024 ** 3).toFixed(1)} GiB free, below ${(minFree / 1024 ** 3).toFixed(1)} GiB`,
        rung: 'escalate',
        severity: 'warning',
      });
    }
  }

  const recommendedRung = problems.reduce<Rung>((r, p) => maxRung(r, p.rung), 'none');
  // A skipped test generation is a blind spot too: a round whose generation was squeezed out must not count as a
  // healthy one (a hung engine skipped every few rounds would never reach the threshold).
  const unknown = failures.length > 0 || obs.engines.some((e) => e.generation?.skipped === true);
  return {
    node: obs.node,
    observedAt: obs.observedAt,
    healthy: !unknown && problems.every((p) => p.severity !== 'critical'),
    ...(unknown ? { unknown: true as const } : {}),
    recommendedRung,
    problems,
    standby,
    observation: obs,
  };
}

/**
 * The driver's verdict on one GPU as a problem: any recovery action but None calls for the rung the action names
 * (RECOVERY_ACTION_RUNGS). None is no problem, and neither is null (a driver before R565, [N/A], or an observation
 * recorded before gpuops read the verdict: undefined); words gpuops does not know are a warning for a human.
 */
function driverVerdictProblem(g: GpuStatus): Problem | null {
  const action = g.recoveryAction ?? null;
  const subject = `gpu${g.index}`;
  if (action === null) {
    if (g.recoveryActionRaw === undefined) return null;
    return {
      kind: 'gpu-recovery-action',
      subject,
      detail: `the driver's recovery action for ${g.name} (${g.pciBusId}) is "${g.recoveryActionRaw}", which gpuops does not know: check it by hand`,
      rung: 'none',
      severity: 'warning',
    };
  }
  if (action === 'none') return null;
  return {
    kind: 'gpu-recovery-action',
    subject,
    detail: `the driver's recovery action for ${g.name} (${g.pciBusId}) is "${RECOVERY_ACTION_WORDS[action]}"`,
    rung: RECOVERY_ACTION_RUNGS[action],
    severity: 'critical',
  };
}

/**
 * One Xid as a problem, or null when it calls for nothing. The driver's verdict on the Xid's GPU comes first: where
 * it names a recovery action, the Xid takes that action's rung instead of the table's, and says so. It does not for
 * the kernel-only Xids (79, 119, 120: NVML cannot see a GPU off the bus or with a dead GSP), for a verdict of None
 * (None after an application-level Xid such as 13 or 31 is normal: the fault died with the process) or null (an
 * older driver), or for an Xid whose GPU nvidia-smi does not list.
 */
function xidProblem(x: XidEvent, gpu: GpuStatus | undefined): Problem | null {
  const table = rungForXid(x.xid, x.message);
  const action = gpu?.recoveryAction ?? null;
  const follows = action !== null && action !== 'none' && !KERNEL_ONLY_XIDS.has(x.xid);
  const rung = follows ? RECOVERY_ACTION_RUNGS[action] : table;
  if (rung === 'none') return null;
  const note = follows
    ? `; driver says ${RECOVERY_ACTION_WORDS[action]}: ${rung} (the Xid table would say ${table})`
    : '';
  return {
    kind: 'gpu-xid',
    subject: x.pciBusId,
    detail: `Xid ${x.xid} (${xidName(x.xid)}): ${x.message}${note}`,
    rung,
    severity: 'critical',
  };
}

/**
 * Containers whose restart count climbed since the previous probe: docker's restart policy is bringing a crashing
 * engine back again and again, so each probe may catch it "running" while it is really in a loop.
 */
export function restartLoopProblems(
  previous: Readonly<Record<string, number>>,
  containers: ContainerState[],
): Problem[] {
  return containers
    .filter((c) => c.exists && previous[c.name] !== undefined && c.restartCount > (previous[c.name] ?? 0))
    .map((c) => ({
      kind: 'container-restarting' as const,
      subject: c.name,
      detail: `restart count climbed from ${previous[c.name]} to ${c.restartCount} since the last probe`,
      rung: 'restart-container' as const,
      severity: 'critical' as const,
    }));
}

/**
 * Probes whose failure leaves a recovery's verification standing: the kernel log and the model store say nothing
 * about whether the rung fixed the engines, and the engines' own answers stand in for their containers. A failed
 * engine or GPU probe does not (a failed GPU query already reads as a lost GPU).
 */
const VERIFY_TOLERATES: ReadonlySet<string> = new Set(['readXidEvents', 'checkDisks', 'inspectContainers']);

/**
 * Whether a report verifies a recovery rung: healthy, or unknown only through probes the verdict does not depend
 * on, with nothing critical seen. Without it a kernel log or a model-store mount that keeps failing (a blind spot,
 * not a fault) would climb the ladder to a VM reboot after a restart that worked.
 */
export function verifiesRecovery(report: HealthReport): boolean {
  if (report.healthy) return true;
  if (!report.unknown || report.observation.roundError !== undefined) return false;
  const failures = report.observation.probeFailures ?? [];
  return (
    failures.every((f) => VERIFY_TOLERATES.has(f.probe)) && report.problems.every((p) => p.severity !== 'critical')
  );
}
