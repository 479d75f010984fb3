/**
 * Names operators and other processes depend on: task queues, search attributes, workflow types and IDs.
 * Workflow-safe: imports nothing but @temporalio/workflow's pure helpers and src/domain.
 */
import { defineSearchAttributeKey } from '@temporalio/common';
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { CanaryAnalysis } from './domain/canary';
import type { MemoryPreflight } from './domain/preflight';
import type { PromptResult, RiskReport, RiskTier } from './domain/risk';
import type { SloResult } from './domain/slo';

/** Queue of the control worker: every workflow, and activities that need no particular host. */
export const CONTROL_TASK_QUEUE = 'gpuops-control';

/** Queue of the worker that runs ON a GPU node: docker, nvidia-smi, engine HTTP, model store. */
export function nodeTaskQueue(node: string): string {
  return `gpuops-node-${node}`;
}

/** Queue of the worker on a Proxmox host (qm). A node never restarts its own VM. */
export function hypervisorTaskQueue(hypervisor: string): string {
  return `gpuops-hypervisor-${hypervisor}`;
}

export const SEARCH_ATTRIBUTES = {
  node: defineSearchAttributeKey('GpuopsNode', 'KEYWORD'),
  alias: defineSearchAttributeKey('GpuopsAlias', 'KEYWORD'),
  model: defineSearchAttributeKey('GpuopsModel', 'KEYWORD'),
  stage: defineSearchAttributeKey('GpuopsStage', 'KEYWORD'),
  canaryWeight: defineSearchAttributeKey('GpuopsCanaryWeight', 'INT'),
} as const;

/** Name → `temporal operator search-attribute create --type` value, for registration. */
export const SEARCH_ATTRIBUTE_TYPES: Readonly<Record<string, 'Keyword' | 'Int'>> = {
  GpuopsNode: 'Keyword',
  GpuopsAlias: 'Keyword',
  GpuopsModel: 'Keyword',
  GpuopsStage: 'Keyword',
  GpuopsCanaryWeight: 'Int',
};

export const workflowIds = {
  inspect: (node: string, at: string): string => `inspect:${node}:${at}`,
  deploy: (node: string, alias: string): string => `deploy:${node}:${alias}`,
  watch: (node: string): string => `watch:${node}`,
  recover: (node: string): string => `recover:${node}`,
  restore: (plan: string, snapshot: string): string => `restore:${plan}:${snapshot}`,
  backupSchedule: (plan: string): string => `backup:${plan}`,
};

// ---- watchNode / recoverNode messages -------------------------------------------------------------------------

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
}

export const setMaintenanceUpdate = defineUpdate<MaintenanceWindow[], [SetMaintenanceInput]>('maintenance');
export const getWatchStatusQuery = defineQuery<WatchStatus>('status');

// ---- deployModel messages -------------------------------------------------------------------------------------

/** Input of the `approve` Update on deployModel: a human accepts a medium-risk version for canary. */
export interface ApproveDeploymentInput {
  /** Who approves (shown in the audit record). */
  by: string;
  comment?: string;
}

/** Input of the `promote` Update on deployModel: send 100% of the alias to the new version now. */
export interface PromoteCanaryInput {
  by: string;
  /** Promote even though the last canary analysis did not pass. */
  force?: boolean;
  comment?: string;
}

/** Input of the `rollback` Update on deployModel: abandon the deployment and restore the stable route. */
export interface RollbackDeploymentInput {
  by: string;
  reason: string;
}

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
  /**
   * preflight, pulling, loading-canary-slot, validating, assessing-risk, awaiting-approval, canary,
   * awaiting-promotion, promoting, rollback-window, promoted, rolling-back, rolled-back, failed, cancelled.
   */
  stage: string;
  outcome: 'in-progress' | 'promoted' | 'rolled-back' | 'failed' | 'cancelled';
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
  /** The risk report as files (JSON + Markdown) on the control host. */
  reports: { json: string; markdown: string } | null;
  analyses: CanaryStepRecord[];
  live: LiveCanaryAnalysis | null;
  requestedBy: string;
  approvedBy: string | null;
  promotedBy: string | null;
  /** While the old version stays loaded after promotion, ISO time; rollback until then is a route switch. */
  rollbackWindowEndsAt: string | null;
  /** Who or what rolled back, and why (a breach, a refused risk tier, an operator). */
  rollback: { by: string; reason: string } | null;
  /** Undo steps of the rollback saga, in the order they ran; ok false records what could not be undone. */
  undo: { step: string; ok: boolean; detail: string }[];
  /** Clean-up after the rollback window (old version unloaded, its route removed). */
  cleanup: { step: string; ok: boolean; detail: string }[];
  error: string | null;
  timings: { startedAt: string; endedAt: string | null; stages: { stage: string; at: string }[] };
}

export const approveDeploymentUpdate = defineUpdate<DeploymentStatus, [ApproveDeploymentInput]>('approve');
export const promoteCanaryUpdate = defineUpdate<DeploymentStatus, [PromoteCanaryInput]>('promote');
export const rollbackDeploymentUpdate = defineUpdate<DeploymentStatus, [RollbackDeploymentInput]>('rollback');
export const getDeploymentStatusQuery = defineQuery<DeploymentStatus>('status');
