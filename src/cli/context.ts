/** What every CLI command needs: the validated config and a Temporal client. */
import type { Client } from '@temporalio/client';
import { loadConfig, type LoadedConfig } from '../config/load';
import { connectClient, resolveTargetOrDev } from '../temporal/connection';

export interface GlobalOptions {
  config?: string;
  json?: boolean;
}

export async function withClient<T>(
  opts: GlobalOptions,
  fn: (client: Client, loaded: LoadedConfig) => Promise<T>,
): Promise<T> {
  const loaded = loadConfig(opts.config);
  const target = resolveTargetOrDev(loaded.config);
  let client: Client;
  try {
    // An operator waiting on a dead server wants to know in seconds, not after the SDK's 10 s default.
    client = await connectClient(target, { connectTimeoutMs: 3000 });
    await client.connection.workflowService.getSystemInfo({});
  } catch (err) {
    throw new Error(
      `cannot reach Temporal at ${target.address} (${(err as Error).message}). Is \`npm start\` (gpuops up) running?`,
    );
  }
  try {
    return await fn(client, loaded);
  } finally {
    await client.connection.close();
  }
}
