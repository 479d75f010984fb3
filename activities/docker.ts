/**
 * Engine runtime activities for one node's engine containers, units or processes (the file and activity names say
 * "container" for history compatibility: running workflows call them by these names). They run on the node's queue (gpuops-node-<id>) and only touch
 * containers the node's config names: a workflow cannot be talked into restarting an arbitrary container.
 */
import { slotPartnerOf, type NodeConfig } from '../src/config/schema';
import type { ContainerState } from '../src/domain/health';
import { NoSuchContainerError } from '../src/hosts/runtime';
import type { EngineRuntimes } from '../src/hosts/runtimes';
import { cancellationSignal, nonRetryable, withHeartbeat } from './activity-context';

/** What createDockerActivities needs. */
export interface DockerActivityDeps {
  node: NodeConfig;
  /** Each engine's runtime (docker, systemd or process). */
  runtimes: EngineRuntimes;
}

/** Input of the container lifecycle activities. */
export interface ContainerInput {
  /** Container name; must be the `container` of one of the node's engines. */
  container: string;
  /** Seconds docker waits after SIGTERM before SIGKILL (restart/stop; default 10). */
  timeoutSec?: number;
}

/** Input of containerLogs. */
export interface ContainerLogsInput {
  container: string;
  /** Number of lines from the end (default 200, at most 5000). */
  tail?: number;
  /** Only lines since this time (RFC 3339 or a docker duration like "10m"). */
  since?: string;
}

/** Engine lifecycle activities over the node's injected runtimes. */
export function createDockerActivities({ node, runtimes }: DockerActivityDeps) {
  const configured = [...new Set(node.engines.map((e) => e.container))];

  const checkConfigured = (container: string): void => {
    if (!configured.includes(container)) {
      throw nonRetryable(
        'UnknownContainer',
        `container "${container}" is not an engine container of node ${node.id} (configured: ${configured.join(', ') || 'none'})`,
      );
    }
  };

  const missing = (container: string): never => {
    throw nonRetryable(
      'ContainerMissing',
      `container "${container}" does not exist on node ${node.id}; it must be recreated`,
    );
  };

  return {
    /**
     * State of every engine container of this node, with fault signatures from their logs since last start, each
     * labelled with its engine and, for a half of a canary slot pair, its partner's container (so a stopped standby
     * half is not taken for a fault).
     */
    async inspectContainers(): Promise<ContainerState[]> {
      const states = await runtimes.inspect(configured, { logSignals: { tail: 200 } });
      return states.map((s) => {
        const engine = node.engines.find((e) => e.container === s.name);
        const partner = engine ? slotPartnerOf(node, engine.name) : undefined;
        return {
          ...s,
          ...(engine ? { engine: engine.name } : {}),
          ...(partner ? { slotPartner: partner.container } : {}),
        };
      });
    },

    /**
     * Restart an engine container and return its state afterwards. Not idempotent in effect (a retry restarts
     * again), which is harmless: a restart is the remedy being applied.
     */
    async restartContainer(input: ContainerInput): Promise<ContainerState> {
      checkConfigured(input.container);
      const docker = runtimes.of(input.container);
      const signal = cancellationSignal();
      try {
        await withHeartbeat({ step: 'restarting', container: input.container }, () =>
          docker.restart(input.container, { timeoutSec: input.timeoutSec ?? 10, ...(signal ? { signal } : {}) }),
        );
      } catch (err) {
        if (err instanceof NoSuchContainerError) missing(input.container);
        throw err;
      }
      return docker.inspectOne(input.container);
    },

    /** Start an engine container; a running container is already success. Returns its state. */
    async startContainer(input: ContainerInput): Promise<ContainerState> {
      checkConfigured(input.container);
      const docker = runtimes.of(input.container);
      const signal = cancellationSignal();
      try {
        await docker.start(input.container, signal ? { signal } : {});
      } catch (err) {
        if (err instanceof NoSuchContainerError) missing(input.container);
        throw err;
      }
      return docker.inspectOne(input.container);
    },

    /** Stop an engine container (e.g. to free a GPU before a reset); a stopped container is already success. */
    async stopContainer(input: ContainerInput): Promise<ContainerState> {
      checkConfigured(input.container);
      const docker = runtimes.of(input.container);
      const signal = cancellationSignal();
      try {
        await withHeartbeat({ step: 'stopping', container: input.container }, () =>
          docker.stop(input.container, { timeoutSec: input.timeoutSec ?? 10, ...(signal ? { signal } : {}) }),
        );
      } catch (err) {
        // Nothing to stop: the goal (no process on the GPU) holds.
        if (err instanceof NoSuchContainerError) return docker.inspectOne(input.container);
        throw err;
      }
      return docker.inspectOne(input.container);
    },

    /** Recent log lines of an engine container (stdout and stderr interleaved). */
    async containerLogs(input: ContainerLogsInput): Promise<string[]> {
      checkConfigured(input.container);
      const docker = runtimes.of(input.container);
      const tail = Math.min(Math.max(input.tail ?? 200, 1), 5000);
      try {
        return await docker.logs(input.container, { tail, ...(input.since ? { since: input.since } : {}) });
      } catch (err) {
        if (err instanceof NoSuchContainerError) missing(input.container);
        throw err;
      }
    },
  };
}

/** The docker activity object. */
export type DockerActivities = ReturnType<typeof createDockerActivities>;
