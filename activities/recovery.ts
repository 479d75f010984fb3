/**
 * Control-side activities of the recovery ladder: facts about a node from gpuops.yaml (workflows cannot read files)
 * and the per-node recovery budget, counted from Temporal's own visibility records so that every trigger (watcher,
 * Alertmanager, CLI, UI) counts against the same budget.
 */
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { slotPartnerOf, type Config } from '../src/config/schema';
import { setMaintenanceUpdate, workflowIds, type SetMaintenanceInput } from '../src/contracts';

export interface NodeFacts {
  id: string;
  engines: {
    name: string;
    type: 'ollama' | 'vllm' | 'llamacpp';
    container: string;
    /** What runs it (absent in histories recorded before runtimes existed: docker). */
    runtime?: 'docker' | 'systemd' | 'process';
    url: string;
    gpus: number[];
    /** The other half of its vLLM / llama.cpp blue/green pair (declared on either side); null if none. */
    canarySlot: string | null;
  }[];
  gpus: number[];
  /** How to restart the node's VM; null when the node is not a VM gpuops can power-cycle. */
  vm: { hypervisor: string; hypervisorType: 'proxmox-api' | 'qm'; vmid: number } | null;
}

export interface RecoveryActivityDeps {
  config: Config;
  /** Needed for the budget (visibility queries). */
  client?: Client;
  namespace?: string;
}

export function createRecoveryActivities(deps: RecoveryActivityDeps) {
  return {
    /** The node's engines, GPUs and VM, from gpuops.yaml. */
    async nodeFacts(input: { node: string }): Promise<NodeFacts> {
      const n = deps.config.nodes.find((x) => x.id === input.node);
      if (!n) {
        throw ApplicationFailure.nonRetryable(
          `node: must be a node in gpuops.yaml (${deps.config.nodes.map((x) => x.id).join(', ')}; got "${input.node}")`,
          'UnknownNode',
        );
      }
      const hv = n.vm ? deps.config.hypervisors.find((h) => h.id === n.vm?.hypervisor) : undefined;
      return {
        id: n.id,
        engines: n.engines.map((e) => ({
          name: e.name,
          type: e.type,
          container: e.container,
          runtime: e.runtime,
          url: e.url,
          gpus: e.gpus,
          canarySlot: slotPartnerOf(n, e.name)?.name ?? null,
        })),
        gpus: n.gpus.map((g) => g.index),
        vm: n.vm && hv ? { hypervisor: hv.id, hypervisorType: hv.type, vmid: n.vm.vmid } : null,
      };
    },

    /**
     * How many recoverNode runs for this node started at or after `since`, not counting `excludeRunId` (the caller).
     * Each such run may have restarted something, so each counts against the budget.
     */
    async countRecentRecoveries(input: { node: string; since: string; excludeRunId: string }): Promise<number> {
      if (!deps.client)
        throw ApplicationFailure.nonRetryable('the control worker has no Temporal client for visibility queries');
      // Runs that found nothing to do took no action, so they do not spend the budget.
      const query =
        `WorkflowType = 'recoverNode' AND GpuopsNode = '${input.node.replace(/'/g, '')}' ` +
        `AND StartTime >= '${input.since}' AND RunId != '${input.excludeRunId.replace(/'/g, '')}' ` +
        `AND (GpuopsStage IS NULL OR GpuopsStage != 'no-fault-found')`;
      const r = await deps.client.workflow.count(query);
      return r.count;
    },

    /**
     * Open (or, with clear, end) a maintenance window on the node's watcher, so it does not "recover" an engine a
     * deployment is reloading on purpose. No watcher running is not an error: there is nobody to pause.
     */
    async setWatchMaintenance(
      input: SetMaintenanceInput & { node: string },
    ): Promise<{ applied: boolean; detail: string }> {
      if (!deps.client) return { applied: false, detail: 'no Temporal client: watcher not paused' };
      const { node, ...window } = input;
      const h = deps.client.workflow.getHandle(workflowIds.watch(node));
      try {
        const windows = await h.executeUpdate(setMaintenanceUpdate, { args: [window] });
        return { applied: true, detail: `${windows.length} maintenance window(s) open on ${workflowIds.watch(node)}` };
      } catch (err) {
        if (err instanceof WorkflowNotFoundError)
          return { applied: false, detail: `no ${workflowIds.watch(node)} running` };
        throw err;
      }
    },
  };
}

export type RecoveryActivities = ReturnType<typeof createRecoveryActivities>;
