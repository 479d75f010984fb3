/**
 * Pre-flight checks of a deployment, before a model version is loaded: will it fit the GPU under the memory cap, and
 * will the download fit the model store. Pure; safe in workflows.
 */

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * VRAM a model needs once loaded, from its size on disk: the weights plus about 20% for the KV cache at the engine's
 * default context and the CUDA graphs (Ollama's own estimate for a Q4 model at num_ctx 2048 lands within a few % of
 * this; a long context needs more).
 */
export function estimateVramBytes(modelBytes: number): number {
  return Math.ceil(modelBytes * 1.2);
}

export interface GpuMemory {
  index: number;
  totalMiB: number | null;
  usedMiB: number | null;
}

export interface MemoryPreflightInput {
  model: string;
  /** The engine's GPUs as nvidia-smi reports them now. */
  gpus: GpuMemory[];
  /** Size on disk (engine report); the need is estimated from it unless `neededBytes` is known. */
  modelBytes: number | null;
  /** VRAM the engine reports the model takes once loaded, when it is loaded already (then it is in `used`). */
  loadedVramBytes: number | null;
  capPct: number;
}

export interface MemoryPreflight {
  fits: boolean;
  neededMiB: number | null;
  usedMiB: number;
  totalMiB: number;
  capMiB: number;
  /** Percent of the GPUs' memory in use with the model loaded. */
  afterPct: number | null;
  detail: string;
}

/**
 * Does the model fit: memory in use now (minus the model itself, if it is loaded already) plus what it needs, at
 * most `capPct` % of the engine's GPUs' total. Unknown size or unreadable GPUs do not pass silently: they fail, since
 * Ollama would otherwise quietly put what does not fit on the CPU.
 */
export function checkGpuMemory(input: MemoryPreflightInput): MemoryPreflight {
  const gpus = input.gpus.filter((g) => g.totalMiB !== null && g.usedMiB !== null);
  const totalMiB = gpus.reduce((s, g) => s + (g.totalMiB ?? 0), 0);
  const capMiB = Math.floor((totalMiB * input.capPct) / 100);
  const base = { totalMiB, capMiB };
  if (gpus.length === 0 || totalMiB === 0) {
    return {
      ...base,
      fits: false,
      neededMiB: null,
      usedMiB: 0,
      afterPct: null,
      detail: 'nvidia-smi reported no memory figures for the engine GPUs: cannot show the model fits',
    };
  }
  const loadedMiB = input.loadedVramBytes ? Math.ceil(input.loadedVramBytes / MiB) : 0;
  const usedMiB = Math.max(0, gpus.reduce((s, g) => s + (g.usedMiB ?? 0), 0) - loadedMiB);
  if (input.modelBytes === null) {
    return {
      ...base,
      fits: false,
      neededMiB: null,
      usedMiB,
      afterPct: null,
      detail: `the engine reports no size for ${input.model}: cannot show it fits`,
    };
  }
  const neededMiB = Math.ceil(estimateVramBytes(input.modelBytes) / MiB);
  const after = usedMiB + neededMiB;
  const afterPct = Math.round((after / totalMiB) * 1000) / 10;
  const fits = after <= capMiB;
  const gib = (m: number): string => `${(m / 1024).toFixed(1)} GiB`;
  const detail =
    `${input.model} needs about ${gib(neededMiB)} (${gib(input.modelBytes / MiB)} on disk + 20%); ` +
    `${gib(usedMiB)} of ${gib(totalMiB)} in use on GPU ${gpus.map((g) => g.index).join(',')}; ` +
    `together ${afterPct}% ${fits ? '≤' : '>'} the ${input.capPct}% cap (${gib(capMiB)})`;
  return { ...base, fits, neededMiB, usedMiB, afterPct, detail };
}

export interface DiskSpace {
  path: string;
  totalBytes: number;
  freeBytes: number;
}

/** Every model store keeps at least `minFreeGiB` free after `downloadBytes` more land in it. */
export function checkDiskSpace(
  stores: DiskSpace[],
  downloadBytes: number,
  minFreeGiB: number,
): { ok: boolean; detail: string } {
  const reserve = minFreeGiB * GiB;
  const short = stores.filter((d) => d.freeBytes - downloadBytes < reserve);
  const gib = (b: number): string => `${(b / GiB).toFixed(1)} GiB`;
  if (short.length === 0) {
    return {
      ok: true,
      detail:
        stores.length === 0
          ? 'no model store is configured or exists yet: nothing to check'
          : stores.map((d) => `${d.path}: ${gib(d.freeBytes)} free`).join('; '),
    };
  }
  return {
    ok: false,
    detail: short
      .map(
        (d) =>
          `${d.path} has ${gib(d.freeBytes)} free; ${downloadBytes > 0 ? `${gib(downloadBytes)} more to download and ` : ''}` +
          `the policy keeps ${gib(reserve)} free (minFreeGiB ${minFreeGiB})`,
      )
      .join('; '),
  };
}
