/** `gpuops recover | watch | maintenance`: start and steer the failure-recovery workflows. */
import type { Client } from '@temporalio/client';
import { z } from 'zod';
import type { Config } from '../config/schema';
import {
  recoverNodeWorkflow,
  setMaintenanceUpdate,
  watchNodeWorkflow,
  workflowIds,
  type IncidentRecord,
  type RecoverNodeInput,
} from '../contracts';
import { startWorkflow, workflowHandle } from '../temporal/workflows';
import { parseOptions, withClient, type GlobalOptions, type Program } from './context';
import { requireNode } from './nodes';
import { emit, table } from './output';

const RecoverArgs = z.strictObject({
  rung: z.enum(['restart-container', 'reset-gpu', 'restart-vm', 'escalate']).optional(),
  reason: z.string().min(1).max(2000).default('requested from the gpuops CLI'),
  wait: z.boolean().default(false),
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
export function watchInput(config: Config, node: string) {
  const r = config.recovery;
  return {
    node,
    probeInterval: r.probeInterval,
    failureThreshold: r.failureThreshold,
    recovery: { verifyTimeout: r.verifyTimeout, maxRecoveries: r.maxRecoveriesPerHour },
  };
}

/** Start (or keep) one watcher per node; an already running watcher is left alone. */
export async function startWatchers(client: Client, config: Config, nodes?: string[]): Promise<string[]> {
  const ids: string[] = [];
  for (const n of nodes ?? config.nodes.map((x) => x.id)) {
    const h = await startWorkflow(client, watchNodeWorkflow, watchInput(config, n), {
      workflowId: workflowIds.watch(n),
      workflowIdConflictPolicy: 'USE_EXISTING',
      staticSummary: `Watch node ${n}`,
      staticDetails: 'Probes the node on its pinned queue and starts recoverNode when a fault persists.',
    });
    ids.push(h.workflowId);
  }
  return ids;
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

export function registerRecoveryCommands(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  program
    .command('recover <node>')
    .description('start recoverNode for a node (joins a recovery already running)')
    .option('--rung <rung>', 'start at this rung: restart-container | reset-gpu | restart-vm | escalate')
    .option('--reason <text>', 'why (kept in the incident record)')
    .option('--wait', 'wait for the incident record and print it')
    .action(async (node, opts) => {
      const args = parseOptions(RecoverArgs, opts);
      await withClient(globals(), async (client, loaded) => {
        requireNode(loaded.config, node);
        const input: RecoverNodeInput = {
          node,
          reason: args.reason,
          trigger: { source: 'cli', detail: `gpuops recover by ${process.env.USER ?? 'unknown'}` },
          maxRecoveries: loaded.config.recovery.maxRecoveriesPerHour,
          verifyTimeout: loaded.config.recovery.verifyTimeout,
          ...(args.rung ? { startRung: args.rung } : {}),
        };
        const h = await startWorkflow(client, recoverNodeWorkflow, input, {
          workflowId: workflowIds.recover(node),
          workflowIdConflictPolicy: 'USE_EXISTING',
          staticSummary: `Recover ${node} (gpuops recover)`,
        });
        if (args.wait) await emit(globals(), await h.result(), renderIncident);
        else
          await emit(
            globals(),
            { workflowId: h.workflowId, runId: h.firstExecutionRunId },
            (r) => `recovery ${r.workflowId} running (follow it in the UI, or: gpuops recover ${node} --wait)`,
          );
      });
    });

  program
    .command('watch [node]')
    .description('start the watchNode workflow for every node (or one); running watchers are kept')
    .action(async (node) => {
      await withClient(globals(), async (client, loaded) => {
        if (node) requireNode(loaded.config, node);
        const ids = await startWatchers(client, loaded.config, node ? [node] : undefined);
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
      await withClient(globals(), async (client, loaded) => {
        requireNode(loaded.config, node);
        const windows = await workflowHandle(client, watchNodeWorkflow, workflowIds.watch(node)).executeUpdate(
          setMaintenanceUpdate,
          {
            args: [
              {
                reason: a.reason ?? 'cleared',
                by: process.env.USER ?? 'gpuops CLI',
                clear: a.clear,
                ...(a.for ? { duration: a.for } : {}),
                ...(a.until ? { until: a.until } : {}),
                ...(a.engine ? { engine: a.engine } : {}),
              },
            ],
          },
        );
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
