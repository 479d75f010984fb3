/**
 * Hypervisor worker (queue gpuops-hypervisor-<id>): runs `qm` on a Proxmox host, for hypervisors of type "qm".
 * VM power actions live here, never on the node: a node cannot restart its own VM.
 * Run on the Proxmox host: `tsx workers/hypervisor.ts --hypervisor <id>` (or GPUOPS_HYPERVISOR=<id>).
 */
import os from 'node:os';
import { Worker, type NativeConnection } from '@temporalio/worker';
import type { DataConverter } from '@temporalio/common';
import type { HypervisorConfig } from '../src/config/schema';
import { ValidationError } from '../src/domain/validation';
import { hypervisorTaskQueue } from '../src/contracts';
import { runWorkerMain } from '../src/temporal/worker-main';
import { createHypervisorActivities } from '../activities/hypervisor';

export interface HypervisorWorkerOptions {
  connection: NativeConnection;
  namespace: string;
  /** The config's payload codec (gpuopsDataConverter) when temporal.encryption is set. */
  dataConverter?: DataConverter | undefined;
  hypervisor: Extract<HypervisorConfig, { type: 'qm' }>;
}

export async function createHypervisorWorker(opts: HypervisorWorkerOptions): Promise<Worker> {
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: hypervisorTaskQueue(opts.hypervisor.id),
    identity: `gpuops-hypervisor-${opts.hypervisor.id}@${os.hostname()}:${process.pid}`,
    activities: createHypervisorActivities(opts.hypervisor),
    ...(opts.dataConverter ? { dataConverter: opts.dataConverter } : {}),
  });
}

if (require.main === module) {
  runWorkerMain('hypervisor', { hypervisor: { value: 'id' } }, async (ctx) => {
    const id = ctx.flags.hypervisor ?? process.env.GPUOPS_HYPERVISOR;
    const qmHosts = ctx.loaded.config.hypervisors.filter(
      (h): h is Extract<HypervisorConfig, { type: 'qm' }> => h.type === 'qm',
    );
    const hv = qmHosts.find((h) => h.id === id);
    if (!hv) {
      throw new ValidationError('arguments', [
        `--hypervisor: must be the id of a hypervisor of type qm (${qmHosts.map((h) => h.id).join(', ') || 'none configured'}; got ${id ? `"${id}"` : 'nothing'})`,
      ]);
    }
    return createHypervisorWorker({
      connection: ctx.connection,
      namespace: ctx.namespace,
      dataConverter: ctx.dataConverter,
      hypervisor: hv,
    });
  });
}
