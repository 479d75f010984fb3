/**
 * VM configuration export for vm-config backups, from the control worker through the Proxmox API: the hypervisor
 * side, never the node (a VM's definition lives on its host).
 */
import type { HypervisorConfig } from '../src/config/schema';
import { ProxmoxApi, ProxmoxApiError } from '../src/hosts/proxmox';
import { nonRetryable } from './activity-context';

type ApiHypervisor = Extract<HypervisorConfig, { type: 'proxmox-api' }>;

/** What createVmConfigActivities needs. */
export interface VmConfigActivityDeps {
  hypervisors: readonly HypervisorConfig[];
  resolvePath?: (p: string) => string;
  apiFor?: (h: ApiHypervisor) => ProxmoxApi;
}

/** VM config activities for the control worker. */
export function createVmConfigActivities({ hypervisors, resolvePath = (p) => p, apiFor }: VmConfigActivityDeps) {
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
      const api =
        apiFor?.(h) ??
        new ProxmoxApi({
          url: h.url,
          pveNode: h.pveNode,
          tokenId: h.tokenId,
          tokenSecretFile: resolvePath(h.tokenSecretFile),
          ...(h.caFile ? { caFile: resolvePath(h.caFile) } : {}),
          insecureSkipVerify: h.insecureSkipVerify,
        });
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
