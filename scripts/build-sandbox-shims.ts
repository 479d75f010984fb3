/**
 * Build the sandbox node's shims (docker, nvidia-smi, qm, dmesg, systemctl, journalctl) into .gpuops/sandbox-bin/
 * when a source changed since the last build; `--force` rebuilds regardless. Run by scripts/bootstrap.mjs before
 * `npm start` and `npm test`.
 */
import { buildShims, SHIM_DIR, shimsUpToDate } from '../src/sandbox/shim-build';

if (process.argv.includes('--force') || !shimsUpToDate()) {
  buildShims();
  console.log(`gpuops: built the sandbox shims in ${SHIM_DIR}`);
}
