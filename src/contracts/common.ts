/**
 * Names operators and other processes depend on: task queues, search attributes, workflow IDs, and the typed
 * reference every client starts a workflow by. Workflow-safe: imports nothing but @temporalio/common's pure helpers.
 */
import { defineSearchAttributeKey } from '@temporalio/common';

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

/**
 * A workflow type as clients see it: its registered name and (in the type only) its input and result. Clients start
 * workflows through one of these (src/temporal/workflows.ts), so a changed input or result fails to compile instead
 * of failing at run time; test/contracts.test.ts checks each workflow implements its contract.
 */
export interface WorkflowContract<Input, Result> {
  /** The workflow type name (the exported function's name in workflows/index.ts). */
  readonly workflowType: string;
  /** Type-only marker, never set. */
  readonly __signature?: (input: Input) => Promise<Result>;
}

/** The workflow function signature a contract stands for. */
export type WorkflowOf<C> = C extends WorkflowContract<infer I, infer R> ? (input: I) => Promise<R> : never;

export function workflowContract<Input, Result>(workflowType: string): WorkflowContract<Input, Result> {
  return { workflowType };
}
