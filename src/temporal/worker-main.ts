/**
 * Shared entrypoint plumbing for the three worker processes: config, connection, graceful shutdown on
 * SIGINT/SIGTERM (the SDK's Runtime drains in-flight activities before run() resolves), and exit codes.
 */
import { DefaultLogger, Runtime, type LogLevel, type NativeConnection, type Worker } from '@temporalio/worker';
import { parseArgs } from 'node:util';
import { loadConfig, type LoadedConfig } from '../config/load';
import { ValidationError } from '../domain/validation';
import type { Client } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import { gpuopsDataConverter } from './codec';
import { connectClient, connectWorker, resolveTargetOrDev } from './connection';
import { METRICS_LISTEN_FLAG, metricsListenFor, prometheusExporter, type WorkerKind } from '../metrics/runtime';

export interface WorkerContext<F extends WorkerFlags = WorkerFlags> {
  loaded: LoadedConfig;
  connection: NativeConnection;
  namespace: string;
  /** The worker's flags as given (each one it declares, when given). */
  flags: { [K in keyof F]?: string };
  /** The config's data converter (the payload codec when temporal.encryption is set): the worker must use it. */
  dataConverter: DataConverter | undefined;
  /** A Temporal client on its own connection (closed with the worker), for activities that query Temporal. */
  client(): Promise<Client>;
}

/** The flags a worker takes: each a `--name <value>` string, with the placeholder its usage shows. */
export type WorkerFlags = Record<string, { value: string }>;

/**
 * A worker's flags, by node:util parseArgs: `--name value` or `--name=value`, each declared in `flags`. Anything
 * else (an unknown or misspelt flag, a flag without its value, a stray argument) is a ValidationError naming it.
 */
export function parseWorkerFlags<F extends WorkerFlags>(
  argv: readonly string[],
  flags: F,
): { [K in keyof F]?: string } {
  const usage =
    Object.entries(flags)
      .map(([name, f]) => `--${name} <${f.value}>`)
      .join(' ') || 'no flags';
  // Non-strict, with tokens: every problem is found and named here, instead of parseArgs stopping at the first.
  const { values, tokens } = parseArgs({
    args: [...argv],
    options: Object.fromEntries(Object.keys(flags).map((name) => [name, { type: 'string' as const }])),
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  const problems: string[] = [];
  /** The argument after an unknown flag: its value, most likely, and no second problem. */
  let valueOfUnknown = -1;
  for (const t of tokens) {
    if (t.kind === 'option-terminator') continue;
    if (t.kind === 'positional') {
      if (t.index !== valueOfUnknown) problems.push(`"${t.value}": unexpected argument (this worker takes ${usage})`);
    } else if (!Object.hasOwn(flags, t.name)) {
      problems.push(`${t.rawName}: unknown flag (this worker takes ${usage})`);
      if (t.inlineValue === undefined) valueOfUnknown = t.index + 1;
    } else if (t.value === undefined || t.value === '') {
      problems.push(`${t.rawName}: needs a value (${t.rawName} <${flags[t.name]?.value}>)`);
    } else if (!t.inlineValue && t.value.startsWith('-')) {
      problems.push(
        `${t.rawName}: needs a value, got the flag-like "${t.value}" (write ${t.rawName}=${t.value} if it is one)`,
      );
    }
  }
  if (problems.length > 0) throw new ValidationError('arguments', problems);
  return values as { [K in keyof F]?: string };
}

/**
 * Install the SDK's process-wide Runtime. The SDK logs every worker state change at INFO; operators want warnings
 * and errors unless they ask for more (GPUOPS_LOG_LEVEL=INFO|DEBUG|TRACE). With `metricsListen` the Runtime serves
 * Prometheus /metrics there (src/metrics/runtime.ts); an address it cannot bind is a ValidationError naming it.
 */
export function installRuntimeLogger(env: NodeJS.ProcessEnv = process.env, metricsListen?: string): void {
  const wanted = (env.GPUOPS_LOG_LEVEL ?? 'WARN').toUpperCase();
  const level: LogLevel = (['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'] as const).find((l) => l === wanted) ?? 'WARN';
  const logger = new DefaultLogger(level);
  if (metricsListen === undefined) {
    Runtime.install({ logger });
    return;
  }
  try {
    Runtime.install({ logger, telemetryOptions: { metrics: prometheusExporter(metricsListen) } });
    // The exporter binds when the Runtime is created: do it now, so a taken port fails here and not mid-connect.
    Runtime.instance();
  } catch (err) {
    throw new ValidationError('metrics', [`listen ${metricsListen}: ${(err as Error).message}`]);
  }
}

export function runWorkerMain<F extends WorkerFlags>(
  kind: WorkerKind,
  flagSpec: F,
  build: (ctx: WorkerContext<F>) => Promise<Worker>,
): void {
  const run = async (): Promise<number> => {
    // Flags first: a mistyped one fails at once, before the config is read or Temporal is dialled.
    const metricsFlag = { [METRICS_LISTEN_FLAG]: { value: 'ip:port|off' } };
    const { [METRICS_LISTEN_FLAG]: metricsListen, ...flags } = parseWorkerFlags(process.argv.slice(2), {
      ...flagSpec,
      ...metricsFlag,
    });
    const loaded = loadConfig(process.env.GPUOPS_CONFIG);
    // Nothing has touched the Runtime yet: it is installed once the metrics address is known.
    const listen = metricsListenFor(kind, loaded.config, metricsListen);
    installRuntimeLogger(process.env, listen);
    if (listen) console.log(`${kind} worker metrics on http://${listen}/metrics`);
    const target = resolveTargetOrDev(loaded.config);
    const dataConverter = gpuopsDataConverter(loaded);
    const connection = await connectWorker(target);
    let client: Client | undefined;
    try {
      const worker = await build({
        loaded,
        connection,
        namespace: target.namespace,
        flags: flags as { [K in keyof F]?: string },
        dataConverter,
        client: async () => (client ??= await connectClient(target, { dataConverter })),
      });
      console.log(
        `${kind} worker polling ${worker.options.taskQueue} on ${target.address} (namespace ${target.namespace})`,
      );
      await worker.run();
      console.log(`${kind} worker stopped`);
      return 0;
    } finally {
      await client?.connection.close();
      await connection.close();
    }
  };
  run().then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      console.error(`gpuops ${kind} worker: ${(err as Error).message}`);
      process.exitCode = err instanceof ValidationError ? 2 : 1;
    },
  );
}
