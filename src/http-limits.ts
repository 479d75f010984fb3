/**
 * Size and time limits of every HTTP server gpuops runs (the router, the webhook receiver, the sandbox's simulated
 * engines and Proxmox API), as fastify and node:http options. Without them fastify reads bodies up to 1 MiB but
 * waits forever: its requestTimeout and connectionTimeout default to 0, so one client that sends its headers a byte
 * at a time (slow loris), or never finishes its body, holds a socket and a parser for good.
 */
import type { FastifyReply, FastifyRequest, FastifyServerOptions } from 'fastify';
import type { ServerOptions } from 'node:http';

/** The limits of one server. */
export interface HttpLimits {
  /** Largest request body in bytes; a larger one is answered 413 without being read (by Content-Length) or kept. */
  bodyLimitBytes: number;
  /** Time to receive the request headers, ms; then 408 and the connection is closed (node:http headersTimeout). */
  headersTimeoutMs: number;
  /**
   * Time to receive the whole request, headers and body, ms; then 408 and close (node:http requestTimeout). It ends
   * when the request has been read: the response, however long it streams, is not under it.
   */
  requestTimeoutMs: number;
  /** How long an idle keep-alive connection stays open between requests, ms. */
  keepAliveTimeoutMs: number;
  /**
   * Socket inactivity (nothing read or written) after which the connection is destroyed, ms; 0 for none. It also
   * ends a response a client stopped reading (the writes stall, nothing moves).
   */
  idleTimeoutMs: number;
}

/** The sandbox's simulated services (not product endpoints, but bounded all the same). */
export const SANDBOX_HTTP_LIMITS: HttpLimits = {
  bodyLimitBytes: 1024 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  keepAliveTimeoutMs: 5_000,
  idleTimeoutMs: 120_000,
};

/** The fastify options that enforce `limits`. */
export function fastifyLimits(limits: HttpLimits): Pick<
  FastifyServerOptions,
  'bodyLimit' | 'requestTimeout' | 'keepAliveTimeout' | 'connectionTimeout'
> & {
  http: ServerOptions;
} {
  // node:http refuses a headers timeout longer than the request timeout.
  const headersTimeout = Math.min(limits.headersTimeoutMs, limits.requestTimeoutMs);
  return {
    bodyLimit: limits.bodyLimitBytes,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    connectionTimeout: limits.idleTimeoutMs,
    http: {
      headersTimeout,
      requestTimeout: limits.requestTimeoutMs,
      // node:http looks for expired requests every this often (default 30 s, which would stretch a 10 s headers
      // timeout to 40 s); a quarter of the shortest timeout keeps the overshoot small for a few µs per check.
      connectionsCheckingInterval: Math.max(25, Math.min(30_000, Math.floor(headersTimeout / 4))),
    },
  };
}

/** `base` with the overrides a caller (a test, a flag) gave; undefined fields keep the default. */
export function withLimits(base: HttpLimits, over: Partial<HttpLimits> | undefined): HttpLimits {
  const out = { ...base };
  for (const [k, v] of Object.entries(over ?? {}) as [keyof HttpLimits, number | undefined][])
    if (v !== undefined) out[k] = v;
  return out;
}

/**
 * A fastify error handler for a JSON API: its own refusals (a body over the limit, a bad Content-Length, JSON that
 * does not parse) answered in the API's `{error, problems}` shape, each problem naming what was wrong; anything else
 * is a 500 that says only "internal error" (the message goes to `log`, which never gets a credential).
 */
export function refusalHandler(limits: HttpLimits, log: (line: string) => void, name: string) {
  return (err: { statusCode?: number; code?: string; message: string }, _req: FastifyRequest, reply: FastifyReply) => {
    const status = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status >= 500) log(`${name}: ${err.message}`);
    const problem =
      err.code === 'FST_ERR_CTP_BODY_TOO_LARGE'
        ? `(body): must be at most ${limits.bodyLimitBytes} bytes`
        : `(request): ${status < 500 ? err.message : 'internal error'}`;
    return reply.code(status).send({ error: 'invalid request', problems: [problem] });
  };
}
