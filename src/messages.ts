/**
 * Names operators and other processes depend on: task queues, search attributes, workflow types and IDs.
 * Workflow-safe: imports nothing but @temporalio/workflow's pure helpers and src/domain.
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
