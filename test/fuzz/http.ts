/** Raw-HTTP helpers for the limit and fuzz tests: requests fetch cannot send (slow loris, unfinished bodies). */
import net from 'node:net';

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
