/**
 * Deployment pre-flight on the node: does the model fit the engine's GPUs under the memory cap (nvidia-smi now +
 * the engine's report of the model), does the download fit the model stores, and did Ollama put all of a loaded
 * model in VRAM (it silently runs what does not fit on the CPU).
 */
import type { EngineConfig, NodeConfig } from '../src/config/schema';
import type { DiskStatus } from '../src/domain/health';
import { checkDiskSpace, checkGpuMemory, type MemoryPreflight } from '../src/domain/preflight';
import { sameOllamaModel } from '../src/hosts/engines/ollama';
import { createEngineClient, type EngineClient } from '../src/hosts/engines/probe';
import type { NvidiaSmi } from '../src/hosts/nvidia-smi';
import { nonRetryable } from './activity-context';

export interface PreflightActivityDeps {
  node: NodeConfig;
  nvidiaSmi: NvidiaSmi;
  checkDisks: () => Promise<DiskStatus[]>;
  clientFor?: (engine: EngineConfig) => EngineClient;
}

/** Where a model comes from and what its metadata says, for the risk report. */
export interface ModelProvenance {
  source: string;
  /** First line of the license in the model's metadata; null when there is none. */
  license: string | null;
  family: string | null;
  parameterSize: string | null;
  quantization: string | null;
}

/**
 * The source a model reference names: Ollama `name:tag` → registry.ollama.ai/library/name, `user/name:tag` →
 * registry.ollama.ai/user/name, `hf.co/org/repo:quant` → huggingface.co/org/repo; an HF repo `org/name` (vLLM,
 * llama.cpp) → huggingface.co/org/name; a gguf file → local file.
 */
export function modelSource(engineType: EngineConfig['type'], model: string): string {
  if (engineType === 'ollama') {
    const name = model.replace(/:[^:/]*$/, '');
    if (/^(?:hf\.co|huggingface\.co)\//.test(name)) return `huggingface.co/${name.replace(/^[^/]+\//, '')}`;
    // host/namespace/model: Ollama reads a host only in a three-part name (two-part is namespace/model).
    if (name.split('/').length === 3) return name;
    if (name.includes('/')) return `registry.ollama.ai/${name}`;
    return `registry.ollama.ai/library/${name}`;
  }
  if (/\.gguf$/i.test(model) && !model.includes('/')) return `file/${model}`;
  return `huggingface.co/${model}`;
}

/** Result of checkModelOffload. */
export interface OffloadCheck {
  loaded: boolean;
  sizeBytes: number | null;
  vramBytes: number | null;
  /** Percent of the loaded model that runs on the CPU (0 when all of it is in VRAM). */
  cpuPct: number;
  detail: string;
}

export function createPreflightActivities({
  node,
  nvidiaSmi,
  checkDisks,
  clientFor = (e) => createEngineClient(e),
}: PreflightActivityDeps) {
  const engineNamed = (name: string): EngineConfig => {
    const e = node.engines.find((x) => x.name === name);
    if (!e) throw nonRetryable('UnknownEngine', `engine "${name}" is not configured on node ${node.id}`);
    return e;
  };

  return {
    /** Free space of the model stores against the policy's reserve (before a pull). */
    async preflightDisk(input: {
      minFreeGiB: number;
      downloadBytes?: number;
    }): Promise<{ ok: boolean; detail: string }> {
      return checkDiskSpace(await checkDisks(), input.downloadBytes ?? 0, input.minFreeGiB);
    },

    /**
     * Will the model fit the engine's GPUs under the cap? Ollama: its size from the engine (`/api/tags`) against
     * what nvidia-smi says is in use (minus the model itself when it is loaded already). vLLM / llama.cpp: the model
     * is loaded in its slot by now, so what nvidia-smi shows in use on the slot's GPUs is the measurement.
     */
    async preflightGpuMemory(input: { engine: string; model: string; memoryCapPct: number }): Promise<MemoryPreflight> {
      const engine = engineNamed(input.engine);
      if (engine.cpuOnly) {
        // A CPU engine (cpuOnly in gpuops.yaml, e.g. a llama-cpu container): GPU memory is not its budget.
        return {
          fits: true,
          neededMiB: null,
          usedMiB: 0,
          totalMiB: 0,
          capMiB: 0,
          afterPct: null,
          detail: `${engine.name} is a CPU engine (cpuOnly in gpuops.yaml): no GPU memory needed`,
        };
      }
      const smi = await nvidiaSmi.queryGpus();
      if (smi.error !== null) throw nonRetryable('GpuUnavailable', `nvidia-smi: ${smi.error}`);
      const wanted = engine.gpus.length > 0 ? engine.gpus : smi.gpus.map((g) => g.index);
      const gpus = smi.gpus
        .filter((g) => wanted.includes(g.index))
        .map((g) => ({ index: g.index, totalMiB: g.memoryTotalMiB, usedMiB: g.memoryUsedMiB }));
      const c = clientFor(engine);
      if (c.type !== 'ollama') {
        // vLLM preallocates its gpu_memory_utilization share and llama.cpp fails to load what does not fit: neither
        // offloads silently. The slot has loaded the model by now, so this is a measurement, not a refusal.
        const used = gpus.reduce((sum, g) => sum + (g.usedMiB ?? 0), 0);
        const total = gpus.reduce((sum, g) => sum + (g.totalMiB ?? 0), 0);
        const pct = total > 0 ? Math.round((used / total) * 1000) / 10 : null;
        return {
          fits: true,
          neededMiB: null,
          usedMiB: used,
          totalMiB: total,
          capMiB: Math.floor((total * input.memoryCapPct) / 100),
          afterPct: pct,
          detail:
            `${engine.type} loaded ${input.model} on GPU ${gpus.map((g) => g.index).join(',')}: ${pct ?? '?'}% of ` +
            'memory in use (the engine preallocates, and refuses a model that does not fit)',
        };
      }
      const [tags, ps] = await Promise.all([c.client.tags(), c.client.ps()]);
      const listed = tags.find((m) => sameOllamaModel(m.name, input.model));
      const running = ps.find((m) => sameOllamaModel(m.name, input.model));
      return checkGpuMemory({
        model: input.model,
        gpus,
        modelBytes: listed?.size ?? null,
        loadedVramBytes: running?.size_vram ?? null,
        capPct: input.memoryCapPct,
      });
    },

    /** Source, license and details of a pulled model (Ollama `/api/show`). */
    async modelProvenance(input: { engine: string; model: string }): Promise<ModelProvenance> {
      const engine = engineNamed(input.engine);
      const source = modelSource(engine.type, input.model);
      const c = clientFor(engine);
      if (c.type !== 'ollama') {
        return { source, license: null, family: null, parameterSize: null, quantization: null };
      }
      const show = await c.client.show(input.model);
      const license =
        show.license
          ?.split('\n')
          .find((l) => l.trim() !== '')
          ?.trim() ?? null;
      return {
        source,
        license,
        family: show.details?.family ?? null,
        parameterSize: show.details?.parameter_size ?? null,
        quantization: show.details?.quantization_level ?? null,
      };
    },

    /** After a load: how much of the model Ollama put in VRAM (`ollama ps` size_vram against size). */
    async checkModelOffload(input: { engine: string; model: string }): Promise<OffloadCheck> {
      const c = clientFor(engineNamed(input.engine));
      if (c.type !== 'ollama') {
        return {
          loaded: true,
          sizeBytes: null,
          vramBytes: null,
          cpuPct: 0,
          detail: 'the engine loads all layers on GPU',
        };
      }
      const running = (await c.client.ps()).find((m) => sameOllamaModel(m.name, input.model));
      if (running && engineNamed(input.engine).cpuOnly) {
        // Ollama on a CPU engine reports size_vram 0: all of it on the CPU is the design, not a silent offload.
        return {
          loaded: true,
          sizeBytes: running.size,
          vramBytes: running.size_vram,
          cpuPct: 0,
          detail: `${input.engine} is a CPU engine (cpuOnly in gpuops.yaml): ${input.model} runs on the CPU by design`,
        };
      }
      if (!running) {
        return { loaded: false, sizeBytes: null, vramBytes: null, cpuPct: 0, detail: `${input.model} is not loaded` };
      }
      const cpuPct = running.size > 0 ? Math.round(((running.size - running.size_vram) / running.size) * 1000) / 10 : 0;
      const gib = (b: number): string => `${(b / 1024 ** 3).toFixed(2)} GiB`;
      return {
        loaded: true,
        sizeBytes: running.size,
        vramBytes: running.size_vram,
        cpuPct: Math.max(0, cpuPct),
        detail:
          cpuPct > 0
            ? `Ollama runs ${cpuPct}% of ${input.model} on the CPU (${gib(running.size_vram)} of ${gib(running.size)} in VRAM)`
            : `all of ${input.model} is in VRAM (${gib(running.size_vram)})`,
      };
    },
  };
}

/** The pre-flight activity object. */
export type PreflightActivities = ReturnType<typeof createPreflightActivities>;
