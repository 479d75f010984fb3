/** Raw-HTTP helpers for the limit and fuzz tests: requests fetch cannot send (slow loris, unfinished bodies). */
import net from 'node:net';
import { NAMED_ISSUE } from './arbitraries';

export interface RawResult {
  /** Status of the first response, if one came before the connection closed. */
  status: number | null;
  /** How long until the server closed the connection, ms. */
  closedAfterMs: number;
}

/**
 * Open a connection to `url`, send `head` one byte every `byteGapMs` (a slow-loris client), then `tail` at once, and
 * keep the connection open until the server closes it (or `giveUpMs` passes: status null, closedAfterMs Infinity).
 */
export function rawRequest(
  url: string,
  opts: { head: string; byteGapMs?: number; tail?: string; giveUpMs: number },
): Promise<RawResult> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const started = Date.now();
    const socket = net.connect({ host: hostname, port: Number(port) });
    let received = '';
    let timer: NodeJS.Timeout | undefined;
    const done = (closed: boolean): void => {
      clearTimeout(timer);
      clearTimeout(giveUp);
      socket.destroy();
      const m = /^HTTP\/1\.1 (\d{3})/.exec(received);
      resolve({ status: m ? Number(m[1]) : null, closedAfterMs: closed ? Date.now() - started : Infinity });
    };
    const giveUp = setTimeout(() => done(false), opts.giveUpMs);
    socket.on('data', (d: Buffer) => {
      received += d.toString('latin1');
    });
    socket.on('close', () => done(true));
    socket.on('error', () => undefined);
    socket.on('connect', () => {
      let i = 0;
      const next = (): void => {
        if (socket.destroyed) return;
        if (i < opts.head.length) {
          socket.write(opts.head[i] ?? '');
          i += 1;
          timer = setTimeout(next, opts.byteGapMs ?? 0);
        } else if (opts.tail) socket.write(opts.tail);
      };
      if (opts.byteGapMs === undefined) {
        socket.write(opts.head + (opts.tail ?? ''));
      } else next();
    });
  });
}

/** A request head that never ends (no blank line): sent byte by byte it is a slow-loris client. */
export function endlessHead(path: string): string {
  return `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${'X-Pad: y\r\n'.repeat(200)}`;
}

/** A complete head announcing `length` body bytes, of which the caller sends fewer (an unfinished body). */
export function headWithBody(path: string, length: number, headers: Record<string, string> = {}): string {
  const extra = Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  return `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n${extra}\r\n`;
}

/** The timeouts the slow-client tests give a server: short, so a test takes seconds. */
export const SLOW_CLIENT_LIMITS = { headersTimeoutMs: 400, requestTimeoutMs: 800 };

/**
 * A slow-loris client (headers byte by byte) on `path` is cut off once the headers timeout passes, and a request
 * whose body stops short (`tail` of the 1000 bytes its head announces) gets 408 once the request timeout passes; the
 * server runs with SLOW_CLIENT_LIMITS.
 */
export async function expectSlowClientsCutOff(
  url: string,
  path: string,
  unfinished: { headers?: Record<string, string>; tail: string },
): Promise<void> {
  const { headersTimeoutMs, requestTimeoutMs } = SLOW_CLIENT_LIMITS;
  const loris = await rawRequest(url, { head: endlessHead(path), byteGapMs: 20, giveUpMs: 5000 });
  expect(loris.closedAfterMs).toBeGreaterThanOrEqual(headersTimeoutMs);
  expect(loris.closedAfterMs).toBeLessThan(headersTimeoutMs + 100 + 500);
  const cut = await rawRequest(url, {
    head: headWithBody(path, 1000, unfinished.headers),
    tail: unfinished.tail,
    giveUpMs: 5000,
  });
  expect(cut.status).toBe(408);
  expect(cut.closedAfterMs).toBeGreaterThanOrEqual(requestTimeoutMs);
  expect(cut.closedAfterMs).toBeLessThan(requestTimeoutMs + 200 + 500);
}

/** A fuzzed call's answer: never a 5xx; a 400 lists problems that each name the field; anything else is a 200. */
export function expectNamedRefusalOrOk(r: { status: number; json: Record<string, unknown> }): void {
  expect([r.status, r.status < 500]).toEqual([r.status, true]);
  if (r.status === 400) {
    expect(r.json.problems).toEqual(expect.any(Array));
    for (const p of r.json.problems as string[]) expect(p).toMatch(NAMED_ISSUE);
  } else {
    expect(r.status).toBe(200);
  }
}
