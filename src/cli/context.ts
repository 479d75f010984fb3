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

/**
 * The input a command will send a workflow (its start input, or an Update's), checked with the workflow's own schema
 * from src/contracts: a bad one is a ValidationError (exit 2) naming the field and the rule. Answers the input as
 * given (the workflow parses it again and fills in its defaults). Call it inside `withInputs`' `inputs`, so nothing
 * has connected, let alone started, when it fails.
 */
export function workflowInput<S extends z.ZodType>(schema: S, input: z.input<S>, what: string): z.input<S> {
  parseOrThrow(schema, input, what);
  return input;
}

/**
 * Run a command that starts, signals or updates workflows: load the config, build everything it will send
 * (`inputs`, each through `workflowInput`), and only then connect and run `fn` with them. Bad input exits 2 without
 * a connection attempt, never 1 with a connection error, and never a started workflow that fails on its input.
 */
export async function withInputs<I, T>(
  opts: GlobalOptions,
  inputs: (loaded: LoadedConfig) => I,
  fn: (client: Client, inputs: I, loaded: LoadedConfig) => Promise<T>,
): Promise<T> {
  const loaded = loadConfig(opts.config);
  const checked = inputs(loaded);
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
    return await fn(client, checked, loaded);
  } finally {
    await client.connection.close();
  }
}

/** Run a command that needs a Temporal client and sends no workflow input of its own. */
export function withClient<T>(
  opts: GlobalOptions,
  fn: (client: Client, loaded: LoadedConfig) => Promise<T>,
): Promise<T> {
  return withInputs(
    opts,
    () => undefined,
    (client, _none, loaded) => fn(client, loaded),
  );
}
