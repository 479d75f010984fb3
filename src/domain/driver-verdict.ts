/**
 * The driver's verdict on a GPU (NVML's GPU recovery action) and the rung it calls for. Classification follows it
 * before the Xid table: the driver has seen the GPU's state, the table only guesses from the Xid number. Pure; safe
 * in workflows.
 */
import type { GpuRecoveryAction } from './health';
import type { Rung } from './rungs';

/** Each verdict as nvidia-smi prints it (`-q`, `-q -x` and `--query-gpu=gpu_recovery_action`). */
export const RECOVERY_ACTION_WORDS: Readonly<Record<GpuRecoveryAction, string>> = {
  none: 'None',
  reset: 'Reset',
  reboot: 'Reboot',
  'drain-p2p': 'Drain P2P',
  'drain-and-reset': 'Drain and Reset',
};

/**
 * The rung each verdict but None calls for:
 * - Reset → reset-gpu.
 * - Drain and Reset → reset-gpu: the rung stops the GPU's engines before the reset (the drain) and starts them after.
 * - Reboot → restart-vm: the driver itself says a GPU reset will not do.
 * - Drain P2P → restart-container: the GPU is sound but its peer-to-peer traffic must stop; the processes holding
 *   peer mappings are the engines, and restarting them ends those mappings without touching the GPU.
 */
export const RECOVERY_ACTION_RUNGS: Readonly<Record<Exclude<GpuRecoveryAction, 'none'>, Rung>> = {
  reset: 'reset-gpu',
  'drain-and-reset': 'reset-gpu',
  reboot: 'restart-vm',
  'drain-p2p': 'restart-container',
};

const BY_WORDS = new Map(
  Object.entries(RECOVERY_ACTION_WORDS).map(([action, words]) => [words.toLowerCase(), action as GpuRecoveryAction]),
);

/**
 * Read the driver's words: a known verdict, or null with the words kept as `raw` when gpuops does not know them.
 * `words` null (the driver does not report it, [N/A]) is null without raw. Case and inner spacing do not matter.
 */
export function parseRecoveryAction(words: string | null): { action: GpuRecoveryAction | null; raw?: string } {
  if (words === null) return { action: null };
  const action = BY_WORDS.get(words.trim().replace(/\s+/g, ' ').toLowerCase());
  return action === undefined ? { action: null, raw: words.trim() } : { action };
}
