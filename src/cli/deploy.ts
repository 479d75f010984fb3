/** `gpuops deploy | promote | approve | rollback`: start and steer deployModel (ID deploy:<node>:<alias>). */
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { z } from 'zod';
import type { LoadedConfig } from '../config/load';
import { deployPolicyForArgs } from '../config/policy';
import { ValidationError } from '../domain/validation';
import {
  ApproveDeploymentInput,
  DeployModelInput,
  PromoteCanaryInput,
  RollbackDeploymentInput,
  approveDeploymentUpdate,
  deployModelWorkflow,
  getDeploymentStatusQuery,
  promoteCanaryUpdate,
  rollbackDeploymentUpdate,
  workflowIds,
  type DeploymentExpectation,
  type DeploymentStatus,
  type WorkflowOf,
} from '../contracts';
import { startWorkflow, workflowHandle } from '../temporal/workflows';
import { parseOptions, withClient, withInputs, workflowInput, type GlobalOptions, type Program } from './context';
import { requireNode } from './nodes';
import {
  followToEnd,
  gpuopsCommand,
  pendingActivities,
  requireRunning,
  TransferMeter,
  type PendingActivity,
} from './follow';
import { emit, FollowOutput } from './output';
import { formatDuration } from './progress-bar';

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
const FollowArgs = z.strictObject({ node: z.string().min(1, { message: 'is required (--node)' }) });
// by, reason and the expectations are checked by the Update's own schema (workflowInput), not twice here.
const SteerArgs = z.strictObject({
  node: z.string().min(1, { message: 'is required (--node)' }),
  by: z.string().optional(),
  reason: z.string().optional(),
  force: z.boolean().default(false),
  expectModel: z.string().optional(),
  expectDigest: z.string().optional(),
  expectRevision: z.string().optional(),
  expectRunId: z.string().optional(),
});

const who = (by?: string): string =>
  by ?? process.env.GITHUB_ACTOR ?? process.env.CI_JOB_NAME ?? process.env.USER ?? 'gpuops CLI';

function line(s: DeploymentStatus): string {
  const live = s.live
    ? ` step=${s.live.step} ${s.live.analysis.verdict} (canary ${s.live.analysis.samples.canary} / stable ${s.live.analysis.samples.stable} requests)`
    : '';
  const sh = s.stage === 'shadow' ? s.shadow?.analysis : undefined;
  const shadow = sh ? ` shadow ${sh.verdict} (${sh.samples.canary} mirrored pairs)` : '';
  return `${s.workflowId} stage=${s.stage}${s.riskTier ? ` risk=${s.riskTier}` : ''} canary=${s.weights.canary}%${live}${shadow}`;
}

const MiB = 1024 * 1024;

/** The pending pull or canary slot load (its heartbeats), if one runs. */
async function pendingLoad(h: WorkflowHandle): Promise<PendingActivity | null> {
  return (await pendingActivities(h)).find((a) => a.type === 'pullModel' || a.type === 'loadCanarySlot') ?? null;
}

const attemptOf = (a: PendingActivity): string => (a.attempt > 1 ? ` (attempt ${a.attempt})` : '');

/** A canary slot load as one line: phase, time so far, the engine's last log line. */
function slotProgress(a: PendingActivity): string {
  const beat = a.details;
  return `canary slot ${String(beat.phase ?? 'starting')} ${Math.round(Number(beat.elapsedMs ?? 0) / 1000)}s${attemptOf(a)}${beat.lastLog ? `: ${String(beat.lastLog)}` : ''}`;
}

/**
 * Progress of the running pull (or canary slot load), from the heartbeat details of the pending activity — what the
 * Temporal UI shows under Pending Activities. Null when none is running.
 */
export async function pullProgress(h: WorkflowHandle): Promise<string | null> {
  const a = await pendingLoad(h);
  if (!a) return null;
  if (a.type === 'loadCanarySlot') return slotProgress(a);
  const done = Number(a.details.completedBytes ?? 0);
  const total = Number(a.details.totalBytes ?? 0);
  const pct = total > 0 ? ` ${((done / total) * 100).toFixed(1)}%` : '';
  return `pull ${String(a.details.status ?? 'starting')}:${pct} ${(done / MiB).toFixed(0)}/${(total / MiB).toFixed(0)} MiB${attemptOf(a)}`;
}

/** What a waiting deployment waits for, until when, what happens then, and the commands that continue or stop it. */
export interface Waiting {
  for: string;
  why: string;
  /** ISO time the wait ends (null from a deployment started by an older gpuops, whose status does not say). */
  until: string | null;
  then: string;
  commands: { what: string; command: string }[];
}

/**
 * The wait of a deployment in awaiting-approval, awaiting-promotion or its rollback window; null in other stages.
 * Given the run it follows (its chain's first run ID, which a continue-as-new keeps), each printed command carries
 * `--expect-model` and `--expect-run-id`: pasted after this deployment ended and another of the alias began, it is
 * refused instead of steering the other one.
 */
export function waitingFor(s: DeploymentStatus, globals: GlobalOptions, runId?: string): Waiting | null {
  const guard = runId ? ['--expect-model', s.model, '--expect-run-id', runId] : [];
  const run = (verb: SteerName): string => gpuopsCommand(globals, [verb, s.alias, '--node', s.node, ...guard]);
  const stop = { what: 'stop', command: run('rollback') };
  // A status from before waitingUntil existed has no such field.
  const until = (s.waitingUntil as string | null | undefined) ?? null;
  // Both gates: the Update continues, rollback stops, and without either it rolls back at `until`.
  const gate = (verb: 'approve' | 'promote', why: string): Waiting => ({
    for: verb,
    why,
    until,
    then: 'it rolls back',
    commands: [{ what: 'continue', command: run(verb) }, stop],
  });
  if (s.stage === 'awaiting-approval') {
    const findings = (s.risk?.findings ?? []).filter((f) => f.tier === 'medium').map((f) => f.detail);
    return gate('approve', `risk ${s.riskTier ?? 'medium'}${findings.length ? ` (${findings.join('; ')})` : ''}`);
  }
  if (s.stage === 'awaiting-promotion') return gate('promote', `the canary passed at ${s.weights.canary}%`);
  if (s.stage === 'rollback-window') {
    return {
      for: 'the rollback window to close',
      why: `${s.model} serves 100%; ${s.stable?.model ?? 'the old version'} stays loaded for a rollback`,
      until: until ?? s.rollbackWindowEndsAt,
      then: 'the old version is unloaded and the deployment ends promoted',
      commands: [{ what: 'go back', command: run('rollback') }],
    };
  }
  return null;
}

/** The wait as the lines under the status line; "N from now" as of `nowMs`. */
export function renderWaiting(w: Waiting, nowMs: number): string[] {
  const left = w.until ? ` (${formatDuration((Date.parse(w.until) - nowMs) / 1000)} from now)` : '';
  return [
    `  waiting for ${w.for}: ${w.why}`,
    `  until ${w.until ?? '(not known: the deployment was started by an older gpuops)'}${left}; then ${w.then}`,
    ...w.commands.map((c) => `  ${`${c.what}:`.padEnd(10)} ${c.command}`),
  ];
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

/**
 * Follow a deployment to its end: the status line whenever it changes (with what a waiting stage waits for, until
 * when, and the commands that continue or stop it), the pull as a progress bar; then the audit record. Exits 1
 * (after printing the record) unless it was promoted.
 */
async function follow(h: DeploymentHandle, globals: GlobalOptions): Promise<void> {
  const out = new FollowOutput(globals);
  const pull = new TransferMeter();
  const id = h.workflowId;
  const described = await h.describe();
  const runId = described.raw.workflowExecutionInfo?.firstRunId || described.runId;
  out.once('attach', { event: 'following', workflowId: id, runId }, [
    `following ${id} run ${runId} (Ctrl-C stops following; the deployment goes on)`,
  ]);
  const show = (s: DeploymentStatus, load: PendingActivity | null): void => {
    const slot = load?.type === 'loadCanarySlot' ? slotProgress(load) : null;
    const w = waitingFor(s, globals, runId);
    const event = {
      event: 'status',
      workflowId: id,
      stage: s.stage,
      outcome: s.outcome,
      riskTier: s.riskTier,
      weights: s.weights,
      live: s.live ? { step: s.live.step, verdict: s.live.analysis.verdict, samples: s.live.analysis.samples } : null,
      ...(s.shadow ? { shadow: { verdict: s.shadow.verdict, analysis: s.shadow.analysis?.verdict ?? null } } : {}),
      ...(slot ? { slot } : {}),
      waiting: w,
    };
    out.change(event, [`${line(s)}${slot ? `  ${slot}` : ''}`, ...(w ? renderWaiting(w, Date.now()) : [])]);
    if (load?.type !== 'pullModel') return out.transfer(null);
    const status = String(load.details.status ?? 'starting');
    const total = Number(load.details.totalBytes ?? 0);
    const view = {
      label: `pull ${status}${attemptOf(load)}`,
      done: Number(load.details.completedBytes ?? 0),
      total: total > 0 ? total : null,
      bytes: true,
    };
    out.transfer(pull.line(`pull ${status}`, view, load.heartbeatAt ?? Date.now()));
  };
  let record: DeploymentStatus;
  try {
    record = await followToEnd(h, async () => {
      const s = await h.query(getDeploymentStatusQuery);
      show(s, s.stage === 'pulling' || s.stage === 'loading-canary-slot' ? await pendingLoad(h) : null);
    });
    show(record, null); // the final stage, which the workflow enters as it ends
  } finally {
    out.close();
  }
  const why = record.rollback ? `: ${record.rollback.reason}` : record.error ? `: ${record.error}` : '';
  const page = record.reports?.html ? `\nreport: ${record.reports.html}` : '';
  await emit(globals, record, (r) => `${JSON.stringify(r, null, 2)}\nfinished: ${r.outcome}${why}${page}`, {
    line: true,
  });
  if (record.outcome !== 'promoted') throw new Error(`${id} ${record.outcome}${why}`);
}

type SteerName = 'promote' | 'approve' | 'rollback';

type SteerInput =
  | { name: 'promote'; args: PromoteCanaryInput }
  | { name: 'approve'; args: ApproveDeploymentInput }
  | { name: 'rollback'; args: RollbackDeploymentInput };

/** The `--expect-*` flags as the Updates' `expect` field (absent when none is given). */
function expectation(a: z.output<typeof SteerArgs>): { expect?: DeploymentExpectation } {
  const e = {
    ...(a.expectModel !== undefined ? { model: a.expectModel } : {}),
    ...(a.expectDigest !== undefined ? { digest: a.expectDigest } : {}),
    ...(a.expectRevision !== undefined ? { revision: a.expectRevision } : {}),
    ...(a.expectRunId !== undefined ? { runId: a.expectRunId } : {}),
  };
  return Object.keys(e).length > 0 ? { expect: e } : {};
}

/** The Update a steer command sends, checked with the Update's own schema. */
function steerInput(name: SteerName, alias: string, a: z.output<typeof SteerArgs>): SteerInput {
  // The alias names the workflow ID: the deployment's own rule for it.
  workflowInput(DeployModelInput.pick({ alias: true }), { alias }, 'arguments');
  const by = who(a.by);
  const expect = expectation(a);
  const comment = a.reason !== undefined ? { comment: a.reason } : {};
  const what = `${name} input`;
  if (name === 'promote') {
    return { name, args: workflowInput(PromoteCanaryInput, { by, force: a.force, ...comment, ...expect }, what) };
  }
  if (name === 'approve')
    return { name, args: workflowInput(ApproveDeploymentInput, { by, ...comment, ...expect }, what) };
  const reason = a.reason ?? 'rollback requested';
  return { name, args: workflowInput(RollbackDeploymentInput, { by, reason, ...expect }, what) };
}

/** Send the deployment its promote, approve or rollback Update and print the status it answers with. */
async function steer(
  globals: GlobalOptions,
  name: SteerName,
  alias: string,
  opts: z.input<typeof SteerArgs>,
): Promise<void> {
  const a = parseOptions(SteerArgs, opts);
  const prepare = (loaded: LoadedConfig): SteerInput => {
    requireNode(loaded.config, a.node);
    return steerInput(name, alias, a);
  };
  await withInputs(globals, prepare, async (client, input) => {
    const h = await handleFor(client, a.node, alias);
    const update = (): Promise<DeploymentStatus> =>
      input.name === 'promote'
        ? h.executeUpdate(promoteCanaryUpdate, { args: [input.args] })
        : input.name === 'approve'
          ? h.executeUpdate(approveDeploymentUpdate, { args: [input.args] })
          : h.executeUpdate(rollbackDeploymentUpdate, { args: [input.args] });
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

/** deployModel's input for `gpuops deploy`, checked with the workflow's own schema. */
function deployInput(
  loaded: LoadedConfig,
  alias: string,
  model: string,
  a: z.output<typeof DeployArgs>,
): DeployModelInput {
  requireNode(loaded.config, a.node);
  const node = loaded.config.nodes.find((n) => n.id === a.node);
  const engine =
    a.engine ??
    node?.engines.find((e) => e.type === 'ollama')?.name ??
    node?.engines.find((e) => (e as { canarySlot?: string }).canarySlot)?.name;
  if (!engine) {
    throw new ValidationError('arguments', ['--engine: the node has no Ollama engine or canary slot; name one']);
  }
  const policy = deployPolicyForArgs(loaded.config, alias, a.policy);
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
  return workflowInput(DeployModelInput, input, 'deployModel input');
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
    .option(
      '--policy <name>',
      'deployment policy from gpuops.yaml (default: aliases.<alias>.policy, else "default", else built-in)',
    )
    .option('--no-safety-probes', 'skip the jailbreak / PII probes (risk becomes at least medium: needs approve)')
    .option(
      '--follow',
      'print progress, what a waiting stage waits for, until the deployment ends (exit 1 unless promoted)',
    )
    .action(async (alias, model, opts) => {
      const a = parseOptions(DeployArgs, opts);
      await withInputs(
        globals(),
        (loaded) => deployInput(loaded, alias, model, a),
        async (client, input) => {
          const id = workflowIds.deploy(a.node, alias);
          const h = await startWorkflow(client, deployModelWorkflow, input, {
            workflowId: id,
            workflowIdConflictPolicy: 'FAIL',
            staticSummary: `Deploy ${model} as ${alias} on ${a.node}`,
          }).catch((err: unknown) => {
            if (err instanceof WorkflowExecutionAlreadyStartedError) {
              throw new Error(
                `${id} is already running: one deployment per alias at a time (follow it with ${gpuopsCommand(globals(), ['follow', alias, '--node', a.node])}, end it with ${gpuopsCommand(globals(), ['rollback', alias, '--node', a.node])})`,
              );
            }
            throw err;
          });
          if (a.follow) await follow(h, globals());
          else {
            const followIt = gpuopsCommand(globals(), ['follow', alias, '--node', a.node]);
            await emit(
              globals(),
              { workflowId: h.workflowId, runId: h.firstExecutionRunId },
              (r) => `deployment ${r.workflowId} started, run ${r.runId} (follow it: ${followIt}, or in the UI)`,
            );
          }
        },
      );
    });

  program
    .command('follow <alias>')
    .description('attach to the running deployment of an alias and follow it to its end (exit 1 unless promoted)')
    .requiredOption('--node <id>', 'node of the deployment')
    .action(async (alias, opts) => {
      const a = parseOptions(FollowArgs, opts);
      await withClient(globals(), async (client, loaded) => {
        requireNode(loaded.config, a.node);
        const h = workflowHandle(client, deployModelWorkflow, workflowIds.deploy(a.node, alias));
        await requireRunning(h, `deployment of ${alias} on ${a.node}`);
        await follow(h, globals());
      });
    });

  const steerCommand = (name: SteerName, description: string) =>
    program
      .command(`${name} <alias>`)
      .description(description)
      .requiredOption('--node <id>', 'node of the deployment')
      .option('--by <who>', 'who (default: CI actor or $USER)')
      .option('--reason <text>', 'why (rollback) or a comment')
      .option('--expect-model <model>', 'refuse unless the running deployment deploys this model')
      .option('--expect-digest <sha256>', 'refuse unless its digest (pulled, or pinned until pulled) is this one')
      .option('--expect-revision <rev>', 'refuse unless its HF revision is this one')
      .option('--expect-run-id <id>', 'refuse unless it is this run (the run ID `gpuops deploy` printed)');
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
