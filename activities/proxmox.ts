/**
 * VM power activities. Two flavours of one job: the Proxmox API (control worker, hypervisors of type proxmox-api)
 * and `qm` on the host (hypervisor worker, type qm). Either way they never run on the node whose VM they act on:
 * a node cannot restart its own VM.
 */
import type { HypervisorConfig } from '../src/config/schema';
import {
  ProxmoxApiError,
  proxmoxApiPool,
  taskSucceeded,
  type ProxmoxApi,
  type ProxmoxApiPoolOptions,
  VM_POWER_ACTIONS,
  type QmCli,
  type QmPowerResult,
  type TaskStatus,
  type VmPowerAction,
  type VmStatus,
} from '../src/hosts/proxmox';
import { cancellationSignal, heartbeat, nonRetryable, withHeartbeat } from './activity-context';

/** What createProxmoxActivities needs: the hypervisors, and how to reach their APIs (see proxmoxApiPool). */
export interface ProxmoxActivityDeps extends ProxmoxApiPoolOptions {
  hypervisors: readonly HypervisorConfig[];
}

/** Input naming a VM on a hypervisor. */
export interface VmInput {
  /** Hypervisor id from gpuops.yaml (type proxmox-api). */
  hypervisor: string;
  vmid: number;
}

/** Input of vmPower. */
export interface VmPowerInput extends VmInput {
  action: VmPowerAction;
  /** For shutdown/reboot: seconds the guest gets before Proxmox gives up (or force-stops, with forceStop). */
  timeoutSec?: number;
  /** For shutdown: stop the VM if the guest ignores ACPI within timeoutSec. */
  forceStop?: boolean;
}

/** Input of waitVmTask. */
export interface WaitVmTaskInput {
  hypervisor: string;
  upid: string;
  /** How long to wait for the task, ms (default 5 min). */
  timeoutMs?: number;
  pollMs?: number;
}

/** A finished Proxmox task. */
export interface VmTaskResult extends TaskStatus {
  /** exitstatus is "OK" (or "WARNINGS: n"). */
  ok: boolean;
}

function validateVmid(vmid: unknown): number {
  if (typeof vmid !== 'number' || !Number.isInteger(vmid) || vmid < 100) {
    throw nonRetryable('InvalidInput', `vmid must be an integer >= 100 (got ${JSON.stringify(vmid)})`);
  }
  return vmid;
}

function validateAction(action: unknown): VmPowerAction {
  if (!VM_POWER_ACTIONS.includes(action as VmPowerAction)) {
    throw nonRetryable(
      'InvalidInput',
      `action must be one of ${VM_POWER_ACTIONS.join(', ')} (got ${JSON.stringify(action)})`,
    );
  }
  return action as VmPowerAction;
}

/** Authentication, permission and parameter errors will not heal on retry; 5xx and network errors may. */
function classify(err: unknown): never {
  if (err instanceof ProxmoxApiError && err.status !== null && err.status >= 400 && err.status < 500) {
    throw nonRetryable(err.status === 401 || err.status === 403 ? 'ProxmoxAuth' : 'ProxmoxRejected', err.message);
  }
  throw err;
}

/** Proxmox API activities for the control worker. */
export function createProxmoxActivities({ hypervisors, apiFor, resolvePath }: ProxmoxActivityDeps) {
  const clientFor = proxmoxApiPool({ ...(apiFor ? { apiFor } : {}), ...(resolvePath ? { resolvePath } : {}) });
  const api = (id: string): ProxmoxApi => {
    const h = hypervisors.find((x) => x.id === id);
    if (!h) throw nonRetryable('UnknownHypervisor', `hypervisor "${id}" is not in gpuops.yaml`);
    if (h.type !== 'proxmox-api') {
      throw nonRetryable(
        'WrongHypervisorType',
        `hypervisor "${id}" is of type ${h.type}: its VM actions run on queue gpuops-hypervisor-${id} (qmStatus/qmPower)`,
      );
    }
    return clientFor(h);
  };

  return {
    /** Current state of a VM. */
    async vmStatus(input: VmInput): Promise<VmStatus> {
      const vmid = validateVmid(input.vmid);
      return api(input.hypervisor).vmStatus(vmid).catch(classify);
    },

    /**
     * Start a power action and return its task UPID (wait with waitVmTask). Returns null when the VM is already in
     * the state the action aims for (start on a running VM, stop/shutdown on a stopped one), so a retry after a lost
     * response does not act twice. reboot and reset always act: give them maximumAttempts 1.
     */
    async vmPower(input: VmPowerInput): Promise<string | null> {
      const vmid = validateVmid(input.vmid);
      const action = validateAction(input.action);
      const client = api(input.hypervisor);
      if (action === 'start' || action === 'stop' || action === 'shutdown') {
        const s = await client.vmStatus(vmid).catch(classify);
        if (action === 'start' && s.status === 'running') return null;
        if (action !== 'start' && s.status === 'stopped') return null;
      }
      return client
        .power(vmid, action, {
          ...(input.timeoutSec !== undefined ? { timeoutSec: input.timeoutSec } : {}),
          ...(input.forceStop ? { forceStop: true } : {}),
        })
        .catch(classify);
    },

    /** Wait for a Proxmox task to finish, heartbeating each poll. A failed task comes back with ok=false. */
    async waitVmTask(input: WaitVmTaskInput): Promise<VmTaskResult> {
      const client = api(input.hypervisor);
      const signal = cancellationSignal();
      const final = await client
        .waitTask(input.upid, {
          timeoutMs: input.timeoutMs ?? 300_000,
          pollMs: input.pollMs ?? 1000,
          ...(signal ? { signal } : {}),
          onPoll: (s) => heartbeat({ upid: input.upid, status: s.status }),
        })
        .catch(classify);
      return { ...final, ok: taskSucceeded(final.exitstatus) };
    },
  };
}

/** The Proxmox API activity object. */
export type ProxmoxActivities = ReturnType<typeof createProxmoxActivities>;

/** What createQmActivities needs. */
export interface QmActivityDeps {
  qm: QmCli;
}

/** `qm` activities for a hypervisor worker on the Proxmox host. */
export function createQmActivities({ qm }: QmActivityDeps) {
  return {
    /** `qm status <vmid>`. */
    async qmStatus(input: { vmid: number }): Promise<'running' | 'stopped'> {
      return qm.status(validateVmid(input.vmid));
    },

    /**
     * `qm <action> <vmid>`, which returns when the action is done. Start on a running VM and stop/shutdown on a
     * stopped one succeed with alreadyInState=true; reboot and reset always act (give them maximumAttempts 1).
     */
    async qmPower(input: { vmid: number; action: VmPowerAction; timeoutSec?: number }): Promise<QmPowerResult> {
      const vmid = validateVmid(input.vmid);
      const action = validateAction(input.action);
      const signal = cancellationSignal();
      return withHeartbeat({ vmid, action }, () =>
        qm.power(vmid, action, {
          ...(input.timeoutSec !== undefined ? { timeoutSec: input.timeoutSec } : {}),
          ...(signal ? { signal } : {}),
        }),
      );
    },
  };
}

/** The qm activity object. */
export type QmActivities = ReturnType<typeof createQmActivities>;
