/**
 * Every activity the hypervisor worker (queue gpuops-hypervisor-<id>) serves: `qm` on the Proxmox host. VM power
 * actions run here, never on the node: a node cannot restart its own VM.
 */
import type { HypervisorConfig } from '../src/config/schema';
import { QmCli } from '../src/hosts/proxmox';
import { createQmActivities } from './proxmox';

/** The hypervisor worker's activities (qmStatus, qmPower) for a hypervisor of type qm. */
export function createHypervisorActivities(
  hypervisor: Extract<HypervisorConfig, { type: 'qm' }>,
  opts: { qm?: QmCli } = {},
) {
  return createQmActivities({ qm: opts.qm ?? new QmCli({ bin: hypervisor.qm }) });
}

/** The hypervisor worker's activity object. */
export type HypervisorActivities = ReturnType<typeof createHypervisorActivities>;
