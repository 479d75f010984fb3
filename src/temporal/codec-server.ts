/**
 * `gpuops codec-server`: Temporal's Codec Server protocol over gpuops's payload codec, so the Web UI and
 * `temporal … --codec-endpoint` show encrypted payloads decoded. POST /encode and POST /decode (also under a
 * namespace segment, /<namespace>/decode, for the CLI's endpoint templating) take and answer proto3 JSON:
 * `{"payloads":[{"metadata":{"encoding":"<base64>"},"data":"<base64>"}]}`.
 *
 * Every call needs the bearer token (`Authorization: Bearer …`, what `--codec-auth` sends) or the session cookie
 * that GET/POST /login sets for a browser, whose Web UI cannot send a header of its own but does send cookies with
 * "Include cross-origin credentials". Browsers are let in from the configured UI origins only (CORS with
 * credentials); a request from any other origin is refused. The keys and the token never leave this process.
 */
import { createHmac } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { Payload } from '@temporalio/common';
import { resolveFrom, type LoadedConfig } from '../config/load';
import { ValidationError, formatIssues } from '../domain/validation';
import { readSecret, sameSecret } from '../hooks/auth';
import { HOOKS_LIMITS } from '../hooks/server';
import { fastifyLimits, refusalHandler, withLimits, type HttpLimits } from '../http-limits';
import { encryptionCodec, type EncryptionCodec } from './codec';

export interface CodecServerOptions {
  codec: EncryptionCodec;
  /** The bearer token callers must present (read from its file by the caller; never logged). */
  token: Buffer;
  /** host:port; port 0 picks a free one. */
  listen: string;
  /** Web UI origins (scheme://host:port) allowed to call from a browser. */
  corsOrigins: readonly string[];
  /** Request size and time limits; unset fields keep CODEC_LIMITS. */
  limits?: Partial<HttpLimits>;
  /** One line per refusal; never given a credential. */
  log?: (line: string) => void;
}

export interface CodecServer {
  url: string;
  close(): Promise<void>;
}

/** The codec server's limits: the webhook receiver's timeouts, bodies up to 8 MiB (one history page of payloads). */
export const CODEC_LIMITS: HttpLimits = { ...HOOKS_LIMITS, bodyLimitBytes: 8 * 1024 * 1024 };

/** Cookie a browser holds after /login: an HMAC of the token, so the cookie is not the token itself. */
export const SESSION_COOKIE = 'gpuops_codec';
const ALLOWED_HEADERS = 'Authorization, Content-Type, X-Namespace';
const base64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/, { message: 'must be base64' });
const BodySchema = z.object({
  payloads: z
    .array(z.object({ metadata: z.record(z.string(), base64).nullish(), data: base64.nullish() }))
    .max(10_000, { message: 'at most 10000 payloads per call' }),
});
type JsonPayload = z.infer<typeof BodySchema>['payloads'][number];

const fromJson = (p: JsonPayload): Payload => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
  data: Buffer.from(p.data ?? '', 'base64'),
});
const toJson = (p: Payload): { metadata: Record<string, string>; data: string } => ({
  metadata: Object.fromEntries(
    Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v ?? new Uint8Array()).toString('base64')]),
  ),
  data: Buffer.from(p.data ?? new Uint8Array()).toString('base64'),
});

function sessionValue(token: Buffer): string {
  return createHmac('sha256', token).update('gpuops codec-server session v1').digest('base64url');
}

function cookie(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return v.join('=');
  }
  return undefined;
}

const LOGIN_PAGE = `<!doctype html><meta charset="utf-8"><title>gpuops codec server</title>
<form method="post" action="login"><p>gpuops codec server: paste the token (codecServer.tokenFile) to let this
browser's Temporal UI decode payloads.</p><input type="password" name="token" autocomplete="off" size="60" autofocus>
<button>Log in</button></form>`;

export async function startCodecServer(opts: CodecServerOptions): Promise<CodecServer> {
  const log = opts.log ?? (() => undefined);
  const session = Buffer.from(sessionValue(opts.token));
  const origins = new Set(opts.corsOrigins);
  const authorised = (req: FastifyRequest): boolean => {
    const m = /^Bearer[ \t]+(.+)$/i.exec((req.headers.authorization ?? '').trim());
    if (m?.[1] && sameSecret(Buffer.from(m[1]), opts.token)) return true;
    const c = cookie(req.headers.cookie, SESSION_COOKIE);
    return c !== undefined && sameSecret(Buffer.from(c), session);
  };

  const limits = withLimits(CODEC_LIMITS, opts.limits);
  const app = Fastify({ logger: false, ...fastifyLimits(limits) });
  // fastify's own refusals (a body over the limit, JSON that does not parse) name what was wrong, as the body's do.
  app.setErrorHandler(refusalHandler(limits, log, 'codec-server'));
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) =>
    done(null, Object.fromEntries(new URLSearchParams(String(body)))),
  );

  // Runs before the body is read: a refused caller never gets its body parsed.
  app.addHook('onRequest', async (req, reply) => {
    const origin = req.headers.origin;
    // A browser sends Origin on every POST, the /login form's own (same-origin) one included.
    const sameOrigin = origin !== undefined && origin === `http://${req.headers.host ?? ''}`;
    if (origin !== undefined && !sameOrigin) {
      if (!origins.has(origin)) {
        log(`codec-server: refused origin ${origin}`);
        return reply.code(403).send({ error: `origin ${origin} is not allowed (codecServer.corsOrigins)` });
      }
      void reply
        .header('access-control-allow-origin', origin)
        .header('access-control-allow-credentials', 'true')
        .header('vary', 'Origin');
    }
    if (req.method === 'OPTIONS') {
      return reply
        .code(204)
        .header('access-control-allow-methods', 'POST, OPTIONS')
        .header('access-control-allow-headers', ALLOWED_HEADERS)
        .header('access-control-max-age', '600')
        .send();
    }
  });
  // On the matched routes themselves (onRequest, before the body is read), not on the raw URL: the router
  // percent-decodes paths, so a URL pattern (`/decod%65`) would let a caller past the check onto the route.
  const requireAuth = async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (authorised(req)) return;
    log(`codec-server: refused ${req.ip} ${req.url}: ${req.headers.authorization ? 'wrong token' : 'no credentials'}`);
    return reply.code(401).header('www-authenticate', 'Bearer').send({ error: 'unauthorized' });
  };

  const handle = (op: 'encode' | 'decode') => async (req: FastifyRequest, reply: FastifyReply) => {
    const parsed = BodySchema.safeParse(req.body);
    if (!parsed.success) return reply.code(400).send({ error: 'invalid body', problems: formatIssues(parsed.error) });
    try {
      const out = await opts.codec[op](parsed.data.payloads.map(fromJson));
      return { payloads: out.map(toJson) };
    } catch (err) {
      // A payload the codec cannot take (an unknown key id, tampered ciphertext): the codec says which and why.
      return reply.code(400).send({ error: `cannot ${op}`, problems: [`payloads: ${(err as Error).message}`] });
    }
  };
  for (const op of ['encode', 'decode'] as const) {
    app.post(`/${op}`, { onRequest: requireAuth }, handle(op));
    app.post(`/:namespace/${op}`, { onRequest: requireAuth }, handle(op));
  }
  app.get('/healthz', async () => ({ ok: true }));
  app.get('/login', async (_req, reply) => reply.type('text/html; charset=utf-8').send(LOGIN_PAGE));
  app.post('/login', async (req, reply) => {
    const token = (req.body as Record<string, unknown> | undefined)?.token;
    if (typeof token !== 'string' || !sameSecret(Buffer.from(token.trim()), opts.token)) {
      log(`codec-server: failed login from ${req.ip}`);
      return reply.code(401).type('text/plain').send('wrong token');
    }
    // SameSite=Strict still reaches this server from a UI on the same host (another port is the same site).
    return reply
      .header('set-cookie', `${SESSION_COOKIE}=${session.toString()}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200`)
      .type('text/plain')
      .send('logged in for 12 hours: the Temporal UI in this browser can now decode payloads');
  });

  const url = new URL(`http://${opts.listen}`);
  await app.listen({ host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || 80) });
  const addr = app.server.address() as AddressInfo;
  return {
    url: `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`,
    close: () => app.close(),
  };
}

/** What the command line may set over temporal.encryption.codecServer. */
export interface CodecServerOverrides {
  listen?: string | undefined;
  corsOrigins?: string[] | undefined;
  tokenFile?: string | undefined;
}

/**
 * The codec server of a config: its keys (temporal.encryption), and its listen address, UI origins and token file
 * from temporal.encryption.codecServer unless overridden (a token file from the command line is taken as given,
 * one from the config relative to the config file).
 */
export async function startConfiguredCodecServer(
  loaded: LoadedConfig,
  over: CodecServerOverrides = {},
  log?: (line: string) => void,
): Promise<CodecServer & { corsOrigins: readonly string[] }> {
  const enc = loaded.config.temporal.encryption;
  if (!enc) {
    throw new ValidationError(`config ${loaded.path}`, [
      'temporal.encryption: is required to run a codec server (keys and encryptWith)',
    ]);
  }
  const cs = enc.codecServer;
  const tokenFile = over.tokenFile ?? (cs ? resolveFrom(loaded.path, cs.tokenFile) : undefined);
  if (!tokenFile) {
    throw new ValidationError('arguments', [
      '--token-file: is required (or set temporal.encryption.codecServer.tokenFile): the codec server never runs unauthenticated',
    ]);
  }
  const corsOrigins = over.corsOrigins ?? cs?.corsOrigins ?? ['http://localhost:8233'];
  const server = await startCodecServer({
    codec: encryptionCodec(enc, loaded.path),
    token: readSecret(tokenFile, 'codec server token file'),
    listen: over.listen ?? cs?.listen ?? '127.0.0.1:8888',
    corsOrigins,
    ...(log ? { log } : {}),
  });
  return { ...server, corsOrigins };
}
