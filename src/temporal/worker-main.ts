/**
 * Shared entrypoint plumbing for the three worker processes: config, connection, graceful shutdown on
 * SIGINT/SIGTERM (the SDK's Runtime drains in-flight activities before run() resolves), and exit codes.
 */
import { DefaultLogger, Runtime, type LogLevel, type NativeConnection, type Worker } from '@temporalio/worker';
import { loadConfig, type LoadedConfig } from '../config/load';
import { ValidationError } from '../domain/validation';
import type { Client } from '@temporalio/client';
import { connectClient, connectWorker, resolveTargetOrDev } from './connection';

export interface WorkerContext {
  loaded: LoadedConfig;
  connection: NativeConnection;
  namespace: string;
  args: Map<string, string>;
  /** A Temporal client on its own connection (closed with the worker), for activities that query Temporal. */
  client(): Promise<Client>;
}

/** `--name value` / `--name=value` pairs; the worker CLIs are tiny, so no parser library. */
export function parseFlags(argv: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) out.set(a.slice(2, eq), a.slice(eq + 1));
    else out.set(a.slice(2), argv[i + 1] ?? '');
  }
  return out;
}

/**
 * The SDK logs every worker state change at INFO; operators want warnings and errors unless they ask for more
 * (GPUOPS_LOG_LEVEL=INFO|DEBUG|TRACE).
 */
export function installRuntimeLogger(env: NodeJS.ProcessEnv = process.env): void {
  const wanted = (env.GPUOPS_LOG_LEVEL ?? 'WARN').toUpperCase();
  const level: LogLevel = (['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'] as const).find((l) => l === wanted) ?? 'WARN';
  Runtime.install({ logger: new DefaultLogger(level) });
}

export function runWorkerMain(name: string, build: (ctx: WorkerContext) => Promise<Worker>): void {
  installRuntimeLogger();
  const run = async (): Promise<number> => {
    const loaded = loadConfig(process.env.GPUOPS_CONFIG);
    const target = resolveTargetOrDev(loaded.config);
    const connection = await connectWorker(target);
    let client: Client | undefined;
    try {
      const worker = await build({
        loaded,
        connection,
        namespace: target.namespace,
        args: parseFlags(process.argv.slice(2)),
        client: async () => (client ??= await connectClient(target)),
      });
      console.log(
        `${name} worker polling ${worker.options.taskQueue} on ${target.address} (namespace ${target.namespace})`,
      );
      await worker.run();
      console.log(`${name} worker stopped`);
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
      console.error(`gpuops ${name} worker: ${(err as Error).message}`);
      process.exitCode = err instanceof ValidationError ? 2 : 1;
    },
  );
}
