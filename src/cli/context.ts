/** What every CLI command needs: the program and its global options, the validated config and a Temporal client. */
import { Command } from '@commander-js/extra-typings';
import type { Client } from '@temporalio/client';
import type { z } from 'zod';
import { loadConfig, type LoadedConfig } from '../config/load';
import { parseOrThrow } from '../domain/validation';
import { connectClient, resolveTargetOrDev } from '../temporal/connection';
import { gpuopsDataConverter } from '../temporal/codec';

/** The options every command takes (`gpuops -c FILE --json …`). */
export interface GlobalOptions {
  config?: string;
  json?: boolean;
}

/**
 * The bare gpuops program with its global options. Each command module registers its commands on it and reads the
 * global options with `program.opts()`, typed (by @commander-js/extra-typings) from the flags declared here.
 */
export function createProgram() {
  return new Command('gpuops')
    .description('Durable day-2 operations for self-hosted GPU inference nodes, on Temporal')
    .option('-c, --config <file>', 'gpuops.yaml (default: $GPUOPS_CONFIG, ./gpuops.yaml, examples/sandbox.yaml)')
    .option('--json', 'machine-readable output');
}
export type Program = ReturnType<typeof createProgram>;

/**
 * Validate a command's options at the boundary. Commander types them from the declared flags; every flag must be a
 * field of the zod schema (a flag the schema does not know fails to compile, not only at run time), and the schema
 * checks the values: a bad one exits 2 naming the flag and the rule.
 */
export function parseOptions<S extends z.ZodType, T extends { [K in keyof z.input<S>]?: unknown }>(
  schema: S,
  opts: T & Record<Exclude<keyof T, keyof z.input<S>>, never>,
  what = 'arguments',
): z.output<S> {
  return parseOrThrow(schema, opts, what);
}

export async function withClient<T>(
  opts: GlobalOptions,
  fn: (client: Client, loaded: LoadedConfig) => Promise<T>,
): Promise<T> {
  const loaded = loadConfig(opts.config);
  const target = resolveTargetOrDev(loaded.config);
  // Key files are read before dialling: a bad one is named as such, not as an unreachable server.
  const dataConverter = gpuopsDataConverter(loaded);
  let client: Client;
  try {
    // An operator waiting on a dead server wants to know in seconds, not after the SDK's 10 s default.
    client = await connectClient(target, { connectTimeoutMs: 3000, dataConverter });
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
