/**
 * Model deployment. `deployModel` pulls a new model version onto a node (Ollama: a second tag on the same engine;
 * vLLM / llama.cpp: the engine's canary slot container), checks it fits (disk, GPU memory under the cap, no CPU
 * offload), validates it there (golden prompts, safety probes), rates its risk, then moves traffic to it in canary
 * steps through the router — analysing canary against stable in the same window every analysisInterval, so a breach
 * rolls back mid-step — and promotes it, keeping the old version loaded for a rollback window. Any rollback is a
 * saga that undoes each change in reverse, even when the workflow is cancelled, and records what could not be undone.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { z } from 'zod';
import type * as controlActivities from '../activities/control';
import type * as deployActivities from '../activities/deploy';
import type * as nodeActivities from '../activities/node';
import { analyseCanary, type CanaryAnalysis } from '../src/domain/canary';
import { parseDuration } from '../src/domain/durations';
import { assessRisk } from '../src/domain/risk';
import { checkLatencySlos } from '../src/domain/slo';
import { formatIssues, parseInput } from '../src/domain/validation';
import type { AliasRoute, Variant } from '../src/router/routes';
import {
  ApproveDeploymentInput,
  DeployModelInput,
  OLLAMA_MODEL,
  PromoteCanaryInput,
  RollbackDeploymentInput,
  SEARCH_ATTRIBUTES,
  approveDeploymentUpdate,
  getDeploymentStatusQuery,
  nodeTaskQueue,
  promoteCanaryUpdate,
  rollbackDeploymentUpdate,
  workflowIds,
  type DeploymentStatus,
  type DeployStage,
  type RollbackOutcome,
} from '../src/contracts';

type ControlActivities = ReturnType<typeof controlActivities.createControlActivities>;
type NodeActivities = ReturnType<typeof nodeActivities.createNodeActivities>;
type DeployActivities = ReturnType<typeof deployActivities.createDeployActivities>;

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

function failureMessage(err: unknown): string {
  const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
  return (cause as Error).message;
}

const refuse = (message: string): never => {
  throw ApplicationFailure.nonRetryable(message, 'Refused');
};

/** zod in an Update validator: a malformed input is refused with the field and the rule. */
function checkUpdateInput<S extends z.ZodType>(schema: S, input: unknown, name: string): void {
  const r = schema.safeParse(input);
  if (!r.success) refuse(`invalid ${name} input: ${formatIssues(r.error).join('; ')}`);
}

/**
 * Deploy a model version to an alias as a canary: pull → pre-flight → validate → risk → canary steps → promote →
 * rollback window, or roll back. ID `deploy:<node>:<alias>` (one at a time; start with conflict policy FAIL).
 * Updates `approve`, `promote`, `rollback`; Query `status`. Returns the audit record.
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
    revision: input.revision ?? null,
    stage: 'starting',
    outcome: 'in-progress',
    digest: null,
    expectedDigest: input.expectedDigest ?? null,
    stable: null,
    canary: null,
    weights: { stable: 100, canary: 0 },
    pull: null,
    preflight: { disk: null, memory: null, offload: null },
    validation: [],
    latency: null,
    riskTier: null,
    risk: null,
    reports: null,
    analyses: [],
    live: null,
    requestedBy: input.requestedBy,
    approvedBy: null,
    promotedBy: null,
    rollbackWindowEndsAt: null,
    rollback: null,
    undo: [],
    cleanup: [],
    error: null,
    timings: { startedAt: now(), endedAt: null, stages: [] },
  };
  let finished = false;
  let windowClosed = false;
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
        checkUpdateInput(ApproveDeploymentInput, a, 'approve');
        if (finished) refuse(`the deployment has finished (${status.outcome})`);
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
        checkUpdateInput(PromoteCanaryInput, p, 'promote');
        if (finished) refuse(`the deployment has finished (${status.outcome})`);
        if (rollbackAsked || status.stage === 'rolling-back') refuse('the deployment is rolling back');
        if (status.stage === 'rollback-window' || status.stage === 'promoting') refuse('already promoted');
        if (status.stage !== 'canary' && status.stage !== 'awaiting-promotion') {
          refuse(`no canary is running (stage ${status.stage})`);
        }
        const latest = status.live?.analysis ?? status.analyses.at(-1)?.analysis;
        if (latest?.verdict === 'fail' && !p.force) {
          refuse(`the canary analysis is failing (${latest.reasons.join('; ')}); send force: true to override`);
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
        checkUpdateInput(RollbackDeploymentInput, r, 'rollback');
        if (finished) refuse(`the deployment has finished (${status.outcome})`);
        if (windowClosed) refuse('the rollback window has closed: deploy the old version again to go back');
      },
    },
  );

  const stage = (s: DeployStage, details: string): void => {
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
  // Not retried: a retry would send the whole batch again and overshoot maxSyntheticPerStep; the next analysis round
  // sends what is still missing.
  const traffic = proxyActivities<ControlActivities>({ startToCloseTimeout: '5m', retry: { maximumAttempts: 1 } });
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
    // A stalled download (or a killed worker) fails over to a retry, which resumes from the partial blobs.
    heartbeatTimeout: input.pullHeartbeatTimeout,
    retry: { maximumAttempts: 10, initialInterval: '1s', maximumInterval: '30s', nonRetryableErrorTypes: ['DiskFull'] },
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
  /** Does any variant of any route (read from the router now) satisfy `pred`? */
  const anyVariant = async (pred: (v: Variant) => boolean): Promise<boolean> => {
    const doc = await control.getRoutes();
    return Object.values(doc.routes).some((r) => r.variants.some(pred));
  };
  /** Does any route send traffic (weight > 0) to this engine URL? */
  const routedAnywhere = (url: string): Promise<boolean> => anyVariant((v) => v.engine === url && v.weight > 0);
  /** Does any route still name this model on this engine (at any weight)? */
  const modelRouted = (url: string, model: string): Promise<boolean> =>
    anyVariant((v) => v.engine === url && v.model === model);

  // Saga: each step that changed the world pushes its undo; a rollback runs them in reverse. It runs in a
  // non-cancellable scope, so cancelling the workflow still restores the routes.
  const undo: { step: string; run: () => Promise<string> }[] = [];
  const runUndo = async (): Promise<void> => {
    for (const u of undo.reverse()) {
      try {
        status.undo.push({ step: u.step, ok: true, detail: await u.run() });
      } catch (err) {
        status.undo.push({ step: u.step, ok: false, detail: failureMessage(err) });
      }
    }
    undo.length = 0;
  };
  const rollBack = (by: string, reason: string, outcome: RollbackOutcome): Promise<void> =>
    CancellationScope.nonCancellable(async () => {
      status.rollback = { by, reason };
      status.live = null;
      stage('rolling-back', `rolling back: ${reason}`);
      await runUndo();
      status.outcome = outcome;
      stage(outcome, `${outcome}: ${reason}`);
    });
  const checkRollback = (): void => {
    if (rollbackAsked) throw new Rollback(rollbackAsked.by, `rollback requested: ${rollbackAsked.reason}`);
  };

  let cancelled: unknown = null;
  try {
    const facts = await control.nodeFacts({ node: input.node });
    const engine = facts.engines.find((e) => e.name === input.engine);
    if (!engine) {
      throw ApplicationFailure.nonRetryable(
        `engine: must be one of ${facts.engines.map((e) => e.name).join(', ')} (got "${input.engine}")`,
        'ValidationError',
      );
    }
    if (engine.type === 'ollama' && !OLLAMA_MODEL.test(input.model)) {
      throw ApplicationFailure.nonRetryable(
        `model: must be name:tag for an Ollama engine, e.g. qwen2.5:0.5b (got "${input.model}")`,
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
    if (engine.type === 'ollama' && stableVariant.engine === engine.url && stableVariant.model === input.model) {
      // Pulling the same tag would overwrite the serving model in place: no canary, and nothing to roll back to.
      throw ApplicationFailure.nonRetryable(
        `model: ${input.model} already serves ${input.alias} on ${engine.name}; deploy a new tag (pin it with expectedDigest)`,
        'ValidationError',
      );
    }

    // Where the new version runs. Ollama: the same engine, a second tag. vLLM / llama.cpp: the half of the engine's
    // blue/green pair that the stable route does not point at.
    let slot = engine;
    if (engine.type !== 'ollama') {
      const partner = facts.engines.find((e) => e.name === engine.canarySlot);
      if (!partner) {
        throw ApplicationFailure.nonRetryable(
          `engine: ${engine.name} is ${engine.type} and has no canarySlot in gpuops.yaml (one model per container: the canary needs its own)`,
          'ValidationError',
        );
      }
      slot = stableVariant.engine === partner.url ? engine : partner;
      if (stableVariant.engine !== engine.url && stableVariant.engine !== partner.url) {
        throw ApplicationFailure.nonRetryable(
          `alias ${input.alias}: its stable variant (${stableVariant.engine}) is on neither ${engine.name} nor its slot ${partner.name}`,
          'ValidationError',
        );
      }
    }
    const slotEngine = slot.name;
    if (slot.type !== 'ollama') {
      const users = Object.entries(routes.routes)
        .filter(([, r]) => r.variants.some((v) => v.engine === slot.url && v.weight > 0))
        .map(([alias]) => alias);
      if (users.length > 0) {
        throw ApplicationFailure.nonRetryable(
          `engine: the canary slot ${slot.name} serves ${users.join(', ')}; free it (route those aliases elsewhere) first`,
          'ValidationError',
        );
      }
    }
    if (slot.type !== 'ollama' && input.expectedDigest) {
      throw ApplicationFailure.nonRetryable(
        `expectedDigest: pins an Ollama manifest digest; for ${slot.type} pin the HF commit with revision (40 hex)`,
        'ValidationError',
      );
    }
    // What provenance counts as pinned: an Ollama digest, or a full HF commit id as the revision.
    const pinned =
      slot.type === 'ollama'
        ? (input.expectedDigest ?? null)
        : input.revision && /^[0-9a-f]{40}$/.test(input.revision)
          ? input.revision
          : null;

    stage('preflight', 'checking the model stores have room');
    checkRollback();
    const disk = await node.preflightDisk({ minFreeGiB: policy.minFreeDiskGiB });
    status.preflight.disk = disk;
    if (!disk.ok) throw new Rollback('pre-flight', `disk: ${disk.detail}`);

    let servedModel = input.model;
    if (slot.type === 'ollama') {
      stage('pulling', `pulling ${input.model}`);
      checkRollback();
      const pulled = await modelPull.pullModel({
        engine: slotEngine,
        model: input.model,
        minFreeGiB: policy.minFreeDiskGiB,
      });
      status.digest = pulled.digest;
      status.pull = {
        resumedFromBytes: pulled.resumedFromBytes,
        alreadyPresent: pulled.alreadyPresent,
        sizeBytes: pulled.sizeBytes,
      };
      // The pulled model stays in the store unless the policy says remove (and this deployment pulled it).
      if (policy.removePulledOnRollback && !pulled.alreadyPresent) {
        undo.push({
          step: `delete ${input.model} from ${slotEngine}`,
          run: async () => ((await node.deleteModel({ engine: slotEngine, model: input.model })) ? 'deleted' : 'gone'),
        });
      }
      undo.push({
        step: `unload ${input.model} from ${slotEngine}`,
        run: async () => {
          if (await modelRouted(slot.url, input.model)) return `kept: a route still uses ${input.model}`;
          await node.unloadModel({ engine: slotEngine, model: input.model });
          return 'unloaded';
        },
      });
    } else {
      stage('loading-canary-slot', `starting ${slotEngine} with ${input.model}`);
      checkRollback();
      // vLLM opens its port only once the model is loaded: pause the watcher for the slot, or it would "recover"
      // (restart) the container mid-load.
      const pause = { node: input.node, engine: slotEngine, by: actor };
      undo.push({
        step: `end the watcher's maintenance window on ${slotEngine}`,
        run: async () =>
          (await control.setWatchMaintenance({ ...pause, reason: 'deployModel done', clear: true })).detail,
      });
      await control.setWatchMaintenance({
        ...pause,
        reason: `deployModel loading ${input.model}`,
        duration: input.pullTimeout,
      });
      undo.push({
        step: `stop the canary slot ${slotEngine}`,
        run: async () => {
          // Never stop a container a route still sends traffic to (e.g. an earlier undo step failed).
          if (await routedAnywhere(slot.url)) return `kept: a route still sends traffic to ${slotEngine}`;
          await node.standbyEngine({ engine: slotEngine });
          return 'standby';
        },
      });
      const loaded = await modelPull.loadCanarySlot({
        engine: slotEngine,
        model: input.model,
        ...(input.revision ? { revision: input.revision } : {}),
      });
      status.digest = loaded.revision;
      servedModel = loaded.model;
      await control.setWatchMaintenance({ ...pause, reason: 'canary slot loaded', clear: true });
    }
    status.canary = { engine: slotEngine, url: slot.url, model: servedModel };
    const norm = (d: string): string => d.replace(/^sha256:/, '').toLowerCase();
    if (input.expectedDigest && (!status.digest || norm(status.digest) !== norm(input.expectedDigest))) {
      throw new Rollback('pre-flight', `digest ${status.digest ?? '(none)'} is not the pinned ${input.expectedDigest}`);
    }

    stage('preflight', `checking ${input.model} fits GPU memory under the ${policy.memoryCapPct}% cap`);
    checkRollback();
    const memory = await node.preflightGpuMemory({
      engine: slotEngine,
      model: servedModel,
      memoryCapPct: policy.memoryCapPct,
    });
    status.preflight.memory = memory;
    if (!memory.fits) throw new Rollback('pre-flight', `GPU memory: ${memory.detail}`);

    stage('validating', 'golden prompts and safety probes on the node');
    checkRollback();
    const check = { engine: slotEngine, model: servedModel };
    const golden = await node.runGoldenPrompts(policy.golden ? { ...check, golden: policy.golden } : check);
    // The golden prompts loaded the model: did all of it land in VRAM?
    const offload = await node.checkModelOffload(check);
    status.preflight.offload = { cpuPct: offload.cpuPct, detail: offload.detail };
    if (offload.cpuPct > 0) throw new Rollback('pre-flight', `CPU offload: ${offload.detail}`);
    const slo = checkLatencySlos(golden, {
      ttftP95Ms: policy.validationTtftP95Ms,
      minTokensPerSecond: policy.validationMinTokensPerSecond,
    });
    status.latency = slo;
    if (!slo.ok) {
      status.validation = golden;
      throw new Rollback('validation', slo.detail);
    }
    const safety = input.safetyProbes ? await node.runSafetyProbes(check) : [];
    const resources = await node.checkModelResources(check);
    const provenance = await node.modelProvenance(check);
    status.validation = [...golden, ...safety];

    stage('assessing-risk', 'rating risk');
    const risk = assessRisk({
      model: input.model,
      alias: input.alias,
      node: input.node,
      provenance: {
        digest: status.digest,
        expectedDigest: pinned,
        source: provenance.source,
        allowedSources: policy.allowedSources,
        license: provenance.license,
      },
      golden,
      safety,
      safetyProbesRun: input.safetyProbes,
      resources: {
        ...resources,
        modelBytes: resources.modelBytes ?? status.pull?.sizeBytes ?? null,
        memoryCapPct: policy.memoryCapPct,
      },
      requestedBy: input.requestedBy,
    });
    status.risk = risk;
    status.riskTier = risk.tier;
    status.reports = await control.writeRiskReport({ workflowId: info.workflowId, runId: info.runId, report: risk });
    if (risk.tier === 'high') {
      throw new Rollback(
        'risk assessment',
        `risk tier high: ${risk.findings
          .filter((f) => f.tier === 'high')
          .map((f) => f.detail)
          .join('; ')}`,
      );
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

    checkRollback();
    // Canary: add the variant at the first step's weight, with its undo pushed first so a rollback removes it.
    const first = policy.canarySteps[0] ?? 10;
    const canaryVariant: Variant = {
      name: 'canary',
      engine: slot.url,
      engineType: slot.type,
      model: servedModel,
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
    const intervalMs = parseDuration(policy.analysisInterval);
    steps: for (const [i, weight] of policy.canarySteps.entries()) {
      if (i > 0) await setWeights(weight);
      stage('canary', `canary step ${i + 1}/${policy.canarySteps.length} at ${weight}%`);
      const stepStart = Date.now();
      const deadline = stepStart + stepMs;
      let synthetic = 0;
      let failures = 0;
      let starvedRounds = 0;
      let analyseNow = false;
      // Analyse every interval over the step's own window: a breach rolls back at the next analysis, not at the
      // end of the step. Top up with synthetic requests from the golden set while real traffic is too thin.
      for (;;) {
        const wait = analyseNow
          ? 0
          : Date.now() >= deadline
            ? intervalMs
            : Math.min(intervalMs, Math.max(0, deadline - Date.now()));
        analyseNow = false;
        if (wait > 0) await condition(() => rollbackAsked !== null || promotion !== null, wait);
        checkRollback();
        if (promotion) break steps;
        const window = `${Math.max(1, Date.now() - stepStart)}ms`;
        const stats = await control.getStats({ alias: input.alias, window });
        const analysis: CanaryAnalysis = analyseCanary(stats.variants.stable, stats.variants.canary, policy);
        failures = analysis.verdict === 'fail' ? failures + 1 : 0;
        const record = { step: i + 1, weight, at: now(), window, synthetic, analysis };
        status.live = { ...record, consecutiveFailures: failures };
        if (failures >= policy.failureLimit) {
          status.analyses.push(record);
          throw new Rollback('canary analysis', `step ${i + 1} at ${weight}%: ${analysis.reasons.join('; ')}`);
        }
        const stepOver = Date.now() >= deadline;
        if (stepOver && analysis.verdict === 'pass') {
          status.analyses.push(record);
          break;
        }
        if (analysis.verdict !== 'insufficient') continue;
        if (stepOver && ++starvedRounds > 3) {
          status.analyses.push(record);
          throw new Rollback(
            'canary analysis',
            `step ${i + 1} at ${weight}%: not enough data (${analysis.reasons.join('; ')})`,
          );
        }
        const need = Math.max(
          (policy.minSamples - analysis.samples.canary) / (weight / 100),
          (policy.minSamples - analysis.samples.stable) / ((100 - weight) / 100),
        );
        const count = Math.min(Math.ceil(need * 1.3) + 2, policy.maxSyntheticPerStep - synthetic);
        // Nothing to top up (budget spent, or the window is short of something traffic cannot fix): wait for more.
        if (!(need > 0) || count <= 0) continue;
        await traffic.sendSyntheticTraffic({
          alias: input.alias,
          prompts: golden.map((g) => g.prompt),
          count,
          concurrency: 4,
          ...(slot.type === 'ollama' ? {} : { api: 'openai' as const }),
        });
        synthetic += count;
        analyseNow = true;
      }
    }
    status.live = null;

    if (!promotion && !policy.autoPromote) {
      stage('awaiting-promotion', `canary passed at ${status.weights.canary}%: waiting for promote`);
      const answered = await condition(() => promotion !== null || rollbackAsked !== null, policy.approvalTimeout);
      checkRollback();
      if (!answered) throw new Rollback('deployModel', `no promote within ${policy.approvalTimeout}`);
    }

    stage('promoting', 'sending 100% to the new version');
    await setWeights(100);
    // The old version stays defined at weight 0 as `previous`, so going back is a route switch.
    // Idempotent: a retry after a PUT that landed (but whose answer was lost) finds the route promoted already.
    await updateRoute((r) =>
      r.variants.some((v) => v.name === 'stable' && v.engine === canaryVariant.engine && v.model === servedModel)
        ? null
        : {
            ...r,
            variants: [
              { ...canaryVariant, name: 'stable', weight: 100 },
              ...r.variants.filter((v) => v.name === 'stable').map((v) => ({ ...v, name: 'previous', weight: 0 })),
              ...r.variants.filter((v) => !['stable', 'canary', 'previous'].includes(v.name)),
            ],
          },
    );
    status.weights = { stable: 100, canary: 0 };
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.canaryWeight, value: 0 }]);
    status.promotedBy = (promotion as PromoteCanaryInput | null)?.by ?? 'auto (policy autoPromote)';
    const old = stableVariant;
    const oldEngine = facts.engines.find((e) => e.url === old.engine);

    // From here a rollback is a route switch back to the old version, then the new one is unloaded / stopped.
    undo.length = 0;
    if (slot.type === 'ollama') {
      undo.push({
        step: `unload ${servedModel} from ${slotEngine}`,
        run: async () => {
          if (await modelRouted(slot.url, servedModel)) return `kept: another route uses ${servedModel}`;
          await node.unloadModel({ engine: slotEngine, model: servedModel });
          return 'unloaded';
        },
      });
    } else {
      undo.push({
        step: `stop ${slotEngine} (new version)`,
        run: async () => {
          if (await routedAnywhere(slot.url)) return `kept: a route still sends traffic to ${slotEngine}`;
          await node.standbyEngine({ engine: slotEngine });
          return 'standby';
        },
      });
    }
    undo.push({
      step: `route: ${old.model} back to stable at 100, ${servedModel} removed`,
      run: async () => {
        await updateRoute((r) => {
          const prev = r.variants.find((v) => v.name === 'previous');
          if (!prev) return null;
          return {
            ...r,
            variants: [
              { ...prev, name: 'stable', weight: 100 },
              ...r.variants.filter((v) => v.name !== 'previous' && v.name !== 'stable' && v.name !== 'canary'),
            ],
          };
        });
        status.weights = { stable: 100, canary: 0 };
        return `routes switched back to ${old.model}`;
      },
    });

    // Keep the old version warm through the window: the rollback must not be a cold load.
    const windowMs = parseDuration(policy.rollbackWindow);
    if (oldEngine?.type === 'ollama') {
      await node.keepModelLoaded({ engine: oldEngine.name, model: old.model, keepAlive: -1 });
    }
    status.rollbackWindowEndsAt = new Date(Date.now() + windowMs).toISOString();
    stage(
      'rollback-window',
      `${input.model} serves 100%; ${old.model} stays loaded until ${status.rollbackWindowEndsAt} for a rollback`,
    );
    try {
      await condition(() => rollbackAsked !== null, windowMs);
    } catch (err) {
      // Cancelling during the window ends it early: the promotion stands (send rollback to go back).
      if (!isCancellation(err)) throw err;
      cancelled = err;
    }
    checkRollback();
    windowClosed = true;

    // The window is over: drop the `previous` route and free the old version's memory (unless another route uses it).
    await CancellationScope.nonCancellable(async () => {
      undo.length = 0;
      const tidy = async (step: string, run: () => Promise<string>): Promise<void> => {
        try {
          status.cleanup.push({ step, ok: true, detail: await run() });
        } catch (err) {
          status.cleanup.push({ step, ok: false, detail: failureMessage(err) });
        }
      };
      await tidy('route: remove the previous variant', async () => {
        await updateRoute((r) =>
          r.variants.some((v) => v.name === 'previous')
            ? { ...r, variants: r.variants.filter((v) => v.name !== 'previous') }
            : null,
        );
        return 'removed';
      });
      if (!oldEngine) {
        status.cleanup.push({
          step: `unload ${old.model}`,
          ok: false,
          detail: `${old.engine} is not an engine of ${input.node}: unload it there`,
        });
      } else {
        await tidy(`unload ${old.model} from ${oldEngine.name}`, async () => {
          if (await modelRouted(old.engine, old.model)) return `kept: another route uses ${old.model}`;
          if (oldEngine.type === 'ollama') {
            await node.unloadModel({ engine: oldEngine.name, model: old.model });
            return 'unloaded';
          }
          await node.standbyEngine({ engine: oldEngine.name });
          return `${oldEngine.name} stopped (standby slot)`;
        });
      }
    });
    status.rollbackWindowEndsAt = null;
    status.outcome = 'promoted';
    stage('promoted', `${input.model} serves 100% of ${input.alias}`);
  } catch (err) {
    if (err instanceof Rollback) {
      await rollBack(err.by, err.reason, 'rolled-back');
    } else if (isCancellation(err)) {
      cancelled = err;
      await rollBack('deployModel', 'the workflow was cancelled', 'cancelled');
    } else {
      status.error = failureMessage(err);
      await rollBack('deployModel', `failed: ${status.error}`, 'failed');
    }
  }
  finished = true;
  status.timings.endedAt = now();
  // A cancelled deployment ends as Cancelled in Temporal, after its saga ran; the record stays in the status query.
  if (cancelled) throw cancelled;
  return status;
}
