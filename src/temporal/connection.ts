/**
 * How gpuops reaches Temporal. With no address anywhere, gpuops runs its own embedded dev server; with
 * TEMPORAL_ADDRESS (or temporal.address in gpuops.yaml) it connects to that server, with optional mTLS and API
 * key. Secrets (key files, API keys) are read here, at connect time, and never logged: errors name the variable or
 * field and the file's path, never what is in it.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { Connection, Client } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import type { DataConverter } from '@temporalio/common';
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
  /** TLS with the system's CAs and no files (a server with a publicly trusted certificate); the CLI's name. */
  TEMPORAL_TLS: z.enum(['true', 'false', '1', '0']).optional(),
  TEMPORAL_API_KEY_FILE: z.string().min(1).optional(),
});

export interface TemporalTarget {
  /** host:port, or null when gpuops should run its embedded dev server. */
  address: string | null;
  namespace: string;
  /** TLS to the frontend: present means on. Files are paths (read at connect time), never their contents. */
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
  const tlsFlag = e.TEMPORAL_TLS === undefined ? undefined : e.TEMPORAL_TLS === 'true' || e.TEMPORAL_TLS === '1';
  const hasFiles = Object.values(tls).some((v) => v !== undefined);
  if (tlsFlag === false && hasFiles) {
    throw new Error(
      'TEMPORAL_TLS=false contradicts the TLS files set (TEMPORAL_TLS_* or temporal.tls): unset one or the other',
    );
  }
  const hasTls = tlsFlag ?? hasFiles;
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

export interface ConnectOptions {
  address: string;
  tls?:
    | { serverNameOverride?: string; serverRootCACertificate?: Buffer; clientCertPair?: { crt: Buffer; key: Buffer } }
    | true;
  apiKey?: string;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;
const PEM_KEY =
  /-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----[\s\S]+?-----END (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----/;
/** What each TLS file must hold. The messages never quote the file: a key is a secret. */
const TlsFileContent = {
  certFile: z.string().regex(PEM_CERT, { message: 'is not a PEM certificate (-----BEGIN CERTIFICATE-----)' }),
  keyFile: z
    .string()
    .regex(PEM_KEY, { message: 'is not a PEM private key (-----BEGIN … PRIVATE KEY-----)' })
    .refine((k) => !k.includes('ENCRYPTED'), { message: 'is an encrypted private key: gpuops needs it unencrypted' }),
  caFile: z.string().regex(PEM_CERT, { message: 'is not a PEM certificate bundle (-----BEGIN CERTIFICATE-----)' }),
} as const;
const TLS_VARIABLE = { certFile: 'TEMPORAL_TLS_CERT', keyFile: 'TEMPORAL_TLS_KEY', caFile: 'TEMPORAL_TLS_CA' } as const;

/** Read one TLS file, checked: a missing, unreadable or non-PEM file is named (variable and path), its text never. */
function readTlsFile(kind: keyof typeof TlsFileContent, file: string): Buffer {
  const where = `${TLS_VARIABLE[kind]} / temporal.tls.${kind} (${file})`;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(`${where}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'not readable' : code}`);
  }
  const r = TlsFileContent[kind].safeParse(text);
  if (!r.success) throw new Error(`${where}: ${r.error.issues.map((i) => i.message).join('; ')}`);
  return Buffer.from(text);
}

function connectOptions(target: TemporalTarget & { address: string }): ConnectOptions {
  const opts: ConnectOptions = { address: target.address };
  if (target.tls) {
    const { certFile, keyFile, caFile, serverName } = target.tls;
    opts.tls = {
      ...(serverName ? { serverNameOverride: serverName } : {}),
      ...(caFile ? { serverRootCACertificate: readTlsFile('caFile', caFile) } : {}),
      ...(certFile && keyFile
        ? { clientCertPair: { crt: readTlsFile('certFile', certFile), key: readTlsFile('keyFile', keyFile) } }
        : {}),
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

/**
 * The SDK connection options for a target (TLS files read and checked, API key read): for code that dials
 * Temporal with its own Connection (e.g. to register search attributes) and must honour the same TLS settings.
 */
export function temporalConnectOptions(target: TemporalTarget): ConnectOptions {
  return connectOptions(requireAddress(target));
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

/**
 * A client of the target. `dataConverter` is the config's (gpuopsDataConverter in ./codec): with temporal.encryption
 * set, every gpuops client must encode with it, or workers could not read what it starts.
 */
export async function connectClient(
  target: TemporalTarget,
  opts: { connectTimeoutMs?: number; dataConverter?: DataConverter | undefined } = {},
): Promise<Client> {
  const connection = await Connection.connect({
    ...connectOptions(requireAddress(target)),
    ...(opts.connectTimeoutMs ? { connectTimeout: opts.connectTimeoutMs } : {}),
  });
  return new Client({
    connection,
    namespace: target.namespace,
    ...(opts.dataConverter ? { dataConverter: opts.dataConverter } : {}),
  });
}

export async function connectWorker(target: TemporalTarget): Promise<NativeConnection> {
  return NativeConnection.connect(connectOptions(requireAddress(target)));
}
