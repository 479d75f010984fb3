/**
 * Worker Versioning for the control worker (Temporal worker deployments, server ≥ 1.28, TS SDK ≥ 1.12): new
 * control-worker code rolls out while deployModel, recoverNode and watchNode run. Each control worker polls as one
 * version of a deployment (GPUOPS_WORKER_DEPLOYMENT + GPUOPS_WORKER_BUILD_ID); the server sends new workflows to the
 * deployment's current version, and a workflow started on a version stays pinned to it to the end, so the old
 * workers keep running what they started (no `patched()` needed for it) until the version is drained.
 * README: Production, "Upgrading gpuops while workflows run".
 */
import { z } from 'zod';
import type { Client } from '@temporalio/client';
import type { WorkerDeploymentOptions } from '@temporalio/worker';
import { parseOrThrow } from '../domain/validation';

const EnvSchema = z.object({
  /** The deployment's name (same for every version of the control worker), e.g. gpuops-control. */
  GPUOPS_WORKER_DEPLOYMENT: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,100}$/, { message: 'must be letters, digits, - or _ (the server joins it with a dot)' })
    .optional(),
  /** This build's id: a release tag or commit, different for every code change of workflows/. */
  GPUOPS_WORKER_BUILD_ID: z
    .string()
    .regex(/^[A-Za-z0-9._+-]{1,255}$/, { message: 'must be letters, digits, . _ + or -' })
    .optional(),
  /**
   * What a workflow does when a newer version becomes current: PINNED (default) finishes on the version it started
   * on; AUTO_UPGRADE moves to the new one at its next task, which the new code must replay (patched()).
   */
  GPUOPS_WORKER_VERSIONING_BEHAVIOR: z.enum(['PINNED', 'AUTO_UPGRADE']).optional(),
});

/** The deployment name the README, the systemd unit and the tests use. */
export const CONTROL_DEPLOYMENT = 'gpuops-control';

/**
 * The control worker's deployment options from its environment, or undefined (unversioned, as before) when neither
 * GPUOPS_WORKER_DEPLOYMENT nor GPUOPS_WORKER_BUILD_ID is set. One without the other is an error.
 */
export function workerDeploymentFromEnv(env: NodeJS.ProcessEnv = process.env): WorkerDeploymentOptions | undefined {
  const set = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const e = parseOrThrow(EnvSchema, set, 'environment');
  if (!e.GPUOPS_WORKER_DEPLOYMENT && !e.GPUOPS_WORKER_BUILD_ID) {
    if (e.GPUOPS_WORKER_VERSIONING_BEHAVIOR)
      throw new Error('GPUOPS_WORKER_VERSIONING_BEHAVIOR needs GPUOPS_WORKER_DEPLOYMENT and GPUOPS_WORKER_BUILD_ID');
    return undefined;
  }
  if (!e.GPUOPS_WORKER_DEPLOYMENT || !e.GPUOPS_WORKER_BUILD_ID)
    throw new Error('Worker Versioning: set GPUOPS_WORKER_DEPLOYMENT and GPUOPS_WORKER_BUILD_ID together');
  return {
    version: { deploymentName: e.GPUOPS_WORKER_DEPLOYMENT, buildId: e.GPUOPS_WORKER_BUILD_ID },
    useWorkerVersioning: true,
    defaultVersioningBehavior: e.GPUOPS_WORKER_VERSIONING_BEHAVIOR ?? 'PINNED',
  };
}

/**
 * Make `buildId` the deployment's current version: new workflows start on it from now on (what
 * `temporal worker deployment set-current-version` does). The server knows a version only once one of its workers
 * has polled, so this retries until then (up to `timeoutMs`).
 */
export async function setCurrentVersion(
  client: Client,
  deploymentName: string,
  buildId: string,
  opts: { timeoutMs?: number; identity?: string } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  for (;;) {
    try {
      await client.workflowService.setWorkerDeploymentCurrentVersion({
        namespace: client.options.namespace,
        deploymentName,
        buildId,
        identity: opts.identity ?? 'gpuops',
        // A version whose workers have not polled every task queue of the current one yet would strand those queues.
        ignoreMissingTaskQueues: false,
      });
      return;
    } catch (err) {
      if (Date.now() > deadline)
        throw new Error(`making ${deploymentName}.${buildId} current: ${(err as Error).message}`, { cause: err });
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** The version a workflow execution runs on (its deployment build id), or null when unversioned. */
export async function executionBuildId(client: Client, workflowId: string, runId?: string): Promise<string | null> {
  const d = await client.workflowService.describeWorkflowExecution({
    namespace: client.options.namespace,
    execution: { workflowId, ...(runId ? { runId } : {}) },
  });
  const v = d.workflowExecutionInfo?.versioningInfo;
  return v?.deploymentVersion?.buildId ?? null;
}
