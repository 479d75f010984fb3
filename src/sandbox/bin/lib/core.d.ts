/** Types of the sandbox runtime shared with the shims (core.js). See src/sandbox/state.ts for the state layout. */
import type {
  ContainerRunSpec,
  ContainerSim,
  EngineSim,
  GpuSim,
  LoadedModel,
  PowerAction,
  SandboxFaultKind,
  SandboxState,
  ServedModel,
  TaskRecord,
} from '../../state';

export declare const OLLAMA_VERSION: string;
export declare const VLLM_VERSION: string;

export declare function sleepSync(ms: number): void;
export declare function acquireLock(file: string): string;
export declare function releaseLock(lockDir: string): void;
export declare function readState(file: string): SandboxState;
export declare function tryReadState(file: string): SandboxState | undefined;
export declare function writeStateAtomic(file: string, state: SandboxState): void;
export declare function updateState<T>(file: string, fn: (state: SandboxState, now: number) => T): T;
export declare function createStateIfAbsent(file: string, make: () => SandboxState): boolean;
export declare function isoNano(ms: number): string;
export declare function hexOf(text: string, len: number): string;
export declare function nextPid(state: SandboxState): number;
export declare function appendLog(
  container: ContainerSim,
  t: number,
  stream: 'stdout' | 'stderr',
  lines: string | string[],
): void;
export declare function appendKernel(
  state: SandboxState,
  t: number,
  level: 'info' | 'warn' | 'err',
  lines: string | string[],
): void;
export declare function startupLines(
  state: SandboxState,
  engine: EngineSim,
  container: ContainerSim,
  t: number,
): string[];
export declare function cudaOomLines(state: SandboxState, engine: EngineSim, t: number): string[];
export declare function engineOfContainer(state: SandboxState, name: string): EngineSim | undefined;
export declare function startContainer(state: SandboxState, name: string, at: number): void;
export declare function stopContainer(
  state: SandboxState,
  name: string,
  at: number,
  exitCode: number,
  manual: boolean,
): void;
export declare function loadedModels(state: SandboxState, engine: EngineSim, now: number): LoadedModel[];
export declare function computeApps(
  state: SandboxState,
  gpuIndex: number,
  now: number,
): { pid: number; processName: string; usedMiB: number; engine: string; container: string }[];
export declare function gpuMemoryUsed(state: SandboxState, gpu: GpuSim, now: number): number;
export declare function xidPci(gpu: GpuSim): string;
export declare function bootVm(state: SandboxState, at: number): void;
export declare function powerOff(state: SandboxState, at: number): void;
export declare function advance(state: SandboxState, now: number): void;
export declare function requestPower(
  state: SandboxState,
  action: PowerAction,
  now: number,
  opts?: { user?: string; pveNode?: string; timeoutMs?: number },
): TaskRecord;
export declare function taskStatus(
  task: TaskRecord,
  now: number,
): { status: 'running' } | { status: 'stopped'; exitstatus: string; endtime: number };
export declare function currentFaults(state: SandboxState): { kind: SandboxFaultKind; target: string }[];
export declare function syncFaults(state: SandboxState, now: number): void;
export declare function findStateByVmid(dir: string, vmid: number): string | undefined;

/** What the sandbox's engine images set by themselves, per engine type. */
export declare const IMAGE_DEFAULTS: Record<
  EngineSim['type'],
  { Entrypoint: string[]; Cmd: string[] | null; port: number; volume: string }
>;
export declare const IMAGE_ENV: string[];
export declare const IMAGE_LABELS: Record<string, string>;
export declare function profileName(engine: EngineSim, served: string): string;
export declare function modelOfCommand(
  type: EngineSim['type'],
  cmd: readonly string[],
  entrypoint: readonly string[],
): Omit<ServedModel, 'known'> | undefined;
export declare function applyServedModel(
  state: SandboxState,
  engine: EngineSim,
  container: ContainerSim,
  cmd: readonly string[],
  entrypoint: readonly string[],
): void;
export declare function applyLoadFailures(state: SandboxState, now: number): void;
/** What `docker run -d` parsed: the container's name, image, command, environment and run flags. */
export interface RunContainerSpec extends ContainerRunSpec {
  name: string;
  image: string;
  cmd: string[];
  env: string[];
}
export declare function runContainer(
  state: SandboxState,
  spec: RunContainerSpec,
  now: number,
  start?: boolean,
): { id: string } | { error: string; code: number };
export declare function removeContainer(state: SandboxState, name: string, now: number, force: boolean): string | null;
