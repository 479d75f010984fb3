/**
 * Node worker (queue gpuops-node-<id>): activities that must run ON the GPU node — docker, nvidia-smi, the kernel
 * log, engine HTTP, the model store. No workflows. On a real node it runs as a systemd service
 * (deploy/systemd/gpuops-node-worker@.service); in the sandbox the same code runs with the shims first on PATH.
 * Run: `tsx workers/node.ts --node <id>` (or GPUOPS_NODE=<id>).
 */
import os from 'node:os';
import { Worker, type NativeConnection, type WorkerOptions } from '@temporalio/worker';
import type { DataConverter } from '@temporalio/common';
import type { NodeConfig } from '../src/config/schema';
import { ValidationError } from '../src/domain/validation';
import { nodeTaskQueue } from '../src/contracts';
import { runWorkerMain } from '../src/temporal/worker-main';
import { createNodeActivities } from '../activities/node';

export interface NodeWorkerOptions {
  connection: NativeConnection;
  namespace: string;
  /** The config's payload codec (gpuopsDataConverter) when temporal.encryption is set. */
  dataConverter?: DataConverter | undefined;
  node: NodeConfig;
  /** gpuops.yaml path: relative paths in the node's config resolve from its directory. */
  configPath?: string;
}

/**
 * How a node worker runs its activities. Probes and container actions are short, and a node has few cores to spare
 * next to its engines: 16 at once. Its pollers autoscale from 1 (an idle node asks for one task at a time) up to 10
 * under a burst: the SDK's fixed default of 10 long polls per worker would put 2,000 polls on the frontend for 200
 * nodes, past its per-namespace limit of concurrent polls (`frontend.namespaceCount`, 1,200 by default), and the
 * nodes left without a poller would look gone to their watchers (`npm run bench fleet` found it).
 */
export const NODE_WORKER_OPTIONS = {
  maxConcurrentActivityTaskExecutions: 16,
  activityTaskPollerBehavior: { type: 'autoscaling', minimum: 1, initial: 1, maximum: 10 },
} as const satisfies Partial<WorkerOptions>;

export async function createNodeWorker(opts: NodeWorkerOptions): Promise<Worker> {
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: nodeTaskQueue(opts.node.id),
    identity: `gpuops-node-${opts.node.id}@${os.hostname()}:${process.pid}`,
    activities: createNodeActivities(opts.node, opts.configPath ? { configPath: opts.configPath } : {}),
    ...NODE_WORKER_OPTIONS,
    ...(opts.dataConverter ? { dataConverter: opts.dataConverter } : {}),
  });
}

if (require.main === module) {
  runWorkerMain('node', { node: { value: 'id' } }, async (ctx) => {
    const id = ctx.flags.node ?? process.env.GPUOPS_NODE;
    const node = ctx.loaded.config.nodes.find((n) => n.id === id);
    if (!node) {
      const known = ctx.loaded.config.nodes.map((n) => n.id).join(', ');
      throw new ValidationError('arguments', [`--node: must be one of ${known} (got ${id ? `"${id}"` : 'nothing'})`]);
    }
    return createNodeWorker({
      connection: ctx.connection,
      namespace: ctx.namespace,
      dataConverter: ctx.dataConverter,
      node,
      configPath: ctx.loaded.path,
    });
  });
}
