/**
 * Activities the control worker (queue gpuops-control) serves: those that need no particular host. For now the
 * Proxmox API (VM power for hypervisors of type proxmox-api); router and notification activities join here.
 */
import type { LoadedConfig } from '../src/config/load';
import { resolveFrom } from '../src/config/load';
import { createProxmoxActivities, type ProxmoxActivityDeps } from './proxmox';
import { createNotifyActivities } from './notify';
import { createVmConfigActivities } from './vm-config';
import { createRecoveryActivities } from './recovery';
import { createReportActivities } from './reports';
import { createRouterActivities } from './router';
import type { Client } from '@temporalio/client';

/** The control worker's activities (vmStatus, vmPower, waitVmTask). Secret file paths resolve from the config file. */
export function createControlActivities(
  loaded: LoadedConfig,
  opts: { proxmoxApiFor?: ProxmoxActivityDeps['apiFor']; client?: Client } = {},
) {
  return {
    ...createRecoveryActivities({ config: loaded.config, ...(opts.client ? { client: opts.client } : {}) }),
    ...createRouterActivities({ config: loaded.config, resolvePath: (p) => resolveFrom(loaded.path, p) }),
    ...createProxmoxActivities({
      hypervisors: loaded.config.hypervisors,
      resolvePath: (p) => resolveFrom(loaded.path, p),
      ...(opts.proxmoxApiFor ? { apiFor: opts.proxmoxApiFor } : {}),
    }),
    ...createVmConfigActivities({
      hypervisors: loaded.config.hypervisors,
      resolvePath: (p) => resolveFrom(loaded.path, p),
      ...(opts.proxmoxApiFor ? { apiFor: opts.proxmoxApiFor } : {}),
    }),
    ...createReportActivities({ dir: resolveFrom(loaded.path, loaded.config.reportsDir) }),
    ...createNotifyActivities({
      notifiers: loaded.config.notifications,
      resolvePath: (p) => resolveFrom(loaded.path, p),
    }),
  };
}

/** The control worker's activity object. */
export type ControlActivities = ReturnType<typeof createControlActivities>;
