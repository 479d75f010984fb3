/**
 * The sandbox node: a simulated GPU node (shims, engines, Proxmox API, faults) that speaks the real interfaces, so
 * gpuops runs and is tested with no GPU, Docker engine or Proxmox.
 */
export { SandboxNode, SHIM_DIR, ensureShims, freePort, startSandboxProxmox, sandboxHypervisorEnv } from './node';
export type { SandboxNodeOptions, SandboxNodeStatus, WorkerCommand } from './node';
export { startProxmoxServer, resolveTokenSecret } from './proxmox-server';
export type { ProxmoxServerHandle, ProxmoxServerOptions, ProxmoxTarget } from './proxmox-server';
export { EngineServer, normalizeModelName } from './engine-server';
export {
  injectFault,
  clearFaults,
  listFaults,
  isFaultKind,
  FAULT_KINDS,
  FAULT_DESCRIPTIONS,
  FaultError,
} from './faults';
export type { InjectFaultOptions } from './faults';
export { SandboxStore, seedState, defaultLibrary, PREINSTALLED_OLLAMA_MODELS, STATE_VERSION } from './state';
export type { SandboxState, SandboxFaultKind, PowerAction, ModelProfile, TaskRecord, ActiveFault } from './state';
