/** `gpuops deploy | promote | approve | rollback`: start and steer deployModel (ID deploy:<node>:<alias>). */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { z } from 'zod';
import { ValidationError } from '../domain/validation';
import {
  approveDeploymentUpdate,
  deployModelWorkflow,
  getDeploymentStatusQuery,
  promoteCanaryUpdate,
  rollbackDeploymentUpdate,
  workflowIds,
  type DeploymentStatus,
  type WorkflowOf,
} from '../contracts';
import { startWorkflow, workflowHandle } from '../temporal/workflows';
import { parseOptions, withClient, type GlobalOptions, type Program } from './context';
import { requireNode } from './nodes';
import { emit, progress } from './output';

export { runningDeployments, type DeploymentRow } from './deployments';

const DeployArgs = z.strictObject({
  node: z.string().min(1, { message: 'is required (--node)' }),
  engine: z.string().min(1).optional(),
  digest: z.string().optional(),
  revision: z.string().optional(),
  policy: z.string().optional(),
  follow: z.boolean().default(false),
  safetyProbes: z.boolean().default(true),
});
const SteerArgs = z.strictObject({
  node: z.string().min(1, { message: 'is required (--node)' }),
  by: z.string().min(1).max(200).optional(),
  reason: z.string().max(2000).optional(),
  force: z.boolean().default(false),
});

const who = (by?: string): string =>
  by ?? process.env.GITHUB_ACTOR ?? process.env.CI_JOB_NAME ?? process.env.USER ?? 'gpuops CLI';

function line(s: DeploymentStatus): string {
  const live = s.live
    ? ` step=${s.live.step} ${s.live.analysis.verdict} (canary ${s.live.analysis.samples.canary} / stable ${s.live.analysis.samples.stable} requests)`
    : '';
  return `${s.workflowId} stage=${s.stage}${s.riskTier ? ` risk=${s.riskTier}` : ''} canary=${s.weights.canary}%${live}`;
}

const MiB = 1024 * 1024;

/**
 * Progress of the running pull (or canary slot load), from the heartbeat details of the pending activity — what the
 * Temporal UI shows under Pending Activities. Null when none is running.
 */
export async function pullProgress(h: WorkflowHandle): Promise<string | null> {
  const d = await h.describe();
  for (const a of d.raw.pendingActivities ?? []) {
    const type = a.activityType?.name;
    if (type !== 'pullModel' && type !== 'loadCanarySlot') continue;
    const payload = a.heartbeatDetails?.payloads?.[0];
    const beat = payload ? (defaultPayloadConverter.fromPayload(payload) as Record<string, unknown>) : {};
    const attempt = a.attempt && a.attempt > 1 ? ` (attempt ${a.attempt})` : '';
    if (type === 'pullModel') {
      const done = Number(beat.completedBytes ?? 0);
      const total = Number(beat.totalBytes ?? 0);
      const pct = total > 0 ? ` ${((done / total) * 100).toFixed(1)}%` : '';
      return `pull ${String(beat.status ?? 'starting')}:${pct} ${(done / MiB).toFixed(0)}/${(total / MiB).toFixed(0)} MiB${attempt}`;
    }
    return `canary slot ${String(beat.phase ?? 'starting')} ${Math.round(Number(beat.elapsedMs ?? 0) / 1000)}s${attempt}${beat.lastLog ? `: ${String(beat.lastLog)}` : ''}`;
  }
  return null;
}

type DeploymentHandle = WorkflowHandle<WorkflowOf<typeof deployModelWorkflow>>;

async function handleFor(client: Client, node: string, alias: string): Promise<DeploymentHandle> {
  const h = workflowHandle(client, deployModelWorkflow, workflowIds.deploy(node, alias));
  try {
    await h.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new Error(`no deployment ${workflowIds.deploy(node, alias)}`);
    throw err;
  }
  return h;
}

/** The status line (and the pull's progress) whenever it changes, until the deployment ends; its audit record. */
async function follow(h: DeploymentHandle, globals: GlobalOptions): Promise<DeploymentStatus> {
  let last = '';
  const done = h.result().then(
    (r) => ({ ok: true as const, r }),
    (e: unknown) => ({ ok: false as const, e }),
  );
  for (;;) {
    // An unref'd tick: once the deployment is done nothing is left waiting on a timer.
    const r = await Promise.race([done, sleep(1000, null, { ref: false })]);
    if (r) {
      if (!r.ok) throw r.e;
      return r.r;
    }
    try {
      const s = await h.query(getDeploymentStatusQuery);
      const pull = s.stage === 'pulling' || s.stage === 'loading-canary-slot' ? await pullProgress(h) : null;
      const l = `${line(s)}${pull ? `  ${pull}` : ''}`;
      if (l !== last) progress(globals, l);
      last = l;
    } catch {
      // The workflow may be between tasks; the next tick asks again.
    }
  }
}

type SteerName = 'promote' | 'approve' | 'rollback';

/** Send the deployment its promote, approve or rollback Update and print the status it answers with. */
async function steer(
  globals: GlobalOptions,
  name: SteerName,
  alias: string,
  opts: z.input<typeof SteerArgs>,
): Promise<void> {
  const a = parseOptions(SteerArgs, opts);
  await withClient(globals, async (client, loaded) => {
    requireNode(loaded.config, a.node);
    const h = await handleFor(client, a.node, alias);
    const by = who(a.by);
    const update = (): Promise<DeploymentStatus> =>
      name === 'promote'
        ? h.executeUpdate(promoteCanaryUpdate, {
            args: [{ by, force: a.force, ...(a.reason ? { comment: a.reason } : {}) }],
          })
        : name === 'approve'
          ? h.executeUpdate(approveDeploymentUpdate, { args: [{ by, ...(a.reason ? { comment: a.reason } : {}) }] })
          : h.executeUpdate(rollbackDeploymentUpdate, { args: [{ by, reason: a.reason ?? 'rollback requested' }] });
    let status: DeploymentStatus;
    try {
      status = await update();
    } catch (err) {
      // A refusal by the Update's validator or handler carries the workflow's reason: say it, exit 1.
      if (err instanceof WorkflowUpdateFailedError) {
        throw new Error(`${name} refused: ${(err.cause as Error | undefined)?.message ?? err.message}`);
      }
      throw err;
    }
    await emit(globals, status, (st) => `${name} accepted: ${line(st)}`);
  });
}

export function registerDeployCommands(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  program
    .command('deploy <alias> <model>')
    .description('start deployModel: pull, validate, assess risk, canary through the router, promote or roll back')
    .requiredOption('--node <id>', 'node to deploy on')
    .option(
      '--engine <name>',
      'engine on the node (default: its first Ollama engine, else the first with a canarySlot)',
    )
    .option('--digest <sha256>', 'pin the model digest')
    .option('--revision <rev>', 'HF revision (commit, branch or tag) for vLLM; a 40-hex commit counts as pinned')
    .option('--policy <name>', 'deployment policy from gpuops.yaml (default: "default", else built-in defaults)')
    .option('--no-safety-probes', 'skip the jailbreak / PII probes (risk becomes at least medium: needs approve)')
    .option('--follow', 'print progress until the deployment ends')
    .action(async (alias, model, opts) => {
      const a = parseOptions(DeployArgs, opts);
      await withClient(globals(), async (client, loaded) => {
        requireNode(loaded.config, a.node);
        const node = loaded.config.nodes.find((n) => n.id === a.node);
        const engine =
          a.engine ??
          node?.engines.find((e) => e.type === 'ollama')?.name ??
          node?.engines.find((e) => (e as { canarySlot?: string }).canarySlot)?.name;
        if (!engine) {
          throw new ValidationError('arguments', ['--engine: the node has no Ollama engine or canary slot; name one']);
        }
        if (a.policy && !loaded.config.policies[a.policy]) {
          const known = Object.keys(loaded.config.policies);
          throw new ValidationError('arguments', [
            `--policy: must be a policy in gpuops.yaml (${known.join(', ') || 'none defined'}; got "${a.policy}")`,
          ]);
        }
        const policy = loaded.config.policies[a.policy ?? 'default'];
        const id = workflowIds.deploy(a.node, alias);
        const input = {
          node: a.node,
          alias,
          engine,
          model,
          requestedBy: who(),
          ...(a.digest ? { expectedDigest: a.digest } : {}),
          ...(a.revision ? { revision: a.revision } : {}),
          ...(policy ? { policy } : {}),
          ...(a.safetyProbes === false ? { safetyProbes: false } : {}),
        };
        const h = await startWorkflow(client, deployModelWorkflow, input, {
          workflowId: id,
          workflowIdConflictPolicy: 'FAIL',
          staticSummary: `Deploy ${model} as ${alias} on ${a.node}`,
        }).catch((err: unknown) => {
          if (err instanceof WorkflowExecutionAlreadyStartedError) {
            throw new Error(
              `${id} is already running: one deployment per alias at a time (see it with gpuops status, end it with gpuops rollback ${alias} --node ${a.node})`,
            );
          }
          throw err;
        });
        if (a.follow) {
          await emit(globals(), await follow(h, globals()), (r) => `finished: ${JSON.stringify(r, null, 2)}`);
        } else {
          await emit(
            globals(),
            { workflowId: h.workflowId, runId: h.firstExecutionRunId },
            (r) => `deployment ${r.workflowId} started (follow: gpuops deploy … --follow, or the UI)`,
          );
        }
      });
    });

  const steerCommand = (name: SteerName, description: string) =>
    program
      .command(`${name} <alias>`)
      .description(description)
      .requiredOption('--node <id>', 'node of the deployment')
      .option('--by <who>', 'who (default: CI actor or $USER)')
      .option('--reason <text>', 'why (rollback) or a comment');
  steerCommand('promote', 'promote the canary to 100% (refused while the analysis is failing, unless --force)')
    .option('--force', 'promote even though the last analysis failed')
    .action((alias, opts) => steer(globals(), 'promote', alias, opts));
  steerCommand('approve', 'approve a medium-risk deployment that waits for a human').action((alias, opts) =>
    steer(globals(), 'approve', alias, opts),
  );
  steerCommand('rollback', 'roll the deployment back now').action((alias, opts) =>
    steer(globals(), 'rollback', alias, opts),
  );
}
