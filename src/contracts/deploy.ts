/**
 * deployModel's contract: its input, Updates, Query, stages and outcomes, and the audit record it returns.
 * Workflow-safe (zod and src/domain only): the workflow, the CLI and the hooks import it alike.
 */
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import { z } from 'zod';
import type { CanaryAnalysis, CanaryVerdict, VariantMeasure } from '../domain/canary';
import { DeployPolicySchema } from '../domain/deploy-policy';
import type { MemoryPreflight } from '../domain/preflight';
import type { PromptResult, RiskReport, RiskTier } from '../domain/risk';
import { DurationSchema, commandArg, gpuopsId, noDotDotSegment } from '../domain/schemas';
import type { SloResult } from '../domain/slo';
import { workflowContract } from './common';

const nodeId = gpuopsId('a node id');
const duration = DurationSchema;

/** The deployment policy (same schema as gpuops.yaml's `policies.<name>`): a config policy or overrides. */
export const DeployPolicyInput = DeployPolicySchema;

// name:tag, optionally under a registry host (`registry.example:5000/team/name:tag`), as Ollama itself accepts.
export const OLLAMA_MODEL = /^(?:[A-Za-z0-9.-]+(?::\d+)?\/)?[A-Za-z0-9][A-Za-z0-9._/-]*:[A-Za-z0-9][A-Za-z0-9._-]*$/;

// A model reaches the engine's command line (vLLM --model, llama.cpp -m/-hf) and, for a .gguf, a path on the node.
const ModelRef = noDotDotSegment(
  commandArg(
    z
      .string()
      .max(300)
      .regex(/^[A-Za-z0-9][A-Za-z0-9._:/-]*$/, {
        message: 'must be a model reference (name:tag, org/repo or a .gguf)',
      }),
  ),
);
const Revision = noDotDotSegment(
  z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$/, { message: 'must be a git revision (commit, branch or tag)' }),
);
const Digest = z.string().regex(/^(sha256:)?[0-9a-f]{64}$/, { message: 'must be a sha256 digest (64 hex)' });

/** An engine of the node as an undo names it: its name and URL (a route names an engine by its URL). */
const EngineRef = z.strictObject({ name: z.string(), url: z.string() });

/**
 * An undo of the rollback saga as data, so that it crosses continue-as-new: the run that resumes turns each back
 * into the same undo (workflows/deploy/undo.ts).
 */
export const DeployUndo = z.discriminatedUnion('undo', [
  z.strictObject({ undo: z.literal('delete-model'), engine: EngineRef, model: z.string() }),
  z.strictObject({ undo: z.literal('unload-model'), engine: EngineRef, model: z.string(), kept: z.string() }),
  z.strictObject({ undo: z.literal('end-slot-maintenance'), engine: EngineRef }),
  z.strictObject({ undo: z.literal('stop-slot'), engine: EngineRef }),
  z.strictObject({ undo: z.literal('remove-canary') }),
  z.strictObject({ undo: z.literal('canary-weight-0') }),
]);
export type DeployUndo = z.infer<typeof DeployUndo>;

/** Where a canary step stands between two analysis rounds: the step (0-based), when it began, its counters. */
export const CanaryPosition = z.strictObject({
  stage: z.literal('canary'),
  step: z.int().min(0),
  /** The step's start (workflow clock, ms since the epoch): its window and deadline run from here. */
  startedAt: z.number(),
  synthetic: z.int().min(0),
  failures: z.int().min(0),
  starved: z.int().min(0),
  /** The last round topped up synthetic traffic: the next analysis runs at once. */
  analyseNow: z.boolean(),
});
export type CanaryPosition = z.infer<typeof CanaryPosition>;

/** Where the shadow stage stands between two analysis rounds (its record is the carried status's `shadow`). */
export const ShadowPosition = z.strictObject({
  stage: z.literal('shadow'),
  /** The stage's start (workflow clock, ms since the epoch): its window and `duration` run from here. */
  startedAt: z.number(),
  /** Rounds after `duration` still short of pairs. */
  starved: z.int().min(0),
  /** The last round sent synthetic traffic: the next analysis runs at once. */
  analyseNow: z.boolean(),
});
export type ShadowPosition = z.infer<typeof ShadowPosition>;

const isObject = (v: unknown): boolean => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * What a deployment carries into the run it continues as new: its record so far, what the finished stages answered
 * (the plan, the served model name, the golden results), the saga's undos as data, and the position to resume at
 * (`at`: a stage and its state; each stage that can continue as new adds its own).
 */
export const DeployResume = z.strictObject({
  /** The audit record so far (rounds, analyses, stage, weights, timings): the `status` query goes on from it. */
  status: z.custom<DeploymentStatus>(isObject, { message: 'must be a deployment record' }),
  /** The plan stage's answer (workflows/deploy/stages/plan.ts Plan). */
  plan: z.record(z.string(), z.unknown()),
  served: z.string(),
  golden: z.array(z.custom<PromptResult>(isObject, { message: 'must be a prompt result' })),
  /** The saga's undos, in the order they were added. */
  undo: z.array(DeployUndo),
  at: z.discriminatedUnion('stage', [ShadowPosition, CanaryPosition]),
  /** Runs this deployment continued as new so far (1 after the first). */
  runs: z.int().min(1),
});
export type DeployResume = z.infer<typeof DeployResume>;

export const DeployModelInput = z.strictObject({
  node: nodeId,
  /** Router alias whose `stable` variant the new version canaries against. */
  alias: noDotDotSegment(
    z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/, { message: 'must be a router alias name' }),
  ),
  /** Engine name on the node (Ollama: the canary is a second tag on it; vLLM / llama.cpp: its canary slot). */
  engine: gpuopsId('an engine name'),
  /** Ollama `name:tag`; vLLM an HF repo `org/name`; llama.cpp an HF repo or a .gguf file. */
  model: ModelRef,
  /** HF revision (commit, branch or tag) for vLLM / llama.cpp; recorded as the digest. */
  revision: Revision.optional(),
  /** Pin the digest (64 hex, optionally `sha256:`): a pulled model with another digest is rolled back. */
  expectedDigest: Digest.optional(),
  policy: DeployPolicyInput.default(DeployPolicyInput.parse({})),
  /** Run the safety probes (skipping them makes the risk at least medium). */
  safetyProbes: z.boolean().default(true),
  /** Who asked (CI job, user); shown in the audit record. */
  requestedBy: z.string().min(1).max(200).default('unknown'),
  /** How long a pull may take in all. */
  pullTimeout: duration.default('2h'),
  /** A pull (or slot load) that reports no progress for this long is retried; the retry resumes the download. */
  pullHeartbeatTimeout: duration.default('30s'),
  /** How long a node activity may wait for the node's worker to pick it up. */
  pickupTimeout: duration.default('30s'),
  /**
   * History events one run may reach before the canary continues as new (between analysis rounds, carrying the
   * deployment in `resume`); Temporal's own continueAsNewSuggested also continues it. Keeps a canary of any length
   * under Temporal's 51,200-event limit.
   */
  maxHistoryEvents: z.int().min(100).max(40_000).default(10_000),
  /** Set by the deployment itself when it continues as new: where the next run resumes. Never set it by hand. */
  resume: DeployResume.optional(),
});
export type DeployModelInput = z.input<typeof DeployModelInput>;

const Who = z.string().trim().min(1, { message: 'must say who' }).max(200);

/**
 * Which deployment the sender of an Update means: the model (and its digest or revision) and/or the run it started.
 * The ID `deploy:<node>:<alias>` names the alias, not the deployment: a CI job whose start joined someone else's run
 * (the `temporal` CLI joins a running execution of the ID) would otherwise steer that one. The validator refuses the
 * Update, naming what runs, when the running deployment is not the expected one.
 */
export const DeploymentExpectation = z
  .strictObject({
    /** The model the deployment deploys (its input `model`). */
    model: ModelRef.optional(),
    /** Its digest: the pulled one, or the pinned `expectedDigest` until the pull has finished. */
    digest: Digest.optional(),
    /** Its HF revision (input `revision`). */
    revision: Revision.optional(),
    /** The run ID the sender started (the first run's, or the current one's after a continue-as-new). */
    runId: z
      .string()
      .regex(/^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$/, {
        message: 'must be a workflow run ID (a UUID)',
      })
      .optional(),
  })
  .refine((e) => Object.values(e).some((v) => v !== undefined), {
    message: 'must name at least one of model, digest, revision, runId',
  });
export type DeploymentExpectation = z.input<typeof DeploymentExpectation>;

/** Input of the `approve` Update on deployModel: a human accepts a medium-risk version for canary. */
export const ApproveDeploymentInput = z.strictObject({
  by: Who,
  comment: z.string().max(2000).optional(),
  expect: DeploymentExpectation.optional(),
});
/** Input of the `promote` Update on deployModel: send 100% of the alias to the new version now (`force`: even though the last analysis did not pass). */
export const PromoteCanaryInput = z.strictObject({
  by: Who,
  force: z.boolean().optional(),
  comment: z.string().max(2000).optional(),
  expect: DeploymentExpectation.optional(),
});
/** Input of the `rollback` Update on deployModel: abandon the deployment and restore the stable route. */
export const RollbackDeploymentInput = z.strictObject({
  by: Who,
  reason: z.string().trim().min(1, { message: 'must say why' }).max(2000),
  expect: DeploymentExpectation.optional(),
});
export type ApproveDeploymentInput = z.input<typeof ApproveDeploymentInput>;
export type PromoteCanaryInput = z.input<typeof PromoteCanaryInput>;
export type RollbackDeploymentInput = z.input<typeof RollbackDeploymentInput>;

/** Stages of a deployment, in the order they can happen (the `GpuopsStage` search attribute holds one). */
export const DEPLOY_STAGES = [
  'starting',
  'preflight',
  'pulling',
  'loading-canary-slot',
  'validating',
  'assessing-risk',
  'awaiting-approval',
  'shadow',
  'canary',
  'awaiting-promotion',
  'promoting',
  'rollback-window',
  'promoted',
  'rolling-back',
  'rolled-back',
  'failed',
  'cancelled',
] as const;
export type DeployStage = (typeof DEPLOY_STAGES)[number];

/** How a deployment ended (in-progress while it runs). */
export const DEPLOY_OUTCOMES = ['in-progress', 'promoted', 'rolled-back', 'failed', 'cancelled'] as const;
export type DeployOutcome = (typeof DEPLOY_OUTCOMES)[number];
/** The outcomes a rollback ends in. */
export type RollbackOutcome = Exclude<DeployOutcome, 'in-progress' | 'promoted'>;

/** One canary step's analysis, as the audit record and the `status` query keep it. */
export interface CanaryStepRecord {
  step: number;
  weight: number;
  at: string;
  window: string;
  /** Synthetic requests sent through the router for this step (0 when real traffic sufficed). */
  synthetic: number;
  analysis: CanaryAnalysis;
}

/** One analysis round of a canary step (every analysisInterval): what each side measured and the verdict. */
export interface CanaryRound {
  /** 1-based across the deployment; a record keeps the last MAX_CANARY_ROUNDS, so the first kept may be > 1. */
  n: number;
  step: number;
  weight: number;
  at: string;
  verdict: CanaryVerdict;
  /** Null when the variant had no request in the window. */
  stable: VariantMeasure | null;
  canary: VariantMeasure | null;
}

/** Rounds a record keeps (the newest): a long step analysed every few seconds must not grow the record unbounded. */
export const MAX_CANARY_ROUNDS = 500;

/** One analysis round of the shadow stage: canary vs stable over the same mirrored requests. */
export interface ShadowRound {
  /** 1-based; a record keeps the last MAX_CANARY_ROUNDS. */
  n: number;
  at: string;
  verdict: CanaryVerdict;
  /** Mirrored pairs in the window, and requests picked for mirroring but dropped at the concurrency cap. */
  pairs: number;
  dropped: number;
  /**
   * Requests picked for mirroring but not sent, by reason (failover, api, drained, shared_engine), and copies that
   * ended without a pair, by reason (shadow_removed, drained, closed, client_abort; `deadline` only in older records:
   * a copy past its deadline is now the canary's timeout in its pair); see the router's shadow mirroring in README.
   * Absent in records written before they were counted.
   */
  skipped?: Partial<Record<string, number>>;
  aborted?: Partial<Record<string, number>>;
  /** What stable answered the mirrored requests (what their clients got), and what the canary answered them. */
  stable: VariantMeasure | null;
  canary: VariantMeasure | null;
  /** Mean output tokens of the completed answers on each side (null: none completed). */
  answerTokens: { stable: number | null; canary: number | null };
}

/** The shadow stage (policy.shadow) as the record and the `status` query keep it. */
export interface ShadowRecord {
  percent: number;
  maxConcurrent: number;
  startedAt: string;
  endedAt: string | null;
  /** running while it mirrors; pass: the canary went on to its steps; fail / starved: rolled back. */
  verdict: 'running' | 'pass' | 'fail' | 'starved';
  /** Synthetic requests sent through the router (they are mirrored like real ones). */
  synthetic: number;
  /** The latest analysis (the one that settled the stage once it ended). */
  analysis: CanaryAnalysis | null;
  /** Failing analyses in a row; policy.failureLimit of them roll back. */
  consecutiveFailures: number;
  rounds: ShadowRound[];
}

/** The analysis of the running canary step, refreshed every analysisInterval. */
export interface LiveCanaryAnalysis extends CanaryStepRecord {
  /** Failing analyses in a row; policy.failureLimit of them roll back. */
  consecutiveFailures: number;
}

/** What the `status` query on deployModel answers, and (finished) what deployModel returns: the audit record. */
export interface DeploymentStatus {
  workflowId: string;
  node: string;
  alias: string;
  engine: string;
  model: string;
  /** HF revision (vLLM / llama.cpp), when given. */
  revision: string | null;
  stage: DeployStage;
  outcome: DeployOutcome;
  digest: string | null;
  expectedDigest: string | null;
  /** The model the alias served before (null until read from the router). */
  stable: { model: string; engine: string } | null;
  /** Where the new version runs: the engine (Ollama: the same one, second tag; vLLM / llama.cpp: the canary slot). */
  canary: { engine: string; url: string; model: string } | null;
  weights: { stable: number; canary: number };
  pull: { resumedFromBytes: number; alreadyPresent: boolean; sizeBytes: number | null } | null;
  preflight: {
    disk: { ok: boolean; detail: string } | null;
    memory: MemoryPreflight | null;
    /** After the first load: share of the model Ollama runs on the CPU (refused when > 0). */
    offload: { cpuPct: number; detail: string } | null;
  };
  validation: PromptResult[];
  /** Validation latency SLOs over the golden prompts (TTFT p95, tokens/s). */
  latency: SloResult | null;
  riskTier: RiskTier | null;
  risk: RiskReport | null;
  /**
   * Report files on the control host: the risk report (JSON + Markdown, once the risk was assessed) and the
   * deployment page (HTML: canary vs stable per round, stages, risk findings; written when the deployment ends).
   */
  reports: { json?: string; markdown?: string; html?: string } | null;
  /** The last analysis of each canary step (the one that settled it). */
  analyses: CanaryStepRecord[];
  /** Every analysis round of the canary, oldest first (the newest MAX_CANARY_ROUNDS); the deployment page charts them. */
  rounds: CanaryRound[];
  live: LiveCanaryAnalysis | null;
  /** The shadow stage, when the policy has one (absent otherwise). */
  shadow?: ShadowRecord;
  requestedBy: string;
  approvedBy: string | null;
  promotedBy: string | null;
  /** While the old version stays loaded after promotion, ISO time; rollback until then is a route switch. */
  rollbackWindowEndsAt: string | null;
  /**
   * While the deployment waits (awaiting-approval, awaiting-promotion: for the Update, else it rolls back;
   * rollback-window: for the window to close), when the wait ends, ISO time; null in every other stage.
   */
  waitingUntil: string | null;
  /** Who or what rolled back, and why (a breach, a refused risk tier, an operator). */
  rollback: { by: string; reason: string } | null;
  /** Undo steps of the rollback saga, in the order they ran; ok false records what could not be undone. */
  undo: { step: string; ok: boolean; detail: string }[];
  /** Clean-up after the rollback window (old version unloaded, its route removed). */
  cleanup: { step: string; ok: boolean; detail: string }[];
  error: string | null;
  timings: { startedAt: string; endedAt: string | null; stages: { stage: string; at: string }[] };
  /** Times the deployment continued as new to keep its history bounded (absent: never); the ID and lock stay. */
  continuedAsNew?: number;
}

export const approveDeploymentUpdate = defineUpdate<DeploymentStatus, [ApproveDeploymentInput]>('approve');
export const promoteCanaryUpdate = defineUpdate<DeploymentStatus, [PromoteCanaryInput]>('promote');
export const rollbackDeploymentUpdate = defineUpdate<DeploymentStatus, [RollbackDeploymentInput]>('rollback');
export const getDeploymentStatusQuery = defineQuery<DeploymentStatus>('status');

/** deployModel, by typed reference. ID `deploy:<node>:<alias>` (workflowIds.deploy). */
export const deployModelWorkflow = workflowContract<DeployModelInput, DeploymentStatus>('deployModel');
