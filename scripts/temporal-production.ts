/**
 * The production Temporal target without Docker (src/temporal/production-server.ts): the same server release,
 * PostgreSQL persistence and visibility, schema jobs, environment and dynamic config as docker-compose.yaml.
 *
 *   npm run temporal:production -- build                 # go install temporal-server + temporal-sql-tool (cached)
 *   npm run temporal:production -- start [--dir D] [--port 7233] [--ip 127.0.0.1] [--namespace default]
 *                                          [--tls-dir D]  # mTLS: D/{ca.pem,server.pem,server.key}, made when missing
 *
 * `start` uses the PostgreSQL named by POSTGRES_SEEDS/DB_PORT/POSTGRES_USER/POSTGRES_PWD when set, otherwise a
 * private cluster under --dir; prints `READY <address>` once the namespace and search attributes are usable and runs
 * until SIGTERM/SIGINT (or stdin closing, with --stdin), then stops the server and a private cluster in order.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  ProductionTargetError,
  ensureServerBuild,
  ensureTlsFiles,
  startProductionServer,
} from '../src/temporal/production-server';

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

async function main(): Promise<number> {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      dir: { type: 'string' },
      port: { type: 'string' },
      ip: { type: 'string' },
      namespace: { type: 'string' },
      'tls-dir': { type: 'string' },
      stdin: { type: 'boolean' },
    },
  });
  const command = positionals[0];
  if (command === 'build') {
    const started = Date.now();
    const b = await ensureServerBuild({ log });
    log(
      `${b.built ? 'built' : 'already built'} in ${((Date.now() - started) / 1000).toFixed(1)} s:\n  ${b.server}\n  ${b.sqlTool}\n  ${b.postgresSchemaDir}`,
    );
    return 0;
  }
  if (command !== 'start') {
    log(
      'usage: temporal-production build | start [--dir D] [--port P] [--ip IP] [--namespace N] [--tls-dir D] [--stdin]',
    );
    return 2;
  }
  const dir = path.resolve(values.dir ?? mkdtempSync(path.join(os.tmpdir(), 'gpuops-temporal-')));
  const port = values.port === undefined ? undefined : Number(values.port);
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536))
    throw new ProductionTargetError(`--port ${values.port}: not a TCP port`);
  const tls = values['tls-dir'] ? await ensureTlsFiles(path.resolve(values['tls-dir']), log) : undefined;
  const build = await ensureServerBuild({ log });
  const server = await startProductionServer(build, {
    dir,
    ...(port ? { port } : {}),
    ...(values.ip ? { ip: values.ip } : {}),
    ...(values.namespace ? { namespace: values.namespace } : {}),
    ...tls?.server,
    log,
  });
  if (tls) {
    log(
      `clients: TEMPORAL_ADDRESS=${server.address} TEMPORAL_TLS_CA=${tls.files.caCert} ` +
        `TEMPORAL_TLS_CERT=${tls.files.clientCert} TEMPORAL_TLS_KEY=${tls.files.clientKey} ` +
        `TEMPORAL_TLS_SERVER_NAME=${tls.files.serverName}`,
    );
  } else {
    log(`clients: TEMPORAL_ADDRESS=${server.address}`);
  }
  process.stdout.write(`READY ${server.address}\n`);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (): void => {
      if (stopping) return;
      stopping = true;
      void server.stop().then(resolve);
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    if (values.stdin) {
      process.stdin.on('end', stop);
      process.stdin.resume();
    }
  });
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    // One line for a missing piece; anything else keeps its message (never a secret: none is put in one).
    log(`temporal-production: ${(err as Error).message}`);
    process.exit(err instanceof ProductionTargetError ? 1 : 2);
  },
);
