/**
 * How gpuops reaches Temporal. With no address anywhere, gpuops runs its own embedded dev server; with
 * TEMPORAL_ADDRESS (or temporal.address in gpuops.yaml) it connects to that server, with optional mTLS and API
 * key. Secrets (key files, API keys) are read here, at connect time, and never logged.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { Connection, Client } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import type { Config } from '../config/schema';
import { parseOrThrow } from '../domain/validation';

const EnvSchema = z.object({
  TEMPORAL_ADDRESS: z
    .string()
    .regex(/^[^\s:]+:\d+$/, { message: 'must be host:port' })
    .optional(),
  TEMPORAL_NAMESPACE: z.string().min(1).optional(),
  TEMPORAL_TLS_CERT: z.string().min(1).optional(),
  TEMPORAL_TLS_KEY: z.string().min(1).optional(),
  TEMPORAL_TLS_CA: z.string().min(1).optional(),
  TEMPORAL_TLS_SERVER_NAME: z.string().min(1).optional(),
  TEMPORAL_API_KEY_FILE: z.string().min(1).optional(),
});

export interface TemporalTarget {
  /** host:port, or null when gpuops should run its embedded dev server. */
  address: string | null;
  namespace: string;
  tls?: { certFile?: string; keyFile?: string; caFile?: string; serverName?: string };
  /** Where the API key lives (never the key itself). */
  apiKey?: { env: string } | { file: string };
}

/** Merge environment over config. Env names follow the Temporal CLI's (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, …). */
export function resolveTemporalTarget(config: Config, env: NodeJS.ProcessEnv = process.env): TemporalTarget {
  // An exported-but-empty variable (TEMPORAL_ADDRESS=) means unset, as it does for the temporal CLI.
  const set = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const e = parseOrThrow(EnvSchema, set, 'environment');
  const t = config.temporal;
  const tls = {
    certFile: e.TEMPORAL_TLS_CERT ?? t.tls?.certFile,
    keyFile: e.TEMPORAL_TLS_KEY ?? t.tls?.keyFile,
    caFile: e.TEMPORAL_TLS_CA ?? t.tls?.caFile,
    serverName: e.TEMPORAL_TLS_SERVER_NAME ?? t.tls?.serverName,
  };
  if ((tls.certFile === undefined) !== (tls.keyFile === undefined)) {
    throw new Error('temporal.tls: certFile and keyFile must be set together (TEMPORAL_TLS_CERT / TEMPORAL_TLS_KEY)');
  }
  const hasTls = Object.values(tls).some((v) => v !== undefined);
  const apiKey = e.TEMPORAL_API_KEY_FILE
    ? { file: e.TEMPORAL_API_KEY_FILE }
    : t.apiKeyFile
      ? { file: t.apiKeyFile }
      : set.TEMPORAL_API_KEY
        ? { env: 'TEMPORAL_API_KEY' }
        : t.apiKeyEnv
          ? { env: t.apiKeyEnv }
          : undefined;
  return {
    address: e.TEMPORAL_ADDRESS ?? t.address ?? null,
    namespace: e.TEMPORAL_NAMESPACE ?? t.namespace,
    ...(hasTls ? { tls } : {}),
    ...(apiKey ? { apiKey } : {}),
  };
}

interface ConnectOptions {
  address: string;
  tls?:
    | { serverNameOverride?: string; serverRootCACertificate?: Buffer; clientCertPair?: { crt: Buffer; key: Buffer } }
    | true;
  apiKey?: string;
}

function connectOptions(target: TemporalTarget & { address: string }): ConnectOptions {
  const opts: ConnectOptions = { address: target.address };
  if (target.tls) {
    const { certFile, keyFile, caFile, serverName } = target.tls;
    opts.tls = {
      ...(serverName ? { serverNameOverride: serverName } : {}),
      ...(caFile ? { serverRootCACertificate: readFileSync(caFile) } : {}),
      ...(certFile && keyFile ? { clientCertPair: { crt: readFileSync(certFile), key: readFileSync(keyFile) } } : {}),
    };
  }
  if (target.apiKey) {
    const key =
      'env' in target.apiKey ? process.env[target.apiKey.env] : readFileSync(target.apiKey.file, 'utf8').trim();
    if (!key)
      throw new Error(
        `Temporal API key: ${'env' in target.apiKey ? `$${target.apiKey.env}` : target.apiKey.file} is empty`,
      );
    opts.apiKey = key;
    // API keys are only accepted over TLS.
    opts.tls ??= true;
  }
  return opts;
}

function requireAddress(target: TemporalTarget): TemporalTarget & { address: string } {
  if (!target.address) throw new Error('no Temporal address: set TEMPORAL_ADDRESS or run `gpuops up`');
  return target as TemporalTarget & { address: string };
}

/**
 * The target, with the embedded dev server's address (temporal.dev.port on loopback) when none is configured:
 * what the CLI and workers use to reach the server `gpuops up` runs.
 */
export function resolveTargetOrDev(
  config: Config,
  env: NodeJS.ProcessEnv = process.env,
): TemporalTarget & { address: string } {
  const t = resolveTemporalTarget(config, env);
  return { ...t, address: t.address ?? `127.0.0.1:${config.temporal.dev.port}` };
}

export async function connectClient(target: TemporalTarget, opts: { connectTimeoutMs?: number } = {}): Promise<Client> {
  const connection = await Connection.connect({
    ...connectOptions(requireAddress(target)),
    ...(opts.connectTimeoutMs ? { connectTimeout: opts.connectTimeoutMs } : {}),
  });
  return new Client({ connection, namespace: target.namespace });
}

export async function connectWorker(target: TemporalTarget): Promise<NativeConnection> {
  return NativeConnection.connect(connectOptions(requireAddress(target)));
}
