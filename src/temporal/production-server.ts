/**
 * A production-shaped Temporal cluster without Docker: the same `temporal-server` release, PostgreSQL persistence and
 * visibility, schema tool, environment and dynamic config as docker-compose.yaml — built from source with Go, run as
 * a plain process. Used by `npm run temporal:production` (operators, CI) and by the production test target
 * (TEMPORAL_TARGET=production, jest.production.config.mjs).
 *
 * Pieces, each usable alone:
 * - ensureServerBuild: `go install` of cmd/server and cmd/tools/sql into the tool cache, reused once built;
 * - ensurePostgres: the PostgreSQL named by POSTGRES_SEEDS/DB_PORT/POSTGRES_USER/POSTGRES_PWD, or a private cluster
 *   (initdb/pg_ctl in a directory of ours, as the postgres user when we are root: PostgreSQL refuses root);
 * - applySchema: temporal-sql-tool create / setup-schema / update-schema, exactly as compose's temporal-schema job;
 * - startProductionServer: `temporal-server start` with compose's environment (the server's embedded config
 *   template reads it), optionally with mTLS on the frontend, then the namespace and gpuops's search attributes.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time';
import { SEARCH_ATTRIBUTE_TYPES } from '../contracts';
import { PROJECT_ROOT } from '../config/load';
import { freePort } from '../net';

const run = promisify(execFile);

/** The Temporal server release gpuops is tested on; docker-compose.yaml's TEMPORAL_VERSION default is the same. */
export const TEMPORAL_SERVER_VERSION = '1.32.2';
const SERVER_MODULE = 'go.temporal.io/server';

/** The gpuops.yaml-independent dynamic config the compose cluster mounts (deploy/temporal/dynamicconfig). */
export const DYNAMIC_CONFIG_FILE = path.join(PROJECT_ROOT, 'deploy', 'temporal', 'dynamicconfig', 'gpuops.yaml');

/** One-line, actionable: what is missing and how to get it. No stack trace is needed to act on it. */
export class ProductionTargetError extends Error {
  override name = 'ProductionTargetError';
}

type Log = (line: string) => void;

/** The tool cache (same rule as the sandbox's engine supply): $GPUOPS_TOOLS_DIR, else ~/.cache/gpuops. */
export function toolCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.GPUOPS_TOOLS_DIR) return path.resolve(env.GPUOPS_TOOLS_DIR);
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'gpuops');
}

export interface ServerBuild {
  version: string;
  /** `temporal-server` (cmd/server). */
  server: string;
  /** `temporal-sql-tool` (cmd/tools/sql). */
  sqlTool: string;
  /** The release's schema/postgresql/v12 directory (temporal/ and visibility/ with their versioned migrations). */
  postgresSchemaDir: string;
}

export function serverBuildPaths(version = TEMPORAL_SERVER_VERSION, env: NodeJS.ProcessEnv = process.env): ServerBuild {
  const dir = path.join(toolCacheDir(env), 'temporal-server', `v${version}`);
  return {
    version,
    server: path.join(dir, 'bin', 'temporal-server'),
    sqlTool: path.join(dir, 'bin', 'temporal-sql-tool'),
    postgresSchemaDir: path.join(dir, 'schema', 'postgresql', 'v12'),
  };
}

function findGo(env: NodeJS.ProcessEnv): string {
  const candidates = [
    env.GO,
    ...(env.PATH ?? '').split(path.delimiter).map((d) => d && path.join(d, 'go')),
    '/usr/local/go/bin/go',
  ];
  const found = candidates.find((c): c is string => !!c && existsSync(c));
  if (!found)
    throw new ProductionTargetError(
      `building temporal-server ${TEMPORAL_SERVER_VERSION} needs Go (go.temporal.io/server requires go >= 1.26): ` +
        'install it (https://go.dev/dl, or apt-get install golang) or set GO=/path/to/go',
    );
  return found;
}

/**
 * temporal-server and temporal-sql-tool for `version`, built with `go install` into the tool cache when not there
 * yet (minutes on two cores, cold; GOCACHE and GOMODCACHE are Go's defaults, so a rebuild after a cache wipe is warm).
 * The release's PostgreSQL schema files are copied next to the binaries from the module cache.
 */
export async function ensureServerBuild(
  opts: { version?: string; log?: Log; env?: NodeJS.ProcessEnv } = {},
): Promise<ServerBuild & { built: boolean }> {
  const env = opts.env ?? process.env;
  const log = opts.log ?? (() => undefined);
  const paths = serverBuildPaths(opts.version, env);
  const ready = (): boolean =>
    [paths.server, paths.sqlTool, path.join(paths.postgresSchemaDir, 'temporal', 'versioned')].every((p) =>
      existsSync(p),
    );
  if (ready()) return { ...paths, built: false };

  const go = findGo(env);
  const dir = path.dirname(path.dirname(paths.server));
  const staging = `${dir}.partial-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(path.join(staging, 'bin'), { recursive: true });
  const goEnv = {
    ...env,
    GOBIN: path.join(staging, 'bin'),
    // The server's go.mod asks for a newer patch release than many installed Go toolchains; `auto` fetches that
    // toolchain from the Go module proxy (a Go module like any other) instead of refusing.
    GOTOOLCHAIN: env.GOTOOLCHAIN && env.GOTOOLCHAIN !== 'local' ? env.GOTOOLCHAIN : 'auto',
  };
  const at = `@v${paths.version}`;
  log(`temporal-server ${paths.version}: go install (cold builds take minutes) → ${dir}`);
  const started = Date.now();
  try {
    await run(go, ['install', `${SERVER_MODULE}/cmd/server${at}`, `${SERVER_MODULE}/cmd/tools/sql${at}`], {
      env: goEnv,
      maxBuffer: 64 * 1024 * 1024,
    });
    const { stdout } = await run(go, ['mod', 'download', '-json', `${SERVER_MODULE}${at}`], { env: goEnv });
    const moduleDir = (JSON.parse(stdout) as { Dir?: string }).Dir;
    if (!moduleDir) throw new Error(`go mod download did not say where ${SERVER_MODULE}${at} is`);
    cpSync(path.join(moduleDir, 'schema', 'postgresql', 'v12'), path.join(staging, 'schema', 'postgresql', 'v12'), {
      recursive: true,
    });
  } catch (err) {
    rmSync(staging, { recursive: true, force: true });
    const e = err as { stderr?: string; message: string };
    const last = (e.stderr ?? e.message).trim().split('\n').slice(-3).join(' | ');
    throw new ProductionTargetError(`building temporal-server ${paths.version} failed: ${last}`);
  }
  renameSync(path.join(staging, 'bin', 'server'), path.join(staging, 'bin', 'temporal-server'));
  renameSync(path.join(staging, 'bin', 'sql'), path.join(staging, 'bin', 'temporal-sql-tool'));
  // The module cache is read-only; the copy need not be.
  await run('chmod', ['-R', 'u+w', path.join(staging, 'schema')]);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(path.dirname(dir), { recursive: true });
  renameSync(staging, dir);
  log(`temporal-server ${paths.version}: built in ${Math.round((Date.now() - started) / 1000)} s`);
  if (!ready()) throw new ProductionTargetError(`temporal-server build in ${dir} is incomplete`);
  return { ...paths, built: true };
}

// ---------------------------------------------------------------------------------------------------------------
// PostgreSQL

export interface Postgres {
  host: string;
  port: number;
  user: string;
  password: string;
  /** A private cluster we started (and stop), or an existing server we only use. */
  private: boolean;
  stop(): Promise<void>;
}

function postgresBinDir(env: NodeJS.ProcessEnv): string {
  if (env.PG_BINDIR) return env.PG_BINDIR;
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => existsSync(path.join(root, v, 'bin', 'initdb')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  const dir = versions[0] ? path.join(root, versions[0], 'bin') : undefined;
  const onPath = (env.PATH ?? '').split(path.delimiter).find((d) => d && existsSync(path.join(d, 'initdb')));
  const found = dir ?? onPath;
  if (!found)
    throw new ProductionTargetError(
      'no PostgreSQL server binaries (initdb, pg_ctl) found: apt-get install postgresql, set PG_BINDIR, or point ' +
        'POSTGRES_SEEDS/DB_PORT/POSTGRES_USER/POSTGRES_PWD at a running server',
    );
  return found;
}

/**
 * The PostgreSQL to put Temporal on. With POSTGRES_SEEDS set (compose's variable names: POSTGRES_SEEDS, DB_PORT,
 * POSTGRES_USER, POSTGRES_PWD), that server, which must already let the user create databases. Otherwise a private
 * cluster in `dir` on a free loopback port, with a superuser `temporal` and a random password (password
 * authentication over TCP, as a real server would have it). Root cannot run PostgreSQL, so as root the cluster
 * runs as the `postgres` user (or $GPUOPS_PG_RUN_AS).
 */
export async function ensurePostgres(
  dir: string,
  opts: { log?: Log; env?: NodeJS.ProcessEnv } = {},
): Promise<Postgres> {
  const env = opts.env ?? process.env;
  const log = opts.log ?? (() => undefined);
  if (env.POSTGRES_SEEDS) {
    const user = env.POSTGRES_USER;
    const password = env.POSTGRES_PWD;
    if (!user || password === undefined)
      throw new ProductionTargetError('POSTGRES_SEEDS is set: set POSTGRES_USER and POSTGRES_PWD too');
    return {
      host: env.POSTGRES_SEEDS,
      port: Number(env.DB_PORT ?? 5432),
      user,
      password,
      private: false,
      stop: async () => undefined,
    };
  }
  const bin = postgresBinDir(env);
  const asRoot = process.getuid?.() === 0;
  const runAs = asRoot ? (env.GPUOPS_PG_RUN_AS ?? 'postgres') : null;
  let uid: number | undefined;
  let gid: number | undefined;
  if (runAs) {
    try {
      uid = Number((await run('id', ['-u', runAs])).stdout.trim());
      gid = Number((await run('id', ['-g', runAs])).stdout.trim());
    } catch {
      throw new ProductionTargetError(
        `running as root, and PostgreSQL refuses to run as root: create a user "${runAs}" (the Debian postgresql ` +
          'package does) or set GPUOPS_PG_RUN_AS to an unprivileged user',
      );
    }
  }
  const pgDir = path.join(dir, 'postgresql');
  mkdirSync(pgDir, { recursive: true });
  const data = path.join(pgDir, 'data');
  const socketDir = path.join(pgDir, 'run');
  mkdirSync(socketDir, { recursive: true });
  const pwfile = path.join(pgDir, 'pwfile');
  // A cluster made by an earlier start in the same --dir is started again, with the password it was made with.
  const existing = existsSync(path.join(data, 'PG_VERSION'));
  const password = existing ? readFileSync(pwfile, 'utf8').trim() : randomBytes(18).toString('base64url');
  if (!existing) writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  if (uid !== undefined && gid !== undefined) {
    // The postgres user must reach its directory: let it through ours (search permission only, on those of its
    // ancestors others cannot search yet), and own its own.
    for (let d = path.resolve(dir); d !== path.dirname(d); d = path.dirname(d)) {
      const st = statSync(d);
      if (st.mode & 0o001) continue;
      if (st.uid !== process.getuid?.()) break;
      chmodSync(d, (st.mode & 0o7777) | 0o011);
    }
    for (const p of [pgDir, socketDir, pwfile]) chownSync(p, uid, gid);
  }
  const as = (cmd: string, args: string[]): [string, string[]] =>
    runAs ? ['runuser', ['-u', runAs, '--', path.join(bin, cmd), ...args]] : [path.join(bin, cmd), args];
  const port = await freePort();
  const exec = async (cmd: string, args: string[]): Promise<void> => {
    const [c, a] = as(cmd, args);
    try {
      await run(c, a, { cwd: pgDir });
    } catch (err) {
      const e = err as { stderr?: string; stdout?: string; message: string };
      const detail = (e.stderr || e.stdout || e.message).trim().split('\n').slice(-2).join(' | ');
      throw new ProductionTargetError(`PostgreSQL ${cmd} failed: ${detail}`);
    }
  };
  log(`PostgreSQL: private cluster in ${data} on 127.0.0.1:${port}${runAs ? ` (as ${runAs})` : ''}`);
  if (!existing)
    await exec('initdb', [
      '-D',
      data,
      '-U',
      'temporal',
      `--pwfile=${pwfile}`,
      '--auth-local=trust',
      '--auth-host=scram-sha-256',
      '-E',
      'UTF8',
      '--locale=C',
    ]);
  // A throwaway test cluster: durability of the test database buys nothing, so fsync is off. Each of the
  // server's four services opens its own pools (default + visibility), more than PostgreSQL's default 100.
  const settings = [
    `-c listen_addresses=127.0.0.1`,
    `-c port=${port}`,
    `-c unix_socket_directories=${socketDir}`,
    '-c max_connections=300',
    '-c fsync=off',
    '-c synchronous_commit=off',
    '-c full_page_writes=off',
  ].join(' ');
  await exec('pg_ctl', [
    '-D',
    data,
    '-l',
    path.join(pgDir, 'postgresql.log'),
    '-o',
    settings,
    '-w',
    '-t',
    '60',
    'start',
  ]);
  return {
    host: '127.0.0.1',
    port,
    user: 'temporal',
    password,
    private: true,
    stop: () => exec('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']).catch(() => undefined),
  };
}

export interface DatabaseNames {
  /** Temporal's own store; compose: temporal. */
  temporal: string;
  /** The visibility store; compose: temporal_visibility. */
  visibility: string;
}

export const DEFAULT_DATABASES: DatabaseNames = { temporal: 'temporal', visibility: 'temporal_visibility' };

/** The SQL_* environment compose's temporal-schema job gives temporal-sql-tool. */
export function schemaToolEnvironment(
  pg: Pick<Postgres, 'host' | 'port' | 'user' | 'password'>,
): Record<string, string> {
  return {
    SQL_PLUGIN: 'postgres12',
    SQL_HOST: pg.host,
    SQL_PORT: String(pg.port),
    SQL_USER: pg.user,
    SQL_PASSWORD: pg.password,
  };
}

/**
 * Create both databases (tolerated when they exist) and bring their schemas to this release's, with the same
 * temporal-sql-tool commands and SQL_* environment as compose's temporal-schema job. Idempotent.
 */
export async function applySchema(
  build: ServerBuild,
  pg: Postgres,
  dbs: DatabaseNames = DEFAULT_DATABASES,
): Promise<void> {
  const env = { ...process.env, ...schemaToolEnvironment(pg) };
  for (const [db, dir] of [
    [dbs.temporal, 'temporal'],
    [dbs.visibility, 'visibility'],
  ] as const) {
    for (const args of [
      ['--db', db, 'create'],
      ['--db', db, 'setup-schema', '-v', '0.0'],
      ['--db', db, 'update-schema', '-d', path.join(build.postgresSchemaDir, dir, 'versioned')],
    ]) {
      try {
        await run(build.sqlTool, args, { env });
      } catch (err) {
        const e = err as { stderr?: string; stdout?: string; message: string };
        const out = `${e.stdout ?? ''}${e.stderr ?? ''}`;
        // `create` on an existing database is fine: the job runs on every start.
        if (args[2] === 'create' && /already exists/.test(out)) continue;
        throw new ProductionTargetError(
          `temporal-sql-tool ${args.slice(2).join(' ')} on ${db} failed: ${(out || e.message).trim().split('\n').slice(-2).join(' | ')}`,
        );
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// TLS material for tests

export interface TlsFiles {
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** The name the server certificate is issued for (also in its SANs: localhost, 127.0.0.1). */
  serverName: string;
}

/**
 * A private CA, a server certificate for localhost/127.0.0.1/temporal and a client certificate, made with openssl
 * in `dir`: what the mTLS tests use. Operators bring their own (README: Production, TLS).
 */
export async function makeTlsFiles(dir: string): Promise<TlsFiles> {
  mkdirSync(dir, { recursive: true });
  const f = (n: string): string => path.join(dir, n);
  const openssl = async (args: string[]): Promise<void> => {
    try {
      await run('openssl', args, { cwd: dir });
    } catch (err) {
      const e = err as { code?: string; stderr?: string; message: string };
      throw new ProductionTargetError(
        e.code === 'ENOENT'
          ? 'making test certificates needs openssl: apt-get install openssl'
          : `openssl ${args[0]} failed: ${(e.stderr ?? e.message).trim().split('\n').slice(-1)[0]}`,
      );
    }
  };
  const days = ['-days', '2'];
  await openssl([
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
    ...days,
    '-subj',
    '/CN=gpuops test CA',
  ]);
  writeFileSync(
    f('server.ext'),
    'subjectAltName=DNS:localhost,DNS:temporal,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n',
  );
  writeFileSync(f('client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const [name, cn] of [
    ['server', 'localhost'],
    ['client', 'gpuops-worker'],
  ] as const) {
    await openssl([
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      f(`${name}.key`),
      '-out',
      f(`${name}.csr`),
      '-subj',
      `/CN=${cn}`,
    ]);
    await openssl([
      'x509',
      '-req',
      '-in',
      f(`${name}.csr`),
      '-CA',
      f('ca.pem'),
      '-CAkey',
      f('ca.key'),
      '-CAcreateserial',
      '-out',
      f(`${name}.pem`),
      ...days,
      '-extfile',
      f(`${name}.ext`),
    ]);
  }
  return tlsFilesIn(dir);
}

/** The file names makeTlsFiles writes in a directory (what `--tls-dir` and the test target read). */
export function tlsFilesIn(dir: string): TlsFiles {
  const f = (n: string): string => path.join(dir, n);
  return {
    caCert: f('ca.pem'),
    serverCert: f('server.pem'),
    serverKey: f('server.key'),
    clientCert: f('client.pem'),
    clientKey: f('client.key'),
    serverName: 'localhost',
  };
}

/**
 * The certificates in `dir` (makeTlsFiles' names), made there first when any is missing, as the server options
 * (frontend mTLS, and the client certificate its start-up checks present) and the client's files.
 */
export async function ensureTlsFiles(
  dir: string,
  log: Log = () => undefined,
): Promise<{ files: TlsFiles; server: Pick<ProductionServerOptions, 'tls' | 'clientCert'> }> {
  let files = tlsFilesIn(dir);
  const { serverName: _name, ...paths } = files;
  if (!Object.values(paths).every((p) => existsSync(p))) {
    log(`TLS: no certificates in ${dir}; making a private CA, server and client certificate there (openssl)`);
    files = await makeTlsFiles(dir);
  }
  return {
    files,
    server: {
      tls: {
        caCert: files.caCert,
        serverCert: files.serverCert,
        serverKey: files.serverKey,
        serverName: files.serverName,
      },
      clientCert: { cert: readFileSync(files.clientCert), key: readFileSync(files.clientKey) },
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// The server

/** mTLS on the frontend (and internode), in the server's TEMPORAL_TLS_* terms (docker/config_template). */
export interface ServerTls {
  caCert: string;
  serverCert: string;
  serverKey: string;
  serverName: string;
}

export interface ProductionServerOptions {
  /** Working directory: the private PostgreSQL cluster, the server's log. */
  dir: string;
  /** Frontend gRPC port (compose: 7233); a free one when omitted. The server's other ports are always free ones. */
  port?: number;
  /** Bind address (compose: 0.0.0.0 inside the container; loopback here). */
  ip?: string;
  namespace?: string;
  /** Database names, so two servers can share one PostgreSQL (the mTLS test does). */
  databases?: DatabaseNames;
  tls?: ServerTls;
  /** With tls: the client certificate the start-up checks (namespace, search attributes) present. */
  clientCert?: { cert: Buffer; key: Buffer };
  /** An existing PostgreSQL (the test target shares one between its servers); otherwise ensurePostgres(dir). */
  postgres?: Postgres;
  log?: Log;
  readyTimeoutMs?: number;
}

export interface ProductionServer {
  address: string;
  namespace: string;
  postgres: Postgres;
  logFile: string;
  /** Client TLS options for connecting to it (the server's CA and name), when it runs with mTLS. */
  tls?: ServerTls;
  /** Stop the server (SIGTERM, then SIGKILL after 15 s), then a private PostgreSQL cluster it started. */
  stop(): Promise<void>;
  /** Stop only the server process, keeping PostgreSQL (for restarting it on the same data). */
  stopServer(): Promise<void>;
}

/**
 * The environment compose gives the `temporal` service (docker-compose.yaml), with this host's addresses, ports and
 * database. test/compose.test.ts holds the two to each other: a key compose sets must be set here to the same
 * value, unless it is a host-specific one (seeds, password, bind address, paths).
 */
export function serverEnvironment(opts: {
  pg: Pick<Postgres, 'host' | 'port' | 'user' | 'password'>;
  ip: string;
  ports: Record<
    | 'frontend'
    | 'frontendHttp'
    | 'frontendMembership'
    | 'history'
    | 'historyMembership'
    | 'matching'
    | 'matchingMembership'
    | 'worker'
    | 'workerMembership',
    number
  >;
  databases: DatabaseNames;
  tls?: ServerTls;
  dynamicConfigFile?: string;
}): Record<string, string> {
  const { pg, ports, tls } = opts;
  return {
    DB: 'postgres12',
    DB_PORT: String(pg.port),
    POSTGRES_SEEDS: pg.host,
    POSTGRES_USER: pg.user,
    POSTGRES_PWD: pg.password,
    DBNAME: opts.databases.temporal,
    VISIBILITY_DBNAME: opts.databases.visibility,
    BIND_ON_IP: opts.ip,
    NUM_HISTORY_SHARDS: '16',
    DYNAMIC_CONFIG_FILE_PATH: opts.dynamicConfigFile ?? DYNAMIC_CONFIG_FILE,
    LOG_LEVEL: 'warn',
    FRONTEND_GRPC_PORT: String(ports.frontend),
    FRONTEND_HTTP_PORT: String(ports.frontendHttp),
    FRONTEND_MEMBERSHIP_PORT: String(ports.frontendMembership),
    HISTORY_GRPC_PORT: String(ports.history),
    HISTORY_MEMBERSHIP_PORT: String(ports.historyMembership),
    MATCHING_GRPC_PORT: String(ports.matching),
    MATCHING_MEMBERSHIP_PORT: String(ports.matchingMembership),
    WORKER_GRPC_PORT: String(ports.worker),
    WORKER_MEMBERSHIP_PORT: String(ports.workerMembership),
    ...(tls
      ? {
          // One CA and one certificate for the cluster (upstream's tls-simple layout): the frontend presents it to
          // clients, the services to each other, and the internal worker as its client certificate.
          TEMPORAL_TLS_REQUIRE_CLIENT_AUTH: 'true',
          TEMPORAL_TLS_SERVER_CA_CERT: tls.caCert,
          TEMPORAL_TLS_SERVER_CERT: tls.serverCert,
          TEMPORAL_TLS_SERVER_KEY: tls.serverKey,
          TEMPORAL_TLS_FRONTEND_CERT: tls.serverCert,
          TEMPORAL_TLS_FRONTEND_KEY: tls.serverKey,
          TEMPORAL_TLS_CLIENT1_CA_CERT: tls.caCert,
          TEMPORAL_TLS_CLIENT2_CA_CERT: tls.caCert,
          TEMPORAL_TLS_INTERNODE_SERVER_NAME: tls.serverName,
          TEMPORAL_TLS_FRONTEND_SERVER_NAME: tls.serverName,
        }
      : {}),
  };
}

/**
 * A free port below 32768. The server records its services' ports in cluster_membership, whose PostgreSQL column is
 * a smallint: a kernel-chosen ephemeral port (32768 and up) fails with "out of range for type smallint".
 */
async function membershipSafePort(ip: string, taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const p = 20_000 + Math.floor(Math.random() * 12_000);
    if (taken.has(p)) continue;
    const free = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(p, ip, () => srv.close(() => resolve(true)));
    });
    if (free) {
      taken.add(p);
      return p;
    }
  }
  throw new ProductionTargetError(`no free port between 20000 and 32000 on ${ip}`);
}

function clientTls(tls: ServerTls | undefined, client?: { cert: Buffer; key: Buffer }) {
  if (!tls) return undefined;
  return {
    serverNameOverride: tls.serverName,
    serverRootCACertificate: readFileSync(tls.caCert),
    ...(client ? { clientCertPair: { crt: client.cert, key: client.key } } : {}),
  };
}

/** Start the server on a prepared PostgreSQL and wait until its frontend answers and the namespace is usable. */
export async function startProductionServer(
  build: ServerBuild,
  opts: ProductionServerOptions,
): Promise<ProductionServer> {
  const log = opts.log ?? (() => undefined);
  const ip = opts.ip ?? '127.0.0.1';
  const namespace = opts.namespace ?? 'default';
  const databases = opts.databases ?? DEFAULT_DATABASES;
  mkdirSync(opts.dir, { recursive: true });
  const pg = opts.postgres ?? (await ensurePostgres(opts.dir, { log }));
  try {
    await applySchema(build, pg, databases);
  } catch (err) {
    if (!opts.postgres) await pg.stop();
    throw err;
  }
  const taken = new Set<number>();
  const port = (): Promise<number> => membershipSafePort(ip, taken);
  const ports = {
    frontend: opts.port ?? (await port()),
    frontendHttp: await port(),
    frontendMembership: await port(),
    history: await port(),
    historyMembership: await port(),
    matching: await port(),
    matchingMembership: await port(),
    worker: await port(),
    workerMembership: await port(),
  };
  const env = serverEnvironment({ pg, ip, ports, databases, ...(opts.tls ? { tls: opts.tls } : {}) });
  const logFile = path.join(opts.dir, `temporal-server-${databases.temporal}.log`);
  const out = openSync(logFile, 'a');
  // Own process group, so a Ctrl-C to the script reaches it first and stops the server in order.
  const child: ChildProcess = spawn(build.server, ['start'], {
    cwd: opts.dir,
    // Exactly compose's environment (plus PATH/HOME): the config template reads many variables, and a stray one
    // from the caller's shell (USE_INTERNAL_FRONTEND, TEMPORAL_BROADCAST_ADDRESS, …) must not change the server.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? opts.dir, ...env },
    stdio: ['ignore', out, out],
    detached: true,
  });
  let exited: string | null = null;
  child.once('exit', (code, signal) => {
    exited = `temporal-server exited (${signal ?? code}); see ${logFile}`;
  });
  const address = `${ip}:${ports.frontend}`;
  const stopServer = async (): Promise<void> => {
    if (exited || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill('SIGTERM');
    });
  };
  const stop = async (): Promise<void> => {
    await stopServer();
    if (!opts.postgres) await pg.stop();
  };
  try {
    log(`temporal-server ${build.version}: starting on ${address}${opts.tls ? ' (mTLS)' : ''}, log ${logFile}`);
    const tls = clientTls(opts.tls, opts.clientCert);
    await prepareNamespace(address, namespace, tls, opts.readyTimeoutMs ?? 120_000, () => exited);
  } catch (err) {
    await stop();
    throw err;
  }
  return { address, namespace, postgres: pg, logFile, ...(opts.tls ? { tls: opts.tls } : {}), stop, stopServer };
}

/** temporal.api.enums.v1.IndexedValueType values (the proto package is not a direct dependency). */
/** How long closed workflows stay visible (compose: TEMPORAL_NAMESPACE_RETENTION's default). */
export const NAMESPACE_RETENTION = '720h';

const SA_TYPE: Record<string, number> = { Keyword: 2, Int: 3 };

/**
 * Wait for the frontend, create the namespace when missing (retention 720h, compose's default) and register
 * gpuops's search attributes (src/contracts SEARCH_ATTRIBUTE_TYPES), skipping those already there — what compose's
 * temporal-admin-tools job does with the temporal CLI. Ready means a visibility query naming them is accepted.
 */
export async function prepareNamespace(
  address: string,
  namespace: string,
  tls: ReturnType<typeof clientTls>,
  timeoutMs: number,
  isDead: () => string | null = () => null,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  const step = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    for (;;) {
      const dead = isDead();
      if (dead) throw new ProductionTargetError(dead);
      try {
        return await fn();
      } catch (err) {
        last = err;
        if (Date.now() > deadline)
          throw new ProductionTargetError(
            `Temporal at ${address}: ${what} not done after ${timeoutMs} ms: ${(last as Error)?.message ?? 'no answer'}`,
          );
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  };
  const conn = await step('connect', () =>
    Connection.connect({ address, connectTimeout: 2000, ...(tls ? { tls } : {}) }),
  );
  try {
    await step('health', () => conn.workflowService.getSystemInfo({}));
    await step('namespace', async () => {
      try {
        await conn.workflowService.describeNamespace({ namespace });
      } catch (err) {
        if ((err as { code?: number }).code !== 5) throw err; // NOT_FOUND
        await conn.workflowService.registerNamespace({
          namespace,
          workflowExecutionRetentionPeriod: msToTs(NAMESPACE_RETENTION),
        });
        throw new Error('namespace registered; waiting for it to be usable');
      }
    });
    await step('search attributes', async () => {
      const have = (await conn.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {};
      const missing = Object.entries(SEARCH_ATTRIBUTE_TYPES).filter(([k]) => !(k in have));
      if (missing.length > 0) {
        await conn.operatorService.addSearchAttributes({
          namespace,
          searchAttributes: Object.fromEntries(missing.map(([k, t]) => [k, SA_TYPE[t] ?? 0])),
        });
      }
    });
    await step('visibility query on the search attributes', () =>
      conn.workflowService.countWorkflowExecutions({
        namespace,
        query: Object.keys(SEARCH_ATTRIBUTE_TYPES)
          .map((k) => `${k} IS NOT NULL`)
          .join(' AND '),
      }),
    );
  } finally {
    await conn.close();
  }
}

/**
 * Everything at once, for the script and the test target: build (when needed), PostgreSQL (private unless
 * POSTGRES_SEEDS), schema, server, namespace, search attributes.
 */
export async function startProductionTarget(
  opts: Omit<ProductionServerOptions, 'postgres'> & { log?: Log },
): Promise<ProductionServer> {
  const build = await ensureServerBuild({ ...(opts.log ? { log: opts.log } : {}) });
  return startProductionServer(build, opts);
}
