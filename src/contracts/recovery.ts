/**
 * recoverNode's and watchNode's contract: inputs, the incident record, the maintenance Update and the Queries.
 * Workflow-safe (zod and src/domain only).
 */
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import { z } from 'zod';
import type { Problem } from '../domain/classify';
import type { BlindStreak } from '../domain/watch';
import type { Rung } from '../domain/rungs';
import { DurationSchema, GenerateTimeoutSchema, gpuopsId } from '../domain/schemas';
import { workflowContract } from './common';

const nodeId = gpuopsId('a node id');
const duration = DurationSchema;

export const RecoverNodeInput = z.strictObject({
  node: nodeId,
  /** Why recovery was asked for (shown in the record and the UI). */
  reason: z.string().min(1).max(2000).default('recovery requested'),
  trigger: z
    .strictObject({
      source: z.enum(['watcher', 'alertmanager', 'cli', 'ui']),
      detail: z.string().max(4000).default(''),
      /** Alertmanager fingerprint@startsAt, for tracing an incident back to its alert. */
      alertKey: z.string().max(200).optional(),
    })
    .default({ source: 'ui', detail: '' }),
  /** A fault name from the trigger (e.g. an alert's gpuops_fault label); informational. */
  fault: z.string().max(200).optional(),
  /** Start at this rung instead of the one the diagnosis calls for. */
  startRung: z.enum(['restart-container', 'reset-gpu', 'restart-vm', 'escalate']).optional(),
  /** Grace a container gets to stop before docker kills it (docker restart/stop -t). */
  containerStopTimeout: duration.default('10s'),
  /** How long to wait for health after a rung. */
  verifyTimeout: duration.default('2m'),
  /** Pause between verification probes. */
  verifyInterval: duration.default('2s'),
  /** How long a restarted VM may take until its node worker answers and the node is healthy. */
  bootTimeout: duration.default('5m'),
  /** How long a VM power task (reboot, reset) may run before it counts as failed. */
  powerTimeout: duration.default('2m'),
  pickupTimeout: duration.default('10s'),
  probeTimeout: duration.default('15s'),
  /** Recoveries of this node allowed per budget window; beyond it, escalate only (never a reboot loop). */
  maxRecoveries: z.int().min(0).default(3),
  budgetWindow: duration.default('1h'),
  /** Run a tiny real generation in probes. */
  generate: z.boolean().default(true),
  /**
   * How long each engine's test generation may take in the diagnosis (the probe before the first rung); the watcher
   * passes its own, so a hang it saw at a short deadline is not waited on for the health timeout again. At least
   * 50ms. Default: probeTimeout less 2 s. Verification probes keep that default: a restarted engine may be loading.
   */
  generateTimeout: GenerateTimeoutSchema.optional(),
});
export type RecoverNodeInput = z.input<typeof RecoverNodeInput>;

export interface RungAttempt {
  rung: Rung;
  startedAt: string;
  endedAt: string;
  /** What was done, in order ("docker restart ollama", "Proxmox reboot VM 101: UPID:…"). */
  actions: string[];
  /** healthy: verified after this rung; still-faulty: verify timed out; skipped: rung not applicable. */
  outcome: 'healthy' | 'still-faulty' | 'skipped' | 'failed';
  detail: string;
}

export interface ProblemSummary {
  at: string;
  healthy: boolean;
  reachable: boolean;
  recommendedRung: Rung;
  problems: Problem[];
}

/** The result of recoverNode: what was wrong, what was tried, what was seen, and how it ended. */
export interface IncidentRecord {
  node: string;
  reason: string;
  trigger: { source: string; detail: string; alertKey?: string | undefined };
  startedAt: string;
  endedAt: string | null;
  outcome: 'recovered' | 'escalated' | 'no-fault-found' | 'in-progress';
  budget: { used: number; max: number; window: string; exceeded: boolean };
  /** The diagnosis that chose the first rung. */
  initial: ProblemSummary | null;
  /** Evidence: Xid events and failing probes seen at the start. */
  evidence: { xids: { xid: number; message: string; time: string }[]; probes: string[] };
  rungs: RungAttempt[];
  final: ProblemSummary | null;
  escalation: { notified: string[]; notifyFailed: string[]; drained: string[]; detail: string } | null;
}

/** Query `incident` on recoverNode: the record so far. */
export const getIncidentQuery = defineQuery<IncidentRecord>('incident');

/** A blind streak as watchNode carries it across continue-as-new (the domain's BlindStreak). */
const BlindStreakSchema = z.strictObject({
  rounds: z.int().min(0),
  since: z.string().nullable(),
  alerted: z.boolean(),
});

/** A blind-streak notification as watchNode reports it (status) and carries it across continue-as-new. */
const BlindAlertSchema = z.strictObject({
  at: z.string(),
  kind: z.enum(['alert', 'answered']),
  rounds: z.int().min(0),
  sent: z.array(z.string()),
  failed: z.array(z.string()),
});

export const WatchNodeInput = z.strictObject({
  node: nodeId,
  probeInterval: duration.default('5s'),
  /** Consecutive failed probes before recovery starts (hysteresis: one blip never triggers recovery). */
  failureThreshold: z.int().min(1).default(3),
  pickupTimeout: duration.default('10s'),
  probeTimeout: duration.default('15s'),
  generate: z.boolean().default(true),
  /**
   * How long each engine's 2-token test generation may take before the engine counts as hung for that probe (a hung
   * engine costs a probe this long). At least 50ms. Default: probeTimeout less 2 s (at least 1 s), what single probes
   * gave it: a shorter one reads a busy engine (slow first token under load) as hung and restarts it.
   */
  generateTimeout: GenerateTimeoutSchema.optional(),
  /** Options passed to the recoverNode it starts (timeouts, budget). */
  // The diagnosis's generation deadline is the watcher's own generateTimeout.
  recovery: RecoverNodeInput.omit({
    node: true,
    reason: true,
    trigger: true,
    fault: true,
    startRung: true,
    generateTimeout: true,
  })
    .partial()
    .default({}),
  /**
   * Blind rounds in a row (a probe failed and nothing actionable was seen: the watcher decides nothing) after which
   * the notifiers get a warning, once per streak, and an all-clear when probes answer again. 0: never. At 5 s probes
   * the default is a minute.
   */
  blindAlertAfter: z.int().min(0).default(12),
  /** Probes per run before continue-as-new (keeps history bounded). */
  probesPerRun: z.int().min(1).default(500),
  /** Carried across continue-as-new. */
  state: z
    .strictObject({
      consecutiveFailures: z.int().min(0),
      maintenance: z.array(
        z.strictObject({
          reason: z.string(),
          engine: z.string().nullable(),
          by: z.string().nullable(),
          since: z.string(),
          until: z.string(),
        }),
      ),
      /** Whether the last probe saw the node healthy (an unhealthy → healthy change releases router auto-drains). */
      healthy: z.boolean().optional(),
      /** The blind rounds in a row so far, and whether they were notified (absent: none). */
      blind: BlindStreakSchema.optional(),
      /** The last blind-streak notification and who got it (status' blindAlert). */
      blindAlert: BlindAlertSchema.optional(),
    })
    .optional(),
});
export type WatchNodeInput = z.input<typeof WatchNodeInput>;

/** What the `maintenance` Update accepts (SetMaintenanceInput, checked). */
export const MaintenanceInput = z
  .strictObject({
    reason: z.string().min(1, { message: 'is required' }).max(500),
    duration: duration.optional(),
    until: z.iso.datetime({ offset: true, message: 'must be an ISO 8601 time' }).optional(),
    engine: z.string().min(1).optional(),
    by: z.string().max(200).optional(),
    clear: z.boolean().default(false),
  })
  .refine((m) => m.clear || (m.duration === undefined) !== (m.until === undefined), {
    message: 'must set exactly one of duration or until (or clear: true)',
  });

/** Input of the `maintenance` Update on watchNode: pause recovery for the node (or one engine) until an expiry. */
export interface SetMaintenanceInput {
  /** Why (shown in the UI and the incident record). */
  reason: string;
  /** How long from now, e.g. "30m" (or `until`). */
  duration?: string;
  /** Absolute expiry, ISO 8601 (or `duration`). */
  until?: string;
  /** Only this engine (its name); the whole node when absent. */
  engine?: string;
  /** Who asked (user, CI job, deployModel). */
  by?: string;
  /** End the matching window(s) now instead of opening one. */
  clear?: boolean;
}

export interface MaintenanceWindow {
  reason: string;
  engine: string | null;
  by: string | null;
  since: string;
  until: string;
}

/** What `status` on watchNode answers. */
export interface WatchStatus {
  node: string;
  probes: number;
  consecutiveFailures: number;
  lastReport: { at: string; healthy: boolean; recommendedRung: string; problems: string[] } | null;
  maintenance: MaintenanceWindow[];
  /** What the watcher did last time a fault crossed the threshold. */
  lastAction: { at: string; action: string; detail: string } | null;
  /** The last time it asked the router to put back engines the router drained by itself, when that did anything. */
  routerRelease?: { at: string; released: string[]; note: string | null };
  /** Blind rounds in a row (a probe failed, nothing actionable seen) up to the last one; absent when none. */
  blind?: BlindStreak;
  /** The last blind-streak notification: the warning, or the all-clear after it; who got it and who did not. */
  blindAlert?: z.infer<typeof BlindAlertSchema>;
}

export const setMaintenanceUpdate = defineUpdate<MaintenanceWindow[], [SetMaintenanceInput]>('maintenance');
export const getWatchStatusQuery = defineQuery<WatchStatus>('status');

/** recoverNode, by typed reference. ID `recover:<node>` (workflowIds.recover). */
export const recoverNodeWorkflow = workflowContract<RecoverNodeInput, IncidentRecord>('recoverNode');
/** watchNode, by typed reference (it never returns). ID `watch:<node>` (workflowIds.watch). */
export const watchNodeWorkflow = workflowContract<WatchNodeInput, never>('watchNode');
