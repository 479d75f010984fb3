/**
 * Engine activities for one node: health probes of every engine and Ollama model management (pull, unload, delete).
 * They run on the node's queue because engine URLs are as seen from the node (often 127.0.0.1).
 */
import type { EngineConfig, NodeConfig } from '../src/config/schema';
import type { DiskStatus, EngineProbe } from '../src/domain/health';
import { checkDiskSpace } from '../src/domain/preflight';
import { createEngineClient, probeEngine, type EngineClient } from '../src/hosts/engines/probe';
import { sameOllamaModel, type OllamaClient, type PullProgress } from '../src/hosts/engines/ollama';
import { cancellationSignal, heartbeat, lastHeartbeatDetails, nonRetryable } from './activity-context';

/** What createEngineActivities needs. */
export interface EngineActivityDeps {
  node: NodeConfig;
  /** Client factory (tests and the sandbox inject one); default: a real client per engine config. */
  clientFor?: (engine: EngineConfig) => EngineClient;
  /** Free space of the node's model stores (pullModel stops a download that would not fit). */
  checkDisks?: () => Promise<DiskStatus[]>;
}

/** Input of probeEngines. */
export interface ProbeEnginesInput {
  /** Also run a 1–4 token generation per engine, with a hard timeout. */
  generate: boolean;
  /** Per-call timeout, ms (default 5000). */
  timeoutMs?: number;
  /** Deadline of the test generation, ms (default: timeoutMs, at least 1 s). */
  generateTimeoutMs?: number;
  /**
   * The whole probe of every engine (all calls and the generation, engines concurrently) is done within this, ms:
   * each call's timeout is cut to what is left. Default: no overall bound beyond the per-call timeouts.
   */
  budgetMs?: number;
}

/** Input of the Ollama model activities. */
export interface EngineModelInput {
  /** Engine name on this node (must be an ollama engine). */
  engine: string;
  /** Model name, e.g. "qwen2.5:7b-instruct-q4_K_M". */
  model: string;
}

/** Input of pullModel. */
export interface PullModelInput extends EngineModelInput {
  /** Stop the download (non-retryable DiskFull) when a layer would leave a model store with less free than this. */
  minFreeGiB?: number;
}

/** Heartbeat details of pullModel: the last progress a previous attempt saw. */
export interface PullHeartbeat {
  model: string;
  status: string;
  completedBytes: number;
  totalBytes: number;
  /** The model was in the store before the first attempt (carried across retries). */
  alreadyPresent?: boolean;
}

/** Result of pullModel. */
export interface PullModelResult {
  model: string;
  /** Digest of the pulled model as Ollama lists it, when it does. */
  digest: string | null;
  sizeBytes: number | null;
  /** Progress a previous attempt had reached (Ollama resumed from its partial blobs). */
  resumedFromBytes: number;
  /** The engine listed the model before this pull (so a rollback must not delete it). */
  alreadyPresent: boolean;
}

/** Engine activities over the node's engine configs. */
export function createEngineActivities({
  node,
  clientFor = (e) => createEngineClient(e),
  checkDisks,
}: EngineActivityDeps) {
  const engineNamed = (name: string): EngineConfig => {
    const e = node.engines.find((x) => x.name === name);
    if (!e) {
      throw nonRetryable(
        'UnknownEngine',
        `engine "${name}" is not configured on node ${node.id} (configured: ${node.engines.map((x) => x.name).join(', ') || 'none'})`,
      );
    }
    return e;
  };
  const ollamaNamed = (name: string): OllamaClient => {
    const e = engineNamed(name);
    const c = clientFor(e);
    if (c.type !== 'ollama') {
      throw nonRetryable(
        'UnsupportedEngine',
        `engine "${name}" is ${e.type}: model pull/unload/delete is only supported for ollama engines`,
      );
    }
    return c.client;
  };

  return {
    /** Probe every engine of this node. Never fails for a sick engine: that is what the probe reports. */
    async probeEngines(input: ProbeEnginesInput): Promise<EngineProbe[]> {
      const timeoutMs = input.timeoutMs ?? 5000;
      const opts = {
        generate: input.generate,
        timeoutMs,
        ...(input.generateTimeoutMs !== undefined ? { generateTimeoutMs: input.generateTimeoutMs } : {}),
        ...(input.budgetMs !== undefined ? { deadline: Date.now() + input.budgetMs } : {}),
      };
      return Promise.all(node.engines.map((e) => probeEngine(e, opts, clientFor(e))));
    },

    /**
     * Pull a model into an Ollama engine, heartbeating progress. Set a heartbeatTimeout: a stalled download then
     * fails over to a retry, which resumes — Ollama keeps partially downloaded blobs and continues them.
     */
    async pullModel(input: PullModelInput): Promise<PullModelResult> {
      const client = ollamaNamed(input.engine);
      const previous = lastHeartbeatDetails<PullHeartbeat>();
      const resumedFromBytes = previous?.model === input.model ? previous.completedBytes : 0;
      // Whether the model was there before this deployment's first attempt: a retry reads it from the heartbeat (by
      // then the first attempt may have finished the download).
      const alreadyPresent =
        previous?.model === input.model && typeof previous.alreadyPresent === 'boolean'
          ? previous.alreadyPresent
          : (await client.tags()).some((m) => sameOllamaModel(m.name, input.model));
      let lastBeat = 0;
      // Each layer announces its size as it starts: check the stores then, not after the disk is full.
      const stop = new AbortController();
      let diskFull: string | null = null;
      let announced = 0;
      const checkSpace = async (remaining: number): Promise<void> => {
        if (!checkDisks || input.minFreeGiB === undefined) return;
        const verdict = checkDiskSpace(await checkDisks(), remaining, input.minFreeGiB);
        if (!verdict.ok && !diskFull) {
          diskFull = verdict.detail;
          stop.abort();
        }
      };
      const pending: Promise<void>[] = [];
      const cancel = cancellationSignal();
      const signal = cancel ? AbortSignal.any([cancel, stop.signal]) : stop.signal;
      try {
        await client.pull(input.model, {
          signal,
          insecure: engineNamed(input.engine).insecureRegistries.some((r) => input.model.startsWith(`${r}/`)),
          onProgress: (p: PullProgress) => {
            if (p.totalBytes > announced) {
              announced = p.totalBytes;
              pending.push(checkSpace(p.totalBytes - p.completedBytes).catch(() => undefined));
            }
            // Heartbeat at most twice a second: progress lines arrive per network chunk.
            const now = Date.now();
            if (now - lastBeat < 500 && p.status !== 'success') return;
            lastBeat = now;
            heartbeat({
              model: input.model,
              status: p.status,
              completedBytes: p.completedBytes,
              totalBytes: p.totalBytes,
              alreadyPresent,
            } satisfies PullHeartbeat);
          },
        });
      } catch (err) {
        if (diskFull) throw nonRetryable('DiskFull', `pull of ${input.model} stopped: ${diskFull as string}`);
        throw err;
      }
      await Promise.all(pending);
      if (diskFull) throw nonRetryable('DiskFull', `pull of ${input.model} stopped: ${diskFull as string}`);
      const listed = (await client.tags()).find((m) => sameOllamaModel(m.name, input.model));
      return {
        model: input.model,
        digest: listed?.digest ?? null,
        sizeBytes: listed?.size ?? null,
        resumedFromBytes,
        alreadyPresent,
      };
    },

    /**
     * Load a model into an Ollama engine and keep it there for `keepAlive` (seconds, or a duration such as "90m";
     * negative = until unloaded):
     * the old version stays warm through a rollback window, so going back is a route switch, not a cold load.
     */
    async keepModelLoaded(input: EngineModelInput & { keepAlive: number | string }): Promise<void> {
      const client = ollamaNamed(input.engine);
      // An empty prompt only loads the model (and sets its keep_alive); it generates nothing.
      await client.generate({ model: input.model, prompt: '', keep_alive: input.keepAlive }, { timeoutMs: 120_000 });
    },

    /** Unload a model from an Ollama engine's memory (keep_alive 0). Idempotent. */
    async unloadModel(input: EngineModelInput): Promise<void> {
      await ollamaNamed(input.engine).unload(input.model);
    },

    /** Delete a model from an Ollama engine's store. Returns false when it was already gone (idempotent). */
    async deleteModel(input: EngineModelInput): Promise<boolean> {
      return ollamaNamed(input.engine).delete(input.model);
    },
  };
}

/** The engine activity object. */
export type EngineActivities = ReturnType<typeof createEngineActivities>;
