/**
 * GPU activities for one node: nvidia-smi health, the XML snapshot, GPU reset, and Xid events from the kernel log
 * (the driver reports GPU faults only there). They run on the node's queue.
 */
import type { NodeConfig } from '../src/config/schema';
import type { XidEvent } from '../src/domain/health';
import type { KernelLog } from '../src/hosts/kernel-log';
import { KernelLogError } from '../src/hosts/kernel-log';
import type { ComputeApp, GpuQueryResult, GpuResetResult, GpuSnapshot, NvidiaSmi } from '../src/hosts/nvidia-smi';
import { nonRetryable, warn, withHeartbeat } from './activity-context';

/** What createGpuActivities needs. */
export interface GpuActivityDeps {
  node: NodeConfig;
  nvidiaSmi: NvidiaSmi;
  kernelLog: KernelLog;
}

/** GPU activities over injected nvidia-smi and kernel-log clients. */
export function createGpuActivities({ node, nvidiaSmi, kernelLog }: GpuActivityDeps) {
  return {
    /**
     * Health of every GPU. A failing nvidia-smi is an observation (error set), not an activity failure: a lost GPU
     * must reach classification, not burn retries. A node configured without GPUs and without nvidia-smi reports
     * nothing rather than a fault.
     */
    async queryGpus(): Promise<GpuQueryResult> {
      const r = await nvidiaSmi.queryGpus();
      if (r.error !== null && node.gpus.length === 0 && /could not start/.test(r.error))
        return { gpus: [], error: null };
      return r;
    },

    /** `nvidia-smi -q -x` (kept raw for the gpu-config backup) with driver/CUDA version, power limits and clocks. */
    async gpuSnapshot(): Promise<GpuSnapshot> {
      return nvidiaSmi.snapshotXml();
    },

    /** Processes holding GPU memory (must be none before a GPU reset). */
    async gpuComputeApps(): Promise<ComputeApp[]> {
      return nvidiaSmi.computeApps();
    },

    /**
     * Reset one GPU. Stops nothing itself: the workflow stops the engine containers first. A refused reset ('in-use',
     * 'not-supported', 'lost') comes back as data so the workflow can climb to the next rung.
     */
    async resetGpu(input: { index: number }): Promise<GpuResetResult> {
      if (!Number.isInteger(input.index) || input.index < 0) {
        throw nonRetryable('InvalidGpuIndex', `GPU index must be a non-negative integer (got ${String(input.index)})`);
      }
      if (node.gpus.length > 0 && !node.gpus.some((g) => g.index === input.index)) {
        throw nonRetryable(
          'UnknownGpu',
          `GPU ${input.index} is not configured on node ${node.id} (configured: ${node.gpus.map((g) => g.index).join(', ')})`,
        );
      }
      return withHeartbeat({ step: 'resetting', index: input.index }, () => nvidiaSmi.resetGpu(input.index));
    },

    /**
     * Xid events after `since` (ISO). If the worker may not read the kernel log (dmesg_restrict), this warns and
     * returns none rather than failing every probe: retrying cannot grant the privilege.
     */
    async readXidEvents(input: { since?: string } = {}): Promise<XidEvent[]> {
      if (input.since !== undefined && Number.isNaN(Date.parse(input.since))) {
        throw nonRetryable('InvalidInput', `since must be an ISO timestamp (got "${input.since}")`);
      }
      try {
        return await kernelLog.xidEvents(input.since ? { since: input.since } : {});
      } catch (err) {
        if (err instanceof KernelLogError && (err.permissionDenied || err.result.spawnError !== null)) {
          warn(`cannot read the kernel log on node ${node.id}; Xid events are not visible: ${err.message}`);
          return [];
        }
        throw err;
      }
    },
  };
}

/** The GPU activity object. */
export type GpuActivities = ReturnType<typeof createGpuActivities>;
