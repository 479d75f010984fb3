/**
 * Model deployment. `deployModel` pulls a new model version onto a node's Ollama engine, validates it there (golden
 * prompts, safety probes), rates its risk, then moves traffic to it in canary steps through the router, comparing it
 * with the stable variant in the same window at each step, and promotes it — or rolls back as a saga, recording
 * whatever could not be undone.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  condition,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { z } from 'zod';
import { DeployPolicySchema } from '../src/domain/deploy-policy';
import { DurationSchema, gpuopsId } from '../src/domain/schemas';
import type * as controlActivities from '../activities/control';
import type * as deployActivities from '../activities/deploy';
import type * as nodeActivities from '../activities/node';
import type { AliasRoute, Variant } from '../src/router/routes';
import { analyseCanary, type CanaryAnalysis } from '../src/domain/canary';
import { parseDuration } from '../src/domain/durations';
import { assessRisk } from '../src/domain/risk';
import { parseInput } from '../src/domain/validation';
import {
  SEARCH_ATTRIBUTES,
  approveDeploymentUpdate,
  getDeploymentStatusQuery,
  nodeTaskQueue,
  promoteCanaryUpdate,
  rollbackDeploymentUpdate,
  workflowIds,
  type ApproveDeploymentInput,
  type DeploymentStatus,
  type PromoteCanaryInput,
  type RollbackDeploymentInput,
} from '../src/messages';

type ControlActivities = ReturnType<typeof controlActivities.createControlActivities>;
type NodeActivities = ReturnType<typeof nodeActivities.createNodeActivities>;
type DeployActivities = ReturnType<typeof deployActivities.createDeployActivities>;

const nodeId = gpuopsId('a node id');
const duration = DurationSchema;

/** The deployment policy (same schema as gpuops.yaml's `policies.<name>`): a config policy or overrides. */
export const DeployPolicyInput = DeployPolicySchema;

export const DeployModelInput = z.strictObject({
  node: nodeId,
  /** Router alias whose `stable` variant the new version canaries against. */
  alias: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/, { message: 'must be a router alias name' }),
  /** Ollama engine name on the node. */
  engine: z.string().min(1, { message: 'must be an engine name from gpuops.yaml' }),
  /** Model to deploy, `name:tag`. */
  model: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]*:[A-Za-z0-9][A-Za-z0-9._-]*$/, {
    message: 'must be name:tag, e.g. qwen2.5:0.5b',
  }),
  /** Pin the digest (64 hex, optionally `sha256:`): a pulled model with another digest is rolled back. */
  expectedDigest: z
    .string()
    .regex(/^(sha256:)?[0-9a-f]{64}$/, { message: 'must be a sha256 digest (64 hex)' })
    .optional(),
  policy: DeployPolicyInput.default(DeployPolicyInput.parse({})),
  /** Run the safety probes (skipping them makes the risk at least medium). */
  safetyProbes: z.boolean().default(true),
  /** Who asked (CI job, user); shown in the audit record. */
  requestedBy: z.string().min(1).max(200).default('unknown'),
  /** How long a pull may take in all. */
  pullTimeout: duration.default('2h'),
  /** How long a node activity may wait for the node's worker to pick it up. */
  pickupTimeout: duration.default('30s'),
});
export type DeployModelInput = z.input<typeof DeployModelInput>;

class Rollback extends Error {
  constructor(
    readonly by: string,
    readonly reason: string,
  ) {
    super(reason);
  }
}

function failureType(err: unknown): string | undefined {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure ? (cause.type ?? undefined) : undefined;
}

const refuse = (message: string): never => {
  throw ApplicationFailure.nonRetryable(message, 'Refused');
};

/**
 * Deploy a model version to an alias as a canary: pull → validate → risk → canary steps → promote, or roll back.
 * ID `deploy:<node>:<alias>` (one at a time; start with conflict policy FAIL). Updates `approve`, `promote`,
 * `rollback`; Query `status`. Returns the audit record.
 */
export async function deployModel(rawInput: DeployModelInput): Promise<DeploymentStatus> {
  const input = parseInput(DeployModelInput, rawInput, 'deployModel input');
  const policy = input.policy;
  const info = workflowInfo();
  if (info.workflowId !== workflowIds.deploy(input.node, input.alias)) {
    // The ID is the lock that keeps deployments to one alias one at a time; any other ID would bypass it.
    throw ApplicationFailure.create({
      type: 'ValidationError',
      nonRetryable: true,
      message: `invalid deployModel input: workflow ID must be ${workflowIds.deploy(input.node, input.alias)} (got ${info.workflowId})`,
    });
  }
  const actor = info.workflowId;
  const now = (): string => new Date(Date.now()).toISOString();
  const status: DeploymentStatus = {
    workflowId: info.workflowId,
    node: input.node,
    alias: input.alias,
    engine: input.engine,
    model: input.model,
    stage: 'starting',
    outcome: 'in-progress',
    digest: null,
    expectedDigest: input.expectedDigest ?? null,
    stable: null,
    weights: { stable: 100, canary: 0 },
    validation: [],
    riskTier: null,
    risk: null,
    analyses: [],
    requestedBy: input.requestedBy,
    approvedBy: null,
    promotedBy: null,
    rollback: null,
    undo: [],
    error: null,
    timings: { startedAt: now(), endedAt: null, stages: [] },
  };
  let finished = false;
  let approval: ApproveDeploymentInput | null = null;
  let promotion: PromoteCanaryInput | null = null;
  let rollbackAsked: RollbackDeploymentInput | null = null;

  setHandler(getDeploymentStatusQuery, () => status);
  setHandler(
    approveDeploymentUpdate,
    (a) => {
      approval = a;
      return status;
    },
    {
      validator: (a: ApproveDeploymentInput) => {
        if (finished) refuse(`the deployment has finished (${status.outcome})`);
        if (!a?.by) refuse('approve needs `by`: who approves');
        if (status.stage !== 'awaiting-approval') refuse(`nothing awaits approval (stage ${status.stage})`);
      },
    },
  );
  setHandler(
    promoteCanaryUpdate,
    (p) => {
      promotion = p;
      return status;
    },
    {
      validator: (p: PromoteCanaryInput) => {
        if (finished) refuse(`the deployment has finished (${status.outcome})`);
        if (!p?.by) refuse('promote needs `by`: who promotes');
        if (rollbackAsked || status.stage === 'rolling-back') refuse('the deployment is rolling back');
        const last = status.analyses.at(-1);
        if (last && last.analysis.verdict === 'fail' && !p.force) {
          refuse(`the last canary analysis failed (${last.analysis.reasons.join('; ')}); send force: true to override`);
        }
        if (status.stage !== 'canary' && status.stage !== 'awaiting-promotion') {
          refuse(`no canary is running (stage ${status.stage})`);
        }
      },
    },
  );
  setHandler(
    rollbackDeploymentUpdate,
    (r) => {
      rollbackAsked ??= r;
      return status;
    },
    {
      validator: (r: RollbackDeploymentInput) => {
        if (finished) refuse(`the deployment has finished (${status.outcome})`);
        if (!r?.by || !r.reason) refuse('rollback needs `by` and `reason`');
      },
    },
  );

  const stage = (s: string, details: string): void => {
    status.stage = s;
    status.timings.stages.push({ stage: s, at: now() });
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.stage, value: s }]);
    setCurrentDetails(`Deploying **${input.model}** → \`${input.alias}\` on **${input.node}** — ${details}`);
  };
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.node, value: input.node },
    { key: SEARCH_ATTRIBUTES.alias, value: input.alias },
    { key: SEARCH_ATTRIBUTES.model, value: input.model },
    { key: SEARCH_ATTRIBUTES.canaryWeight, value: 0 },
  ]);

  const control = proxyActivities<ControlActivities>({
    startToCloseTimeout: '30s',
    retry: { maximumAttempts: 5, initialInterval: '1s' },
  });
  // Synthetic traffic runs until its requests finish; a slow canary makes it slower, which is what is measured.
  const traffic = proxyActivities<ControlActivities>({ startToCloseTimeout: '5m', retry: { maximumAttempts: 2 } });
  const node = proxyActivities<NodeActivities & DeployActivities>({
    taskQueue: nodeTaskQueue(input.node),
    scheduleToStartTimeout: input.pickupTimeout,
    // The first prompt loads the model into VRAM; every prompt has its own timeout inside.
    startToCloseTimeout: '10m',
    heartbeatTimeout: '2m',
    retry: { maximumAttempts: 3, initialInterval: '1s' },
  });
  const modelPull = proxyActivities<NodeActivities>({
    taskQueue: nodeTaskQueue(input.node),
    scheduleToStartTimeout: input.pickupTimeout,
    startToCloseTimeout: input.pullTimeout,
    // A stalled download fails over to a retry, which resumes from Ollama's partial blobs.
    heartbeatTimeout: '60s',
    retry: { maximumAttempts: 5, initialInterval: '2s' },
  });

  /** Read-modify-write of the alias's route with If-Match; a concurrent change means read again, at most 3 times. */
  const updateRoute = async (mutate: (r: AliasRoute) => AliasRoute | null): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      const doc = await control.getRoutes();
      const route = doc.routes[input.alias];
      if (!route) throw ApplicationFailure.nonRetryable(`alias ${input.alias} is not in the router`, 'UnknownAlias');
      const next = mutate(route);
      if (next === null) return;
      try {
        await control.putRoutes({
          routes: { ...doc.routes, [input.alias]: next },
          drained: doc.drained,
          ifMatch: doc.etag,
          actor,
        });
        return;
      } catch (err) {
        if (failureType(err) !== 'RouteConflict' || attempt >= 3) throw err;
      }
    }
  };
  const setWeights = async (canary: number): Promise<void> => {
    await control.setWeights({ alias: input.alias, weights: { canary, stable: 100 - canary }, actor });
    status.weights = { stable: 100 - canary, canary };
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.canaryWeight, value: canary }]);
  };

  // Saga: each step that changed the world pushes its undo; a rollback runs them in reverse.
  const undo: { step: string; run: () => Promise<string> }[] = [];
  const rollBack = async (by: string, reason: string, outcome: 'rolled-back' | 'failed'): Promise<void> => {
    status.rollback = { by, reason };
    stage('rolling-back', `rolling back: ${reason}`);
    for (const u of undo.reverse()) {
      try {
        status.undo.push({ step: u.step, ok: true, detail: await u.run() });
      } catch (err) {
        status.undo.push({ step: u.step, ok: false, detail: (err as Error).message });
      }
    }
    undo.length = 0;
    status.outcome = outcome;
    stage(outcome, `${outcome}: ${reason}`);
  };
  const checkRollback = (): void => {
    if (rollbackAsked) throw new Rollback(rollbackAsked.by, `rollback requested: ${rollbackAsked.reason}`);
  };

  try {
    const facts = await control.nodeFacts({ node: input.node });
    const engine = facts.engines.find((e) => e.name === input.engine);
    if (!engine) {
      throw ApplicationFailure.nonRetryable(
        `engine: must be one of ${facts.engines.map((e) => e.name).join(', ')} (got "${input.engine}")`,
        'ValidationError',
      );
    }
    const routes = await control.getRoutes();
    const stableVariant = routes.routes[input.alias]?.variants.find((v) => v.name === 'stable');
    if (!stableVariant) {
      throw ApplicationFailure.nonRetryable(
        `alias ${input.alias} has no "stable" variant in the router: a canary needs a stable version to compare with`,
        'UnknownAlias',
      );
    }
    status.stable = { model: stableVariant.model, engine: stableVariant.engine };

    stage('pulling', `pulling ${input.model}`);
    checkRollback();
    const pulled = await modelPull.pullModel({ engine: input.engine, model: input.model });
    status.digest = pulled.digest;
    const norm = (d: string): string => d.replace(/^sha256:/, '').toLowerCase();
    if (input.expectedDigest && (!pulled.digest || norm(pulled.digest) !== norm(input.expectedDigest))) {
      throw new Rollback(
        'deployModel',
        `digest ${pulled.digest ?? '(none)'} is not the pinned ${input.expectedDigest}`,
      );
    }
    // The pulled model stays in the store (a retry or the next attempt reuses it); only its memory is given back.
    undo.push({
      step: `unload ${input.model} from ${input.engine}`,
      run: async () => {
        await node.unloadModel({ engine: input.engine, model: input.model });
        return 'unloaded';
      },
    });

    stage('validating', 'golden prompts and safety probes on the node');
    checkRollback();
    const check = { engine: input.engine, model: input.model };
    const golden = await node.runGoldenPrompts(check);
    const safety = input.safetyProbes ? await node.runSafetyProbes(check) : [];
    const resources = await node.checkModelResources(check);
    status.validation = [...golden, ...safety];

    stage('assessing-risk', 'rating risk');
    const risk = assessRisk({
      model: input.model,
      alias: input.alias,
      node: input.node,
      provenance: { digest: pulled.digest, expectedDigest: input.expectedDigest ?? null },
      golden,
      safety,
      safetyProbesRun: input.safetyProbes,
      resources: {
        ...resources,
        modelBytes: resources.modelBytes ?? pulled.sizeBytes,
        memoryCapPct: policy.memoryCapPct,
      },
      requestedBy: input.requestedBy,
    });
    status.risk = risk;
    status.riskTier = risk.tier;
    if (risk.tier === 'high') {
      throw new Rollback('deployModel', `risk tier high: ${risk.findings.map((f) => f.detail).join('; ')}`);
    }
    if (risk.tier === 'medium') {
      stage('awaiting-approval', `medium risk: waiting up to ${policy.approvalTimeout} for approve`);
      const answered = await condition(() => approval !== null || rollbackAsked !== null, policy.approvalTimeout);
      checkRollback();
      if (!answered || !approval) {
        throw new Rollback('deployModel', `no approve within ${policy.approvalTimeout} for a medium-risk version`);
      }
      status.approvedBy = (approval as ApproveDeploymentInput).by;
    }

    // Canary: add the variant at the first step's weight, with its undo pushed first so a rollback removes it.
    const first = policy.canarySteps[0] ?? 10;
    const canaryVariant: Variant = {
      name: 'canary',
      engine: engine.url,
      engineType: 'ollama',
      model: input.model,
      weight: first,
    };
    undo.push({
      step: 'route: remove the canary variant, stable back to 100',
      run: async () => {
        await updateRoute((r) =>
          r.variants.some((v) => v.name === 'canary')
            ? {
                ...r,
                variants: r.variants
                  .filter((v) => v.name !== 'canary')
                  .map((v) => ({ ...v, weight: v.name === 'stable' ? 100 : v.weight })),
              }
            : null,
        );
        return 'stable only';
      },
    });
    await updateRoute((r) => ({
      ...r,
      variants: [
        ...r.variants
          .filter((v) => v.name !== 'canary')
          .map((v) => (v.name === 'stable' ? { ...v, weight: 100 - first } : v)),
        canaryVariant,
      ],
    }));
    // Weight 0 is the quickest undo (one PATCH): pushed last, it runs first on rollback.
    undo.push({
      step: 'route: canary weight 0',
      run: async () => {
        await setWeights(0);
        return 'canary weight 0';
      },
    });
    status.weights = { stable: 100 - first, canary: first };
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.canaryWeight, value: first }]);

    const stepMs = parseDuration(policy.stepDuration);
    for (const [i, weight] of policy.canarySteps.entries()) {
      if (i > 0) await setWeights(weight);
      stage('canary', `canary step ${i + 1}/${policy.canarySteps.length} at ${weight}%`);
      const stepStart = Date.now();
      await condition(() => rollbackAsked !== null || promotion !== null, stepMs);
      checkRollback();
      if (promotion) break;

      // Judge the step over its own window; top up with synthetic requests while real traffic is too thin.
      let synthetic = 0;
      let analysis: CanaryAnalysis;
      let window: string;
      for (let round = 0; ; round++) {
        window = `${Math.max(1, Date.now() - stepStart)}ms`;
        const stats = await control.getStats({ alias: input.alias, window });
        analysis = analyseCanary(stats.variants.stable, stats.variants.canary, policy);
        if (analysis.verdict !== 'insufficient' || round >= 3 || synthetic >= policy.maxSyntheticPerStep) break;
        const need = Math.max(
          (policy.minSamples - analysis.samples.canary) / (weight / 100),
          (policy.minSamples - analysis.samples.stable) / ((100 - weight) / 100),
        );
        const count = Math.min(Math.ceil(need * 1.3) + 2, policy.maxSyntheticPerStep - synthetic);
        await traffic.sendSyntheticTraffic({
          alias: input.alias,
          prompts: golden.map((g) => g.prompt),
          count,
          concurrency: 4,
        });
        synthetic += count;
        checkRollback();
      }
      status.analyses.push({ step: i + 1, weight, at: now(), window, synthetic, analysis });
      if (analysis.verdict === 'fail') {
        throw new Rollback('canary analysis', `step ${i + 1} at ${weight}%: ${analysis.reasons.join('; ')}`);
      }
      if (analysis.verdict === 'insufficient') {
        throw new Rollback(
          'canary analysis',
          `step ${i + 1} at ${weight}%: not enough data (${analysis.reasons.join('; ')})`,
        );
      }
    }

    if (!promotion && !policy.autoPromote) {
      stage('awaiting-promotion', `canary passed at ${status.weights.canary}%: waiting for promote`);
      const answered = await condition(() => promotion !== null || rollbackAsked !== null, policy.approvalTimeout);
      checkRollback();
      if (!answered) throw new Rollback('deployModel', `no promote within ${policy.approvalTimeout}`);
    }

    stage('promoting', 'sending 100% to the new version');
    await setWeights(100);
    // The old version stays defined at weight 0 as `previous`, so going back is a weight change.
    await updateRoute((r) => ({
      ...r,
      variants: [
        { ...canaryVariant, name: 'stable', weight: 100 },
        ...r.variants.filter((v) => v.name === 'stable').map((v) => ({ ...v, name: 'previous', weight: 0 })),
      ],
    }));
    status.weights = { stable: 100, canary: 0 };
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.canaryWeight, value: 0 }]);
    status.promotedBy = (promotion as PromoteCanaryInput | null)?.by ?? 'auto (policy autoPromote)';
    status.outcome = 'promoted';
    undo.length = 0;
    stage('promoted', `${input.model} serves 100% of ${input.alias}`);
  } catch (err) {
    if (err instanceof Rollback) {
      await rollBack(err.by, err.reason, 'rolled-back');
    } else {
      status.error = (err as Error).message;
      await rollBack('deployModel', `failed: ${(err as Error).message}`, 'failed');
    }
  }
  finished = true;
  status.timings.endedAt = now();
  return status;
}
