/**
 * Runs one Temporal dev server for a jest run (started by test/global-setup.ts as a child process, so it loads
 * execa with Node's own ESM support rather than through jest's transform). Prints `READY <address>` and stops the
 * server on SIGTERM or when stdin closes.
 */
import { privateDevServerOptions, startDevServer } from '../src/temporal/dev-server';

async function main(): Promise<void> {
  const server = await startDevServer(await privateDevServerOptions(process.argv[2] ?? '.'));
  process.stdout.write(`READY ${server.address}\n`);
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
