/**
 * The embedded Temporal dev server: `temporal server start-dev` with a SQLite file (history survives restarts),
 * the Web UI, and gpuops's search attributes registered at start. Where no CLI can be had, the SDK's own
 * download of the same dev server is the fallback.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadExeca } from '../hosts/exec';
import { Connection } from '@temporalio/client';
import { SEARCH_ATTRIBUTES, SEARCH_ATTRIBUTE_TYPES } from '../contracts';
import { freePort, portInUse } from '../net';
import { TemporalCliMissing, findTemporalCli } from './cli';

export interface DevServerOptions {
  /** Path to the temporal CLI, or null to use the SDK's download. */
  cli: string | null;
  ip?: string;
  port: number;
  uiPort: number;
  /** SQLite file; its directory is created. */
  dbFile: string;
  /** Server output goes here, not to the operator's terminal. */
  logFile: string;
  namespace?: string;
  headless?: boolean;
  readyTimeoutMs?: number;
  /** The Web UI's remote codec endpoint (`--ui-codec-endpoint`): gpuops's codec server, with encryption on. */
  uiCodecEndpoint?: string;
}

export interface DevServer {
  address: string;
  uiUrl: string | null;
  /** Stops the server and waits for it to exit (SIGTERM, then SIGKILL after 10 s). */
  stop(): Promise<void>;
}

export { freePort, portInUse };

/** Wait until the frontend answers GetSystemInfo. */
export async function waitForTemporal(address: string, timeoutMs: number, isDead?: () => string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    const dead = isDead?.();
    if (dead) throw new Error(dead);
    try {
      const conn = await Connection.connect({ address, connectTimeout: 1000 });
      try {
        await conn.workflowService.getSystemInfo({});
        return;
      } finally {
        await conn.close();
      }
    } catch (err) {
      last = err;
      await sleep(250);
    }
  }
  throw new Error(`Temporal at ${address} not ready after ${timeoutMs} ms: ${(last as Error)?.message ?? 'no answer'}`);
}

export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  const ip = opts.ip ?? '127.0.0.1';
  const address = `${ip}:${opts.port}`;
  if (await portInUse(opts.port, ip)) {
    throw new Error(
      `port ${opts.port} is already in use — is another gpuops or Temporal dev server running? ` +
        'Stop it, set temporal.dev.port in gpuops.yaml, or point TEMPORAL_ADDRESS at the running server.',
    );
  }
  mkdirSync(path.dirname(opts.dbFile), { recursive: true });
  mkdirSync(path.dirname(opts.logFile), { recursive: true });
  const uiUrl = opts.headless ? null : `http://localhost:${opts.uiPort}`;

  const cli = opts.cli;
  if (cli === null) return startViaSdkDownload({ ...opts, ip }, address, uiUrl);

  const saArgs = Object.entries(SEARCH_ATTRIBUTE_TYPES).flatMap(([k, t]) => ['--search-attribute', `${k}=${t}`]);
  const args = [
    'server',
    'start-dev',
    '--ip',
    ip,
    '--port',
    String(opts.port),
    '--db-filename',
    opts.dbFile,
    '--namespace',
    opts.namespace ?? 'default',
    '--log-level',
    'warn',
    ...(opts.headless ? ['--headless'] : ['--ui-port', String(opts.uiPort)]),
    ...(opts.uiCodecEndpoint && !opts.headless ? ['--ui-codec-endpoint', opts.uiCodecEndpoint] : []),
    ...saArgs,
  ];
  const { execa } = await loadExeca();
  const log = { file: opts.logFile, append: true } as const;
  // Own process group (detached) so a terminal Ctrl-C reaches gpuops first, which then stops the server in order.
  const child = execa(cli, args, { stdin: 'ignore', stdout: log, stderr: log, reject: false, detached: true });
  let exited: string | null = null;
  void child.then((r) => {
    exited = `temporal server start-dev exited (code ${r.exitCode ?? r.signal}); see ${opts.logFile}`;
  });
  await waitForTemporal(address, opts.readyTimeoutMs ?? 60_000, () => exited);
  return {
    address,
    uiUrl,
    async stop() {
      if (exited) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await child;
      clearTimeout(timer);
    },
  };
}

async function startViaSdkDownload(
  opts: DevServerOptions & { ip: string },
  address: string,
  uiUrl: string | null,
): Promise<DevServer> {
  // Loaded lazily: only this fallback needs the testing package's native download support.
  const { TestWorkflowEnvironment } = await import('@temporalio/testing');
  const env = await TestWorkflowEnvironment.createLocal({
    server: {
      executable: { type: 'cached-download' },
      ip: opts.ip,
      port: opts.port,
      ui: !opts.headless,
      ...(opts.headless ? {} : { uiPort: opts.uiPort }),
      dbFilename: opts.dbFile,
      namespace: opts.namespace ?? 'default',
      searchAttributes: Object.values(SEARCH_ATTRIBUTES),
    },
  }).catch((err: unknown) => {
    throw new TemporalCliMissing(
      `No temporal CLI was found, and the SDK's dev-server download failed (${(err as Error).message}).`,
    );
  });
  return { address, uiUrl, stop: () => env.teardown() };
}

/**
 * Options for a private, headless dev server on a free port with its SQLite file and log in `dir` — what tests,
 * benchmarks and the test run's own server use. Start it with startDevServer; restart it with the same options to
 * keep its history.
 */
export async function privateDevServerOptions(dir: string): Promise<DevServerOptions> {
  const cli = findTemporalCli();
  if (!cli)
    throw new TemporalCliMissing('A private Temporal dev server needs the temporal CLI (npm test installs it).');
  const port = await freePort();
  return {
    cli,
    port,
    uiPort: port + 1,
    headless: true,
    dbFile: path.join(dir, 'temporal.db'),
    logFile: path.join(dir, 'temporal.log'),
  };
}
