/**
 * Runs one Temporal dev server for a jest run (started by test/global-setup.ts as a child process, so it loads
 * execa with Node's own ESM support rather than through jest's transform). Prints `READY <address>` and stops the
 * server on SIGTERM or when stdin closes.
 *
 * With TEMPORAL_TARGET=production (jest.production.config.mjs) it runs the production target instead: the
 * PostgreSQL-backed temporal-server that docker-compose.yaml runs (src/temporal/production-server.ts), with mTLS on
 * its frontend from certificates made in `<dir>/tls`; it then prints `READY <address> TLS <dir>/tls`, and every
 * client and worker of the run connects with the client certificate there (test/helpers/env.ts testTarget).
 */
import { privateDevServerOptions, startDevServer } from '../src/temporal/dev-server';
import path from 'node:path';
import { ensureTlsFiles, startProductionTarget } from '../src/temporal/production-server';

async function main(): Promise<void> {
  const dir = process.argv[2] ?? '.';
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const tlsDir = path.join(dir, 'tls');
  const server =
    process.env.TEMPORAL_TARGET === 'production'
      ? await startProductionTarget({ dir, log, ...(await ensureTlsFiles(tlsDir, log)).server })
      : await startDevServer(await privateDevServerOptions(dir));
  process.stdout.write(`READY ${server.address}${'tls' in server && server.tls ? ` TLS ${tlsDir}` : ''}\n`);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void server.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.resume();
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exit(1);
});
