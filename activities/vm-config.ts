/**
 * VM configuration export for vm-config backups, from the control worker through the Proxmox API: the hypervisor
 * side, never the node (a VM's definition lives on its host).
 */
import type { HypervisorConfig } from '../src/config/schema';
import { ProxmoxApiError, proxmoxApiPool, type ProxmoxApiPoolOptions } from '../src/hosts/proxmox';
import { nonRetryable } from './activity-context';

/** What createVmConfigActivities needs: the hypervisors, and how to reach their APIs (see proxmoxApiPool). */
export interface VmConfigActivityDeps extends ProxmoxApiPoolOptions {
  hypervisors: readonly HypervisorConfig[];
}

/** VM config activities for the control worker. */
export function createVmConfigActivities({ hypervisors, resolvePath, apiFor }: VmConfigActivityDeps) {
  const clientFor = proxmoxApiPool({ ...(apiFor ? { apiFor } : {}), ...(resolvePath ? { resolvePath } : {}) });
  return {
    /**
     * GET /nodes/{node}/qemu/{vmid}/config as a stable, sorted `key: value` text (the shape of
     * /etc/pve/qemu-server/<vmid>.conf), ready to back up. Read-only, so retries are safe. The `digest` field is
     * kept: it tells whether two exports are of the same config revision.
     */
    async exportVmConfig(input: { hypervisor: string; vmid: number }): Promise<{ name: string; text: string }> {
      const h = hypervisors.find((x) => x.id === input.hypervisor);
      if (!h) throw nonRetryable('UnknownHypervisor', `hypervisor "${input.hypervisor}" is not in gpuops.yaml`);
      if (h.type !== 'proxmox-api') {
        throw nonRetryable(
          'WrongHypervisorType',
          `vm-config backups need a proxmox-api hypervisor (${h.id} is ${h.type})`,
        );
      }
      const api = clientFor(h);
      try {
        const cfg = await api.vmConfig(input.vmid);
        const lines = Object.keys(cfg)
          .sort()
          .map((k) => `${k}: ${typeof cfg[k] === 'object' ? JSON.stringify(cfg[k]) : String(cfg[k])}`);
        return { name: `${input.vmid}.conf`, text: `${lines.join('\n')}\n` };
      } catch (err) {
        if (err instanceof ProxmoxApiError && err.status !== null && err.status >= 400 && err.status < 500) {
          throw nonRetryable('ProxmoxRejected', err.message);
        }
        throw err;
      }
    },
  };
}
