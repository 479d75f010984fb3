/**
 * Activities the control worker (queue gpuops-control) serves: those that need no particular host. For now the
 * Proxmox API (VM power for hypervisors of type proxmox-api); router and notification activities join here.
 */
import type { LoadedConfig } from '../src/config/load';
import { resolveFrom } from '../src/config/load';
import { createProxmoxActivities, type ProxmoxActivityDeps } from './proxmox';

/** The control worker's activities (vmStatus, vmPower, waitVmTask). Secret file paths resolve from the config file. */
export function createControlActivities(
  loaded: LoadedConfig,
  opts: { proxmoxApiFor?: ProxmoxActivityDeps['apiFor'] } = {},
) {
  return {
    ...createProxmoxActivities({
      hypervisors: loaded.config.hypervisors,
      resolvePath: (p) => resolveFrom(loaded.path, p),
      ...(opts.proxmoxApiFor ? { apiFor: opts.proxmoxApiFor } : {}),
    }),
  };
}

/** The control worker's activity object. */
export type ControlActivities = ReturnType<typeof createControlActivities>;
