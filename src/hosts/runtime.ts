/**
 * What runs an engine on a node: a Docker container (the default), a systemd unit (Ollama's official Linux install is
 * `ollama.service`) or a plain process kept by gpuops's own keeper. The node activities (recovery's restart rung,
 * standby halves, canary slots) speak only this interface, so every rung works whatever the engine runs under.
 *
 * Names are the engine's `container` in gpuops.yaml: a container name, a unit name or the process name.
 */
import type { ContainerState } from '../domain/health';

/** The runtimes gpuops drives. */
export const ENGINE_RUNTIMES = ['docker', 'systemd', 'process'] as const;
export type EngineRuntimeKind = (typeof ENGINE_RUNTIMES)[number];

/** Thrown when a lifecycle command names something the runtime does not know (no container, unit or process). */
export class NoSuchContainerError extends Error {
  constructor(
    readonly container: string,
    runtime: EngineRuntimeKind = 'docker',
  ) {
    super(
      runtime === 'docker'
        ? `docker has no container named "${container}"`
        : runtime === 'systemd'
          ? `systemd has no unit named "${container}"`
          : `no engine process named "${container}" is defined`,
    );
    this.name = 'NoSuchContainerError';
  }
}

/** Result of {@link EngineRuntime.recreate}. */
export interface RecreateResult {
  /** Container id, main PID or process instance id of the new run. */
  id: string;
  /** Image (docker), unit file (systemd) or binary (process). */
  image: string;
  previousCmd: string[];
  cmd: string[];
}

/** Lifecycle and state of engines under one runtime. */
export interface EngineRuntime {
  readonly kind: EngineRuntimeKind;
  /**
   * State of each named engine, in the order asked; unknown names come back as `exists: false`, `status: 'missing'`.
   * With `logSignals`, the logs since the engine last started are scanned for fault signatures.
   */
  inspect(names: readonly string[], opts?: { logSignals?: { tail?: number } | false }): Promise<ContainerState[]>;
  inspectOne(name: string): Promise<ContainerState>;
  /** Stop (SIGTERM, SIGKILL after timeoutSec) and start again. */
  restart(name: string, opts?: { timeoutSec?: number; signal?: AbortSignal }): Promise<void>;
  /** Start; a running engine is already success. */
  start(name: string, opts?: { signal?: AbortSignal }): Promise<void>;
  /** Stop; a stopped engine is already success. */
  stop(name: string, opts?: { timeoutSec?: number; signal?: AbortSignal }): Promise<void>;
  /** Recent log lines, stdout and stderr interleaved. `since` is RFC 3339. */
  logs(name: string, opts?: { tail?: number; since?: string; signal?: AbortSignal }): Promise<string[]>;
  /** The engine's command line (arguments after the entrypoint/binary) and its entrypoint, or undefined if missing. */
  command(name: string): Promise<{ cmd: string[]; entrypoint: string[]; running: boolean; id: string } | undefined>;
  /**
   * Run the engine again with another command line, everything else kept (canary slots). With `start: false` the new
   * definition is left stopped (a standby half).
   */
  recreate(
    name: string,
    rewrite: (cmd: readonly string[], entrypoint: readonly string[]) => string[],
    opts?: { signal?: AbortSignal; start?: boolean },
  ): Promise<RecreateResult>;
}
