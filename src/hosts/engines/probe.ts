/**
 * One health probe of one engine: reachability, health, version, models, loaded models and, on request, a tiny real
 * generation with a hard timeout. The generation is what catches an engine that answers /health but hangs on work.
 */
import type { EngineConfig } from '../../config/schema';
import type { EngineProbe } from '../../domain/health';
import { describeFetchError, EngineHttpError } from './http';
import { OllamaClient } from './ollama';
import { LlamaCppClient, loadedModelIds, VllmClient } from './openai-compat';

/** A client for any engine kind. */
export type EngineClient =
  | { type: 'ollama'; client: OllamaClient }
  | { type: 'vllm'; client: VllmClient }
  | { type: 'llamacpp'; client: LlamaCppClient };

/** The client for an engine's config (its apiKeyFile is read by the client on each call). */
export function createEngineClient(
  engine: Pick<EngineConfig, 'type' | 'url' | 'apiKeyFile'>,
  timeoutMs?: number,
): EngineClient {
  const opts = { ...(engine.apiKeyFile ? { apiKeyFile: engine.apiKeyFile } : {}), ...(timeoutMs ? { timeoutMs } : {}) };
  switch (engine.type) {
    case 'ollama':
      return { type: 'ollama', client: new OllamaClient(engine.url, opts) };
    case 'vllm':
      return { type: 'vllm', client: new VllmClient(engine.url, opts) };
    case 'llamacpp':
      return { type: 'llamacpp', client: new LlamaCppClient(engine.url, opts) };
  }
}

/** Options of probeEngine. */
export interface ProbeOptions {
  /** Run a tiny real generation (1–4 tokens) after the health checks. */
  generate: boolean;
  /** Timeout of each health call (default 5 s). */
  timeoutMs?: number;
  /** Hard limit on the test generation (default: timeoutMs, at least 1 s; given, at least 50 ms). */
  generateTimeoutMs?: number;
  /** Prompt for the test generation. */
  prompt?: string;
  /**
   * Epoch ms by which the whole probe (every call and the generation) must be done: each call's timeout is cut to
   * what is left, so a round of probes answers before its activity's start-to-close timeout.
   */
  deadline?: number;
}

/** Shortest test generation worth running, ms (a healthy engine on loopback needs about this for 2 tokens). */
const MIN_GENERATION_MS = 50;

/** Tokens the test generation asks for: enough to prove the engine produces output, cheap enough to run every probe. */
const PROBE_TOKENS = 2;

function message(err: unknown, timeoutMs: number): string {
  if (err instanceof EngineHttpError) return err.message;
  return describeFetchError(err, timeoutMs);
}

/**
 * Probe one engine. Never throws: every failure is reported in the EngineProbe (reachable/healthy/error, and
 * generation.ok=false for a hung or failing generation), because a probe round must see every engine.
 */
export async function probeEngine(
  engine: EngineConfig,
  opts: ProbeOptions,
  client?: EngineClient,
): Promise<EngineProbe> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const c = client ?? createEngineClient(engine, timeoutMs);
  const probe: EngineProbe = {
    name: engine.name,
    type: engine.type,
    url: engine.url,
    reachable: false,
    healthy: false,
    loading: false,
    version: null,
    models: [],
    loaded: [],
    latencyMs: 0,
    generation: null,
    error: null,
  };
  // Each call gets its own timeout, cut to what the deadline leaves (a spent deadline times the call out at once). The
  // health, models and version calls end by `callsEnd`, so the generation keeps its share of the deadline whatever
  // they take (a slow /version or /v1/models on a busy engine must not leave it a millisecond).
  const share = generationShare(opts, timeoutMs);
  const callsEnd = opts.deadline === undefined ? undefined : opts.deadline - share;
  // Whole milliseconds: timers and AbortSignal.timeout refuse a fraction (half an odd deadline is one).
  const left = (ms: number, end = opts.deadline): number =>
    end === undefined ? ms : Math.max(1, Math.floor(Math.min(ms, end - Date.now())));
  const call = (): { timeoutMs: number } => ({ timeoutMs: left(timeoutMs, callsEnd) });
  let routerListing = false;
  const started = performance.now();
  try {
    if (c.type === 'ollama') {
      // Ollama has no /health; /api/version answers as soon as the server is up.
      probe.version = await c.client.version(call());
      probe.latencyMs = Math.round(performance.now() - started);
      probe.reachable = true;
      probe.healthy = true;
      const [tags, ps] = await Promise.all([c.client.tags(call()), c.client.ps(call())]);
      probe.models = tags.map((m) => m.name);
      probe.loaded = ps.map((m) => m.name);
    } else {
      const h = await c.client.health(call());
      probe.latencyMs = Math.round(performance.now() - started);
      probe.reachable = true;
      probe.healthy = h.ok;
      probe.loading = h.loading;
      if (!h.ok) {
        probe.error = h.loading
          ? `loading: ${h.detail}`
          : `health answered HTTP ${h.status}${h.detail ? `: ${h.detail}` : ''}`;
        return probe;
      }
      // Version is informative only (an engine without /version or /props is still healthy): asked alongside the
      // models, never after them.
      const version = c.client.version(call()).catch(() => '');
      const entries = await c.client.modelEntries(call());
      probe.models = entries.map((m) => m.id);
      // vLLM and a single-model llama-server hold every model they list; a llama-server router lists what it could
      // load too, and says per model whether it is loaded.
      probe.loaded = loadedModelIds(entries);
      routerListing = entries.some((m) => m.status !== undefined);
      probe.version = (await version) || null;
    }
  } catch (err) {
    if (!probe.reachable) probe.latencyMs = Math.round(performance.now() - started);
    probe.error = message(err, timeoutMs);
    // A refused connection is an engine that is down; silence until the deadline is one that is there but frozen
    // (a real SIGSTOPped or `docker pause`d engine: the kernel still accepts the connection, nothing answers).
    if ((err as { name?: string }).name === 'TimeoutError') probe.unanswered = true;
    if (probe.reachable) probe.healthy = false;
    return probe;
  }

  if (opts.generate) {
    // The first loaded model unless the config names one: loading a cold model just to probe would itself be a
    // multi-second, VRAM-moving event. A llama-server router loads whatever a request names, so there even the
    // configured probe model is only used while it is loaded.
    const configured =
      engine.probeModel !== undefined && (!routerListing || probe.loaded.includes(engine.probeModel))
        ? engine.probeModel
        : undefined;
    const model = configured ?? probe.loaded[0];
    if (model !== undefined) probe.generation = await testGeneration(c, model, opts, timeoutMs, share, left);
  }
  return probe;
}

/** Least time the health, models and version calls get before the generation's share, ms (or the deadline's half). */
const CALLS_MIN_MS = 2000;

/** How much later than planned the calls may end (timers fire late) before the generation counts as squeezed, ms. */
const CALLS_SLACK_MS = 25;

/** The test generation's deadline as asked: the caller's, else the health timeout (at least 1 s). */
function requestedGenerationMs(opts: ProbeOptions, timeoutMs: number): number {
  return opts.generateTimeoutMs !== undefined ? Math.max(opts.generateTimeoutMs, 50) : Math.max(timeoutMs, 1000);
}

/**
 * The part of the probe's deadline kept for the test generation, ms: what it asks for, less what the calls before it
 * need at least (CALLS_MIN_MS, at most the health timeout or half the deadline). 0 without a generation or deadline.
 */
function generationShare(opts: ProbeOptions, timeoutMs: number): number {
  if (!opts.generate || opts.deadline === undefined) return 0;
  const total = Math.max(0, opts.deadline - Date.now());
  const calls = Math.min(timeoutMs, CALLS_MIN_MS, Math.floor(total / 2));
  return Math.max(0, Math.min(requestedGenerationMs(opts, timeoutMs), total - calls));
}

async function testGeneration(
  c: EngineClient,
  model: string,
  opts: ProbeOptions,
  timeoutMs: number,
  share: number,
  left: (ms: number) => number,
): Promise<NonNullable<EngineProbe['generation']>> {
  // A deadline the caller chose (a watcher's: a hung engine must not cost it a long timeout) is kept; either is cut
  // to what the probe's overall deadline leaves.
  const limit = left(requestedGenerationMs(opts, timeoutMs));
  if (opts.deadline !== undefined && limit < Math.max(MIN_GENERATION_MS, share - CALLS_SLACK_MS)) {
    // Less than the generation's share is left (or less than any generation needs): a failure now would read as a
    // hung engine and restart a busy, healthy one. Skipped is a blind spot, not a verdict.
    const why = `only ${limit} ms of the probe's deadline left, the generation's share is ${Math.round(share)} ms`;
    return { ok: false, ms: 0, error: why, skipped: true };
  }
  const prompt = opts.prompt ?? 'Reply with OK.';
  const started = performance.now();
  try {
    if (c.type === 'ollama') {
      await c.client.generate(
        { model, prompt, options: { num_predict: PROBE_TOKENS, temperature: 0 } },
        { timeoutMs: limit },
      );
    } else {
      await c.client.completion({ model, prompt, max_tokens: PROBE_TOKENS, temperature: 0 }, { timeoutMs: limit });
    }
    return { ok: true, ms: Math.round(performance.now() - started), error: null };
  } catch (err) {
    return { ok: false, ms: Math.round(performance.now() - started), error: message(err, limit) };
  }
}
