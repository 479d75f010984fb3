/** `gpuops recover | watch | maintenance`: start and steer the failure-recovery workflows. */
import type { Client, WorkflowHandle } from '@temporalio/client';
import { z } from 'zod';
import type { LoadedConfig } from '../config/load';
import type { Config } from '../config/schema';
import {
  MaintenanceInput,
  RecoverNodeInput,
  WatchNodeInput,
  getIncidentQuery,
  recoverNodeWorkflow,
  setMaintenanceUpdate,
  watchNodeWorkflow,
  workflowIds,
  type IncidentRecord,
  type SetMaintenanceInput,
  type WorkflowOf,
} from '../contracts';
import { startWorkflow, workflowHandle } from '../temporal/workflows';
import { parseOptions, withClient, withInputs, workflowInput, type GlobalOptions, type Program } from './context';
import { requireNode } from './nodes';
import { followToEnd, gpuopsCommand, requireRunning } from './follow';
import { emit, FollowOutput, table } from './output';

const RecoverArgs = z.strictObject({
  rung: z.enum(['restart-container', 'reset-gpu', 'restart-vm', 'escalate']).optional(),
  // Its rules are recoverNode's own (workflowInput), not repeated here.
  reason: z.string().default('requested from the gpuops CLI'),
  wait: z.boolean().default(false),
  follow: z.boolean().default(false),
});

const MaintenanceArgs = z
  .strictObject({
    reason: z.string().min(1, { message: 'is required' }).optional(),
    for: z
      .string()
      .regex(/^\d+(s|m|h)$/, { message: 'must be a duration such as 30m or 2h' })
      .optional(),
    until: z.iso.datetime({ offset: true, message: 'must be an ISO 8601 time' }).optional(),
    engine: z.string().min(1).optional(),
    clear: z.boolean().default(false),
  })
  .refine((a) => a.clear || (a.reason && (a.for === undefined) !== (a.until === undefined)), {
    message: 'give --reason and exactly one of --for or --until (or --clear)',
  });

/** The watchNode input gpuops.yaml's recovery section asks for. */
export function watchInput(config: Config, node: string): WatchNodeInput {
  const r = config.recovery;
  const input = {
    node,
    probeInterval: r.probeInterval,
    failureThreshold: r.failureThreshold,
    blindAlertAfter: r.blindAlertAfter,
    ...(r.generateTimeout !== undefined ? { generateTimeout: r.generateTimeout } : {}),
    recovery: { verifyTimeout: r.verifyTimeout, maxRecoveries: r.maxRecoveriesPerHour },
  };
  return workflowInput(WatchNodeInput, input, `watchNode input for ${node}`);
}

/** The watchNode inputs of every node (or those given), each checked with watchNode's own schema. */
export function watchInputs(config: Config, nodes?: string[]): WatchNodeInput[] {
  return (nodes ?? config.nodes.map((x) => x.id)).map((n) => watchInput(config, n));
}

/** Start (or keep) one watcher per input; an already running watcher is left alone. */
async function startWatchersFor(client: Client, inputs: WatchNodeInput[]): Promise<string[]> {
  const ids: string[] = [];
  for (const input of inputs) {
    const n = input.node;
    const h = await startWorkflow(client, watchNodeWorkflow, input, {
      workflowId: workflowIds.watch(n),
      workflowIdConflictPolicy: 'USE_EXISTING',
      staticSummary: `Watch node ${n}`,
      staticDetails: 'Probes the node on its pinned queue and starts recoverNode when a fault persists.',
    });
    ids.push(h.workflowId);
  }
  return ids;
}

/** Start (or keep) one watcher per node (or those given); every input is checked before the first starts. */
export function startWatchers(client: Client, config: Config, nodes?: string[]): Promise<string[]> {
  return startWatchersFor(client, watchInputs(config, nodes));
}

export function renderIncident(i: IncidentRecord): string {
  return [
    `Incident on ${i.node}: ${i.outcome.toUpperCase()} (${i.startedAt} → ${i.endedAt ?? 'running'})`,
    `trigger: ${i.trigger.source} ${i.trigger.detail}; budget ${i.budget.used}/${i.budget.max} per ${i.budget.window}`,
    i.evidence.probes.length ? `evidence:\n${i.evidence.probes.map((p) => `  ${p}`).join('\n')}` : 'evidence: none',
    table(
      ['RUNG', 'OUTCOME', 'ACTIONS', 'DETAIL'],
      i.rungs.map((r) => [r.rung, r.outcome, r.actions.join('; '), r.detail]),
    ),
  ].join('\n');
}

/** One thing that happened in an incident, printed once as `--follow` sees it (`event` with --json). */
export interface IncidentMilestone {
  key: string;
  event: Record<string, unknown>;
  text: string;
}

/**
 * What the incident record shows so far, in order: the diagnosis, each rung as it starts and once it is judged (and
 * done acting: the next rung began or the incident ended), the escalation.
 */
export function incidentMilestones(i: IncidentRecord): IncidentMilestone[] {
  const out: IncidentMilestone[] = [];
  if (i.initial) {
    const problems = i.initial.problems.map((p) => `${p.kind} ${p.subject}: ${p.detail}`);
    out.push({
      key: 'diagnosis',
      event: {
        event: 'diagnosis',
        node: i.node,
        healthy: i.initial.healthy,
        rung: i.initial.recommendedRung,
        problems,
      },
      text: `diagnosis: ${i.initial.healthy ? 'healthy' : problems.join('; ')} → ${i.initial.recommendedRung}`,
    });
  }
  i.rungs.forEach((r, n) => {
    const base = { event: 'rung', node: i.node, index: n + 1, rung: r.rung };
    out.push({ key: `rung:${n}`, event: { ...base, state: 'started' }, text: `rung ${n + 1}: ${r.rung} started` });
    // A judged rung may still act (a healthy one undrains the engines): its line waits until the incident moves on.
    if (!r.endedAt || (n === i.rungs.length - 1 && !i.endedAt)) return;
    const actions = r.actions.length ? ` (${r.actions.join('; ')})` : '';
    out.push({
      key: `rung:${n}:end`,
      event: { ...base, state: r.outcome, detail: r.detail, actions: r.actions },
      text: `rung ${n + 1}: ${r.rung} ${r.outcome}${r.detail ? `: ${r.detail}` : ''}${actions}`,
    });
  });
  if (i.escalation) {
    const e = i.escalation;
    out.push({
      key: 'escalation',
      event: { event: 'escalation', node: i.node, ...e },
      text: `escalated: ${e.detail} (notified ${e.notified.join(', ') || 'nobody'}; drained ${e.drained.join(', ') || 'nothing'})`,
    });
  }
  return out;
}

type RecoveryHandle = WorkflowHandle<WorkflowOf<typeof recoverNodeWorkflow>>;

/**
 * Follow a recovery to its end: the diagnosis and each rung as it is reached and judged, then the incident record.
 * Exits 1 (after the record) when it escalated: a human must act.
 */
async function followRecovery(h: RecoveryHandle, globals: GlobalOptions): Promise<void> {
  const out = new FollowOutput(globals);
  out.once('attach', { event: 'following', workflowId: h.workflowId }, [
    `following ${h.workflowId} (Ctrl-C stops following; the recovery goes on)`,
  ]);
  const show = (i: IncidentRecord): void => {
    for (const m of incidentMilestones(i)) out.once(m.key, m.event, [m.text]);
  };
  let record: IncidentRecord;
  try {
    record = await followToEnd(h, async () => show(await h.query(getIncidentQuery)));
    show(record); // what happened since the last look
  } finally {
    out.close();
  }
  await emit(globals, record, renderIncident, { line: true });
  if (record.outcome === 'escalated') throw new Error(`${h.workflowId} escalated: a human must act`);
}

export function registerRecoveryCommands(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  program
    .command('recover <node>')
    .description('start recoverNode for a node (joins a recovery already running)')
    .option('--rung <rung>', 'start at this rung: restart-container | reset-gpu | restart-vm | escalate')
    .option('--reason <text>', 'why (kept in the incident record)')
    .option('--wait', 'wait for the incident record and print it')
    .option('--follow', 'print the diagnosis and each rung as it is reached, then the record (exit 1 if escalated)')
    .action(async (node, opts) => {
      const args = parseOptions(RecoverArgs, opts);
      const prepare = ({ config }: LoadedConfig): RecoverNodeInput => {
        requireNode(config, node);
        const input = {
          node,
          reason: args.reason,
          trigger: { source: 'cli' as const, detail: `gpuops recover by ${process.env.USER ?? 'unknown'}` },
          maxRecoveries: config.recovery.maxRecoveriesPerHour,
          verifyTimeout: config.recovery.verifyTimeout,
          ...(args.rung ? { startRung: args.rung } : {}),
        };
        return workflowInput(RecoverNodeInput, input, 'recoverNode input');
      };
      await withInputs(globals(), prepare, async (client, input) => {
        const h = await startWorkflow(client, recoverNodeWorkflow, input, {
          workflowId: workflowIds.recover(node),
          workflowIdConflictPolicy: 'USE_EXISTING',
          staticSummary: `Recover ${node} (gpuops recover)`,
        });
        if (args.follow) await followRecovery(h, globals());
        else if (args.wait) await emit(globals(), await h.result(), renderIncident);
        else {
          const followIt = gpuopsCommand(globals(), ['recovery', 'follow', node]);
          await emit(
            globals(),
            { workflowId: h.workflowId, runId: h.firstExecutionRunId },
            (r) => `recovery ${r.workflowId} running (follow it: ${followIt}, or in the UI)`,
          );
        }
      });
    });

  program
    .command('recovery')
    .description('the running recovery of a node')
    .command('follow <node>')
    .description('attach to the running recovery of a node and follow it to its end (exit 1 if escalated)')
    .action(async (node) => {
      await withClient(globals(), async (client, loaded) => {
        requireNode(loaded.config, node);
        const h = workflowHandle(client, recoverNodeWorkflow, workflowIds.recover(node));
        await requireRunning(h, `recovery of ${node}`);
        await followRecovery(h, globals());
      });
    });

  program
    .command('watch [node]')
    .description('start the watchNode workflow for every node (or one); running watchers are kept')
    .action(async (node) => {
      const prepare = ({ config }: LoadedConfig): WatchNodeInput[] => {
        if (node) requireNode(config, node);
        return watchInputs(config, node ? [node] : undefined);
      };
      await withInputs(globals(), prepare, async (client, inputs) => {
        const ids = await startWatchersFor(client, inputs);
        await emit(globals(), ids, (x) => `watching: ${x.join(', ')}`);
      });
    });

  program
    .command('maintenance <node>')
    .description('pause recovery for a node (or one engine) with a reason and an expiry')
    .option('--reason <text>', 'why (shown in the UI and incident records)')
    .option('--for <duration>', 'how long, e.g. 30m')
    .option('--until <time>', 'until an ISO 8601 time')
    .option('--engine <name>', 'only this engine')
    .option('--clear', 'end maintenance now')
    .action(async (node, opts) => {
      const a = parseOptions(MaintenanceArgs, opts);
      const prepare = ({ config }: LoadedConfig): SetMaintenanceInput => {
        requireNode(config, node);
        const input = {
          reason: a.reason ?? 'cleared',
          by: process.env.USER ?? 'gpuops CLI',
          clear: a.clear,
          ...(a.for ? { duration: a.for } : {}),
          ...(a.until ? { until: a.until } : {}),
          ...(a.engine ? { engine: a.engine } : {}),
        };
        return workflowInput(MaintenanceInput, input, 'maintenance input');
      };
      await withInputs(globals(), prepare, async (client, input) => {
        const watcher = workflowHandle(client, watchNodeWorkflow, workflowIds.watch(node));
        const windows = await watcher.executeUpdate(setMaintenanceUpdate, { args: [input] });
        await emit(globals(), windows, (w) =>
          w.length === 0
            ? `${node}: no maintenance`
            : table(
                ['REASON', 'ENGINE', 'BY', 'UNTIL'],
                w.map((x) => [x.reason, x.engine ?? '(node)', x.by, x.until]),
              ),
        );
      });
    });
}
