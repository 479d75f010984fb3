/**
 * The test run's secret registry. Every secret a test makes (router admin token, hooks token and HMAC key, restic
 * password, Proxmox token secret, notifier URL, engine API key) comes from testSecret(), which gives it a random,
 * recognisable value and appends {name, value, file} to `$GPUOPS_TEST_RUN_DIR/secrets.jsonl` (the run directory
 * test/global-setup.ts makes). test/global-teardown.ts then scans everything the run left for every registered value
 * and for the common prefix, so a secret made without registering is still caught (test/helpers/secret-scan.ts).
 * Without a run directory (a unit run with a no-op global setup) the values are made the same way, unregistered.
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';

/** Every free-form test secret starts with this, so the scan finds one that was never registered. */
export const TEST_SECRET_PREFIX = 'gpuops-test-secret-';
export const RUN_DIR_ENV = 'GPUOPS_TEST_RUN_DIR';
export const REGISTRY_FILE = 'secrets.jsonl';

export interface RegisteredSecret {
  /** What the secret is (`router-admin-token`, `restic-password`…): findings name it, never print the value. */
  name: string;
  value: string;
  /** The secret's own file, the one place it belongs (not scanned). */
  file?: string;
}

export type SecretFormat = 'token' | 'uuid';

function freshValue(name: string, format: SecretFormat): string {
  return format === 'uuid' ? randomUUID() : `${TEST_SECRET_PREFIX}${name}-${randomBytes(12).toString('hex')}`;
}

/**
 * A fresh secret, registered. `uuid` keeps a format the consumer requires (a Proxmox API token secret is a UUID);
 * such a value has no prefix, so only its registration finds it.
 */
export function testSecret(name: string, format: SecretFormat = 'token'): string {
  const value = freshValue(name, format);
  registerSecret({ name, value });
  return value;
}

/** Write a fresh secret to `file` (mode 0600, trailing newline as `echo` leaves) and return the value. */
export function writeTestSecret(file: string, name: string, format: SecretFormat = 'token'): string {
  const value = freshValue(name, format);
  writeSecretFile(file, name, value);
  return value;
}

/** Register a secret made elsewhere (by gpuops itself, e.g. `gpuops up`'s restic password). */
export function registerSecret(s: RegisteredSecret): void {
  const dir = process.env[RUN_DIR_ENV];
  if (!dir) return;
  // One short O_APPEND write per line: parallel test workers never interleave within a line.
  appendFileSync(path.join(dir, REGISTRY_FILE), `${JSON.stringify(s)}\n`);
}

/** Write a secret whose value the test chooses (a notifier URL around a fresh token) and register it with its file. */
export function writeSecretFile(file: string, name: string, value: string): string {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, `${value}\n`, { mode: 0o600 });
  registerSecret({ name, value, file });
  return file;
}
