/**
 * Canary slots for one-model-per-container engines (vLLM, llama.cpp `llama-server`): an engine and its
 * `canarySlot` partner in gpuops.yaml form a blue/green pair of containers on the node. deployModel loads the new
 * version into the half the router's stable variant does not point at, canaries it, and after promotion stops the
 * old half ("standby") once the rollback window has passed. These activities run on the node's queue and drive the
 * docker CLI and the engine's HTTP API; they only touch engines that are half of a configured pair.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ApplicationFailure } from '@temporalio/common';
import type { EngineConfig, NodeConfig } from '../src/config/schema';
import { slotPartnerOf } from '../src/config/schema';
import { isCleanStop } from '../src/domain/classify';
import type { ContainerState } from '../src/domain/health';
import { recreateWithModel } from '../src/hosts/docker';
import { NoSuchContainerError } from '../src/hosts/runtime';
import type { EngineRuntimes } from '../src/hosts/runtimes';
import { ModelArgsError, modelOfCmd } from '../src/hosts/engines/model-args';
import type { EngineClient } from '../src/hosts/engines/probe';
import { cancellationSignal, heartbeat, lastHeartbeatDetails, nonRetryable } from './activity-context';

/** What createCanarySlotActivities needs. */
export interface CanarySlotActivityDeps {
  node: NodeConfig;
  /** Each engine's runtime (docker, systemd or process). */
  runtimes: EngineRuntimes;
  clientFor: (engine: EngineConfig) => EngineClient;
  /** Time between readiness checks while an engine loads (default 1 s; tests use less). */
  pollMs?: number;
}

/** Input of loadCanarySlot. */
export interface LoadCanarySlotInput {
  /** The slot engine's own name in gpuops.yaml: the half of the pair the router's stable variant does NOT use. */
  engine: string;
  /** vLLM: a Hugging Face repo id or path; llama.cpp: a .gguf file (path, or a name beside the current one) or an
   * `owner/repo[:quant]` GGUF repo. */
  model: string;
  /** vLLM only: branch, tag or commit of the repo (--revision). */
  revision?: string;
  /** How long the engine may take to become ready with the model (default 15 min: big models load slowly). */
  readyTimeoutMs?: number;
}

/** Result of loadCanarySlot. */
export interface LoadCanarySlotResult {
  engine: string;
  /** The name the engine lists in /v1/models: use it as the router variant's model. Equals the input model. */
  model: string;
  revision: string | null;
  container: string;
  containerId: string;
  /** From the start of this activity until the engine answered ready and listed the model. */
  readyAfterMs: number;
  /** The container's command before (secret flag values redacted): what a restore would run again. */
  previousCmd: string[];
  /** The model that command served, if any. */
  previousModel: string | null;
  /** false: the container already ran this model (a retry after the recreate, or a redeploy) and was kept. */
  recreated: boolean;
}

/** Progress heartbeated while a slot loads; a retried attempt keeps the first attempt's previousCmd. */
export interface SlotProgress {
  phase: 'recreating' | 'starting' | 'loading' | 'ready';
  elapsedMs: number;
  /** The container's most recent log line (engines log their loading progress). */
  lastLog: string | null;
  previousCmd?: string[];
  previousModel?: string | null;
}

/** Result of startEngine. */
export interface StartEngineResult {
  engine: string;
  container: string;
  /** true when this call started it; false when it was already running. */
  started: boolean;
  /** The first model the engine lists once ready. */
  model: string | null;
  readyAfterMs: number;
}

const DEFAULT_READY_TIMEOUT_MS = 15 * 60_000;
/** Log lines quoted in a load failure: enough for the traceback's last words, not a whole log. */
const FAILURE_LINES = 12;

/** Engines print their arguments at start (vLLM's `args: Namespace(… api_key='…')`): keep keys out of messages. */
function redactLog(line: string): string {
  return line
    .replace(/\b(api_key|hf_token|token|password|secret)(\s*[=:]\s*)('[^']*'|"[^"]*"|[^\s,)]+)/gi, '$1$2<redacted>')
    .replace(/(--(?:api-key|hf-token)[= ])\S+/g, '$1<redacted>')
    .slice(0, 500);
}

/** Canary slot activities over an injected DockerCli and engine clients. */
export function createCanarySlotActivities({ node, runtimes, clientFor, pollMs = 1000 }: CanarySlotActivityDeps) {
  /** The engine, if it is a vLLM / llama.cpp half of a configured slot pair; anything else is refused. */
  const slotEngine = (name: string): EngineConfig & { type: 'vllm' | 'llamacpp' } => {
    const e = node.engines.find((x) => x.name === name);
    if (!e) {
      throw nonRetryable(
        'UnknownEngine',
        `engine "${name}" is not configured on node ${node.id} (engines: ${node.engines.map((x) => x.name).join(', ') || 'none'})`,
      );
    }
    if (e.type === 'ollama') {
      throw nonRetryable('NotACanarySlot', `engine "${name}" is ollama: its canary is a second tag on the same engine`);
    }
    if (!slotPartnerOf(node, name)) {
      throw nonRetryable(
        'NotACanarySlot',
        `engine "${name}" is not half of a canary slot pair on node ${node.id}: set canarySlot in gpuops.yaml`,
      );
    }
    return e as EngineConfig & { type: 'vllm' | 'llamacpp' };
  };

  const lastLines = async (container: string, n: number, since?: string): Promise<string[]> =>
    (
      await runtimes
        .of(container)
        .logs(container, { tail: n, ...(since ? { since } : {}) })
        .catch(() => [] as string[])
    )
      .filter((l) => l.trim() !== '')
      .map(redactLog);

  /**
   * Wait until the engine is ready and lists a model (`want`, or any when undefined), heartbeating progress.
   * Throws ModelLoadFailed (non-retryable) when the container exits, ModelLoadTimeout when it takes too long.
   */
  async function waitReady(
    e: EngineConfig,
    opts: { want?: string; what: string; startedAt: number; timeoutMs: number; extra: Partial<SlotProgress> },
  ): Promise<string> {
    const signal = cancellationSignal();
    const c = clientFor(e);
    if (c.type === 'ollama') throw nonRetryable('NotACanarySlot', `engine "${e.name}" is ollama`);
    const deadline = opts.startedAt + opts.timeoutMs;
    let lastLog: string | null = null;
    let lastLogAt = 0;
    for (;;) {
      const state: ContainerState = await runtimes.of(e.container).inspectOne(e.container);
      const elapsedMs = Date.now() - opts.startedAt;
      if (!state.exists) throw new Error(`container ${e.container} vanished while ${e.name} was loading ${opts.what}`);
      if (!state.running) {
        const lines = await lastLines(e.container, FAILURE_LINES, state.startedAt);
        throw nonRetryable(
          'ModelLoadFailed',
          `${e.name} could not load ${opts.what}: container ${e.container} ${state.status} (exit code ${state.exitCode})` +
            (lines.length ? `; last log lines:\n${lines.join('\n')}` : ''),
          { engine: e.name, model: opts.what, exitCode: state.exitCode, lastLines: lines },
        );
      }
      let phase: SlotProgress['phase'] = 'starting';
      try {
        const h = await c.client.health({ timeoutMs: 5000 });
        if (h.ok) {
          const models = await c.client.models({ timeoutMs: 5000 });
          const found = opts.want === undefined ? models[0] : models.find((m) => m === opts.want);
          if (found !== undefined) {
            heartbeat({ ...opts.extra, phase: 'ready', elapsedMs, lastLog } satisfies SlotProgress);
            return found;
          }
          throw nonRetryable(
            'ModelNotServed',
            `${e.name} is ready but lists ${models.length ? models.join(', ') : 'no model'}, not ${opts.want ?? 'any'}`,
          );
        }
        if (h.loading) phase = 'loading';
      } catch (err) {
        // Not listening yet (vLLM opens its port once the model is loaded) or a transient error: keep waiting.
        if (err instanceof ApplicationFailure) throw err;
      }
      if (Date.now() - lastLogAt >= 2000) {
        lastLog = (await lastLines(e.container, 1, state.startedAt)).at(-1) ?? lastLog;
        lastLogAt = Date.now();
      }
      heartbeat({ ...opts.extra, phase, elapsedMs, lastLog } satisfies SlotProgress);
      if (Date.now() >= deadline) {
        const lines = await lastLines(e.container, FAILURE_LINES, state.startedAt);
        throw nonRetryable(
          'ModelLoadTimeout',
          `${e.name} was not ready with ${opts.what} after ${Math.round(opts.timeoutMs / 1000)} s` +
            (lines.length ? `; last log lines:\n${lines.join('\n')}` : ''),
          { engine: e.name, model: opts.what, lastLines: lines },
        );
      }
      // Cancellation rejects with an AbortError, which the SDK reports as the activity cancelled.
      await sleep(pollMs, undefined, signal ? { signal } : {});
    }
  }

  return {
    /**
     * Load a model into a canary slot: recreate the slot engine's container with the model (everything else about
     * the container kept), wait until the engine is ready and lists it, heartbeating `{ phase, elapsedMs, lastLog }`.
     * Idempotent: a container already running that model is not recreated. A model the engine cannot load fails
     * without retry (type ModelLoadFailed) with the container's last log lines.
     */
    async loadCanarySlot(input: LoadCanarySlotInput): Promise<LoadCanarySlotResult> {
      const e = slotEngine(input.engine);
      const startedAt = Date.now();
      const spec = { model: input.model, ...(input.revision ? { revision: input.revision } : {}) };
      // Recreating the only half that runs would take the alias down: then this is the serving half, not the slot.
      const partner = slotPartnerOf(node, e.name);
      if (partner) {
        const [self, other] = await runtimes.inspect([e.container, partner.container]);
        if (self?.running && other && !other.running) {
          throw nonRetryable(
            'SlotIsServing',
            `${e.name} is the only running half of its pair (${partner.name} is ${other.status}): it is serving, ` +
              `not the canary slot; load the canary into ${partner.name}`,
          );
        }
      }
      const before = lastHeartbeatDetails<SlotProgress>();
      heartbeat({
        phase: 'recreating',
        elapsedMs: 0,
        lastLog: null,
        ...(before?.previousCmd ? { previousCmd: before.previousCmd } : {}),
        ...(before?.previousModel !== undefined ? { previousModel: before.previousModel } : {}),
      } satisfies SlotProgress);
      const signal = cancellationSignal();
      let r;
      try {
        r = await recreateWithModel(runtimes.of(e.container), e.container, e.type, spec, signal ? { signal } : {});
      } catch (err) {
        if (err instanceof ModelArgsError) throw nonRetryable('InvalidModel', `${e.name}: ${err.message}`);
        if (err instanceof NoSuchContainerError) {
          throw nonRetryable(
            'ContainerMissing',
            `container "${e.container}" of ${e.name} does not exist on ${node.id}`,
          );
        }
        throw err;
      }
      // A retry after the recreate finds the new command: the first attempt's is the one to report.
      const previousCmd = before?.previousCmd ?? r.previousCmd;
      const previousModel =
        before?.previousModel !== undefined ? before.previousModel : modelOfCmd(e.type, r.previousCmd).model;
      const extra = { previousCmd, previousModel };
      // Recorded at once: a worker that dies from here on leaves the old command to the retry.
      heartbeat({
        phase: 'starting',
        elapsedMs: Date.now() - startedAt,
        lastLog: null,
        ...extra,
      } satisfies SlotProgress);
      const model = await waitReady(e, {
        want: r.servedModel,
        what: input.model,
        startedAt,
        timeoutMs: input.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS,
        extra,
      });
      return {
        engine: e.name,
        model,
        revision: input.revision ?? null,
        container: e.container,
        containerId: r.id,
        readyAfterMs: Date.now() - startedAt,
        previousCmd,
        previousModel,
        recreated: r.recreated,
      };
    },

    /**
     * Put one half of a slot pair in standby: `docker stop` with a 30 s grace, so the engine exits cleanly, which
     * health classification reads as "standby" while the partner serves. A half that is down but not cleanly (a model
     * that failed to load exits 1; a hung engine is killed, 137) is recreated unstarted (`docker create`, same
     * container otherwise), or the watcher would take it for a crash and restart it. Idempotent: a half already in
     * standby, or a missing container, is left as it is. `stopped` says whether this call changed anything.
     */
    async standbyEngine(input: { engine: string }): Promise<{ engine: string; stopped: boolean }> {
      const e = slotEngine(input.engine);
      let state = await runtimes.of(e.container).inspectOne(e.container);
      if (!state.exists || isCleanStop(state)) return { engine: e.name, stopped: false };
      const signal = cancellationSignal();
      heartbeat({ phase: 'stopping', container: e.container });
      try {
        if (state.running) {
          await runtimes.of(e.container).stop(e.container, { timeoutSec: 30, ...(signal ? { signal } : {}) });
          state = await runtimes.of(e.container).inspectOne(e.container);
        }
        if (state.exists && !isCleanStop(state)) {
          await runtimes
            .of(e.container)
            .recreate(e.container, (cmd) => [...cmd], { start: false, ...(signal ? { signal } : {}) });
        }
      } catch (err) {
        if (err instanceof NoSuchContainerError) return { engine: e.name, stopped: false };
        throw err;
      }
      return { engine: e.name, stopped: true };
    },

    /**
     * Bring a standby half back (a rollback after its container was stopped): `docker start`, then wait until the
     * engine is ready and lists its model. Idempotent: a running, ready engine only answers.
     */
    async startEngine(input: { engine: string; readyTimeoutMs?: number }): Promise<StartEngineResult> {
      const e = slotEngine(input.engine);
      const startedAt = Date.now();
      const before = await runtimes.of(e.container).inspectOne(e.container);
      if (!before.exists) {
        throw nonRetryable('ContainerMissing', `container "${e.container}" of ${e.name} does not exist on ${node.id}`);
      }
      const signal = cancellationSignal();
      if (!before.running) await runtimes.of(e.container).start(e.container, signal ? { signal } : {});
      const model = await waitReady(e, {
        what: 'its model',
        startedAt,
        timeoutMs: input.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS,
        extra: {},
      });
      return {
        engine: e.name,
        container: e.container,
        started: !before.running,
        model,
        readyAfterMs: Date.now() - startedAt,
      };
    },
  };
}

/** The canary slot activity object. */
export type CanarySlotActivities = ReturnType<typeof createCanarySlotActivities>;
