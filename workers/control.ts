/**
 * Control worker (queue gpuops-control): every workflow, plus the activities that need no particular host —
 * the Proxmox API (a node never restarts its own VM), and later the router and notifications.
 * Run: `tsx workers/control.ts` (gpuops up runs it in-process).
 */
import os from 'node:os';
import { Worker, type NativeConnection, type WorkerDeploymentOptions, type WorkflowBundle } from '@temporalio/worker';
import type { Client } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import { gpuopsDataConverter } from '../src/temporal/codec';
import type { LoadedConfig } from '../src/config/load';
import { CONTROL_TASK_QUEUE } from '../src/contracts';
import { runWorkerMain } from '../src/temporal/worker-main';
import { workerDeploymentFromEnv } from '../src/temporal/versioning';
import { workflowMetricSinks } from '../src/metrics/runtime';
import { createControlActivities } from '../activities/control';

export interface ControlWorkerOptions {
  connection: NativeConnection;
  namespace: string;
  loaded: LoadedConfig;
  /**
   * A prebuilt bundle (tests build it once per file); otherwise workflows/ is bundled at start. With encryption, build
   * it with the data converter's failureConverterPath, or failures raised by workflow code are stored in clear.
   */
  workflowBundle?: WorkflowBundle;
  taskQueue?: string;
  /** For activities that query Temporal itself (the recovery budget counts recent recoverNode runs). */
  client?: Client;
  /**
   * Poll as one version of a worker deployment (Worker Versioning), so new code rolls out while workflows run;
   * unversioned when absent. The entrypoint takes it from GPUOPS_WORKER_DEPLOYMENT / GPUOPS_WORKER_BUILD_ID.
   */
  workerDeploymentOptions?: WorkerDeploymentOptions;
  /** The payload codec and failure converter; default the config's (gpuopsDataConverter). */
  dataConverter?: DataConverter | undefined;
}

export async function createControlWorker(opts: ControlWorkerOptions): Promise<Worker> {
  const dataConverter = opts.dataConverter ?? gpuopsDataConverter(opts.loaded);
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.taskQueue ?? CONTROL_TASK_QUEUE,
    identity: `gpuops-control@${os.hostname()}:${process.pid}`,
    ...(opts.workflowBundle
      ? { workflowBundle: opts.workflowBundle }
      : { workflowsPath: require.resolve('../workflows') }),
    activities: createControlActivities(opts.loaded, opts.client ? { client: opts.client } : {}),
    // Workflows' gpuops metrics reach the Runtime's exporter (when one is configured) through this sink.
    sinks: workflowMetricSinks(),
    ...(opts.workerDeploymentOptions ? { workerDeploymentOptions: opts.workerDeploymentOptions } : {}),
    ...(dataConverter ? { dataConverter } : {}),
  });
}

if (require.main === module) {
  runWorkerMain('control', { 'task-queue': { value: 'queue' } }, async (ctx) => {
    const taskQueue = ctx.flags['task-queue'];
    const workerDeploymentOptions = workerDeploymentFromEnv();
    return createControlWorker({
      ...ctx,
      client: await ctx.client(),
      ...(taskQueue ? { taskQueue } : {}),
      ...(workerDeploymentOptions ? { workerDeploymentOptions } : {}),
    });
  });
}
