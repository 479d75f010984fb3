/**
 * Every activity the node worker (queue gpuops-node-<id>) serves, built over real host clients whose tool paths come
 * from the node's config. Workflows import this file's types only: `import type * as node from '../activities/node'`.
 */
import path from 'node:path';
import type { EngineConfig, NodeConfig } from '../src/config/schema';
import { DockerCli } from '../src/hosts/docker';
import { processRuntimeFor } from '../src/hosts/process';
import type { EngineRuntime } from '../src/hosts/runtime';
import { EngineRuntimes } from '../src/hosts/runtimes';
import { SystemdCtl } from '../src/hosts/systemd';
import { createEngineClient, type EngineClient } from '../src/hosts/engines/probe';
import { KernelLog } from '../src/hosts/kernel-log';
import { NvidiaSmi } from '../src/hosts/nvidia-smi';
import { createBackupActivities } from './backup';
import { createCanarySlotActivities } from './canary-slot';
import { createDockerActivities } from './docker';
import { createEngineActivities } from './engine';
import { createGpuActivities } from './gpu';
import { createModelStoreActivities } from './model-store';
import { createDeployActivities } from './deploy';
import { createPreflightActivities } from './preflight';
import { createProbeRoundActivities } from './probe-round';
import { findTool } from '../src/hosts/local-tools';

/** Optional overrides: injected clients (tests) and the config file path relative paths are resolved against. */
export interface NodeActivityOptions {
  /** gpuops.yaml path: relative apiKeyFile and modelStores paths are resolved from its directory. */
  configPath?: string;
  docker?: DockerCli;
  /** Overrides of the systemd and process runtimes (tests). */
  systemd?: EngineRuntime;
  processes?: EngineRuntime;
  nvidiaSmi?: NvidiaSmi;
  kernelLog?: KernelLog;
  engineClient?: (engine: EngineConfig) => EngineClient;
}

/**
 * The node worker's activities: docker (inspectContainers, restart/start/stopContainer, containerLogs), GPU
 * (queryGpus, gpuSnapshot, gpuComputeApps, resetGpu, readXidEvents), engines (probeEngines, pullModel,
 * unloadModel, deleteModel), the model store (checkDisks) and probeRound (all five probes as one activity). Names are
 * unique across factories, so they spread.
 */
export function createNodeActivities(node: NodeConfig, opts: NodeActivityOptions = {}) {
  const resolve = (p: string): string =>
    opts.configPath && !path.isAbsolute(p) ? path.resolve(path.dirname(opts.configPath), p) : p;
  // Default tool names ('docker', 'nvidia-smi', 'dmesg') are looked up on PATH at each call: the sandbox puts its
  // shims first on PATH, a real node finds the real tools.
  const docker = opts.docker ?? new DockerCli({ bin: node.tools.docker });
  const runtimes = new EngineRuntimes(node, {
    docker,
    systemd:
      opts.systemd ??
      new SystemdCtl({
        systemctl: node.tools.systemctl,
        journalctl: node.tools.journalctl,
        // A sandbox node's units are simulated: their drop-ins live in its state directory (set by the sandbox).
        dropInDir:
          node.sandbox && process.env.GPUOPS_SANDBOX_SYSTEMD_DIR
            ? process.env.GPUOPS_SANDBOX_SYSTEMD_DIR
            : resolve(node.tools.systemdUnitDir),
      }),
    process: opts.processes ?? processRuntimeFor(node, resolve),
  });
  const nvidiaSmi = opts.nvidiaSmi ?? new NvidiaSmi({ bin: node.tools.nvidiaSmi });
  const kernelLog = opts.kernelLog ?? new KernelLog({ bin: node.tools.dmesg });
  const clientFor =
    opts.engineClient ??
    ((e: EngineConfig): EngineClient =>
      createEngineClient(e.apiKeyFile ? { ...e, apiKeyFile: resolve(e.apiKeyFile) } : e));
  const modelStore = createModelStoreActivities({ node, resolvePath: resolve });
  // restic on PATH, or the one `gpuops up` installed for the sandbox under .gpuops/tools/bin.
  const restic = findTool('restic');
  const dockerActs = createDockerActivities({ node, runtimes });
  const gpuActs = createGpuActivities({ node, nvidiaSmi, kernelLog });
  const engineActs = createEngineActivities({ node, clientFor, checkDisks: modelStore.checkDisks });
  return {
    ...dockerActs,
    ...gpuActs,
    ...engineActs,
    ...modelStore,
    // The watcher's one activity per round; the single probes above stay registered (older histories call them).
    ...createProbeRoundActivities({ ...dockerActs, ...gpuActs, ...engineActs, ...modelStore }),
    ...createPreflightActivities({ node, nvidiaSmi, checkDisks: modelStore.checkDisks, clientFor }),
    ...createDeployActivities({ node, clientFor }),
    ...createCanarySlotActivities({ node, runtimes, clientFor }),
    ...createBackupActivities({
      node,
      nvidiaSmi,
      resolvePath: resolve,
      ...(restic ? { resticBin: restic } : {}),
      ...(opts.configPath ? { configPath: opts.configPath } : {}),
    }),
  };
}

/** The node worker's activity object (workflows proxy this type). */
export type NodeActivities = ReturnType<typeof createNodeActivities>;
