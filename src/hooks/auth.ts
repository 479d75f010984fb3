/**
 * Who may start recoveries through the receiver: a caller with the bearer token (what Alertmanager's http_config
 * sends), or one that signs the raw body with HMAC-SHA256 (for senders that can sign but not hold a token). Secrets
 * are read once, at start, and never logged; comparisons are constant-time.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';

/** Header carrying `sha256=<hex HMAC-SHA256 of the raw request body>`, keyed with hooks.hmacSecretFile. */
export const SIGNATURE_HEADER = 'x-gpuops-signature';

export interface HookSecrets {
  token?: Buffer;
  hmacSecret?: Buffer;
}

/** Read a secret file; trailing newlines (as `echo … > file` leaves) are not part of the secret. */
export function readSecret(file: string, what: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    // The path is configuration, not a secret; the content never appears in a message.
    throw new Error(`${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const secret = text.replace(/[\r\n]+$/, '');
  if (secret.trim() === '') throw new Error(`${what} ${file} is empty`);
  return Buffer.from(secret, 'utf8');
}

/** Load the configured secrets, failing fast when a file is missing or empty, or when neither is configured. */
export function loadHookSecrets(files: { tokenFile?: string; hmacSecretFile?: string }): HookSecrets {
  if (!files.tokenFile && !files.hmacSecretFile)
    throw new Error('hooks: set tokenFile or hmacSecretFile; the webhook receiver never runs unauthenticated');
  return {
    ...(files.tokenFile ? { token: readSecret(files.tokenFile, 'hooks.tokenFile') } : {}),
    ...(files.hmacSecretFile ? { hmacSecret: readSecret(files.hmacSecretFile, 'hooks.hmacSecretFile') } : {}),
  };
}

/**
 * Compare two secrets in time independent of where they differ. Both sides are hashed first so that
 * timingSafeEqual gets equal lengths and the comparison does not even leak the expected length.
 */
export function sameSecret(given: Buffer, expected: Buffer): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** The signature header value for a body, as a sender computes it (exported for senders' tests and tooling). */
export function signBody(secret: Buffer | string, body: Buffer | string): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

export type AuthResult = { ok: true; method: 'bearer' | 'hmac' } | { ok: false; why: string };

/**
 * Check a request: either credential configured and presented correctly admits it. `why` is for the log and the
 * 401 body; it never contains a credential.
 */
export function authenticate(
  secrets: HookSecrets,
  headers: { authorization?: string | undefined; signature?: string | undefined },
  rawBody: Buffer,
): AuthResult {
  if (secrets.token && headers.authorization !== undefined) {
    const m = /^Bearer[ \t]+(.+)$/i.exec(headers.authorization.trim());
    if (m?.[1] && sameSecret(Buffer.from(m[1], 'utf8'), secrets.token)) return { ok: true, method: 'bearer' };
  }
  if (secrets.hmacSecret && headers.signature !== undefined) {
    const m = /^sha256=([0-9a-f]{64})$/i.exec(headers.signature.trim());
    if (m?.[1]) {
      const expected = createHmac('sha256', secrets.hmacSecret).update(rawBody).digest();
      if (timingSafeEqual(Buffer.from(m[1], 'hex'), expected)) return { ok: true, method: 'hmac' };
    }
  }
  const offered = [
    headers.authorization !== undefined ? 'Authorization' : '',
    headers.signature !== undefined ? 'X-Gpuops-Signature' : '',
  ].filter(Boolean);
  return {
    ok: false,
    why: offered.length === 0 ? 'no credentials' : `invalid credentials (${offered.join(', ')})`,
  };
}
