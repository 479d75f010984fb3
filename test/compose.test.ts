/**
 * The production docker-compose.yaml, checked as data: the service graph starts in a safe order, the ports
 * operators and remote workers rely on are published, nothing secret is written inline, and the search attributes
 * registered at start-up are exactly the ones the workflows set (src/messages.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { SEARCH_ATTRIBUTE_TYPES } from '../src/contracts';
import {
  DEFAULT_DATABASES,
  DYNAMIC_CONFIG_FILE,
  NAMESPACE_RETENTION,
  TEMPORAL_SERVER_VERSION,
  schemaToolEnvironment,
  serverEnvironment,
} from '../src/temporal/production-server';

const ROOT = path.resolve(__dirname, '..');

interface Healthcheck {
  test?: string | string[];
  disable?: boolean;
}
type DependsOn = string[] | Record<string, { condition?: string }>;
interface Service {
  image?: string;
  build?: unknown;
  command?: string | string[];
  entrypoint?: string | string[];
  environment?: Record<string, string | number | boolean | null> | string[];
  ports?: (string | { target: number; published?: string | number })[];
  volumes?: (string | { type?: string; source?: string; target: string })[];
  depends_on?: DependsOn;
  healthcheck?: Healthcheck;
  restart?: string;
}
interface Compose {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

const compose = parse(readFileSync(path.join(ROOT, 'docker-compose.yaml'), 'utf8')) as Compose;
const services = compose.services;

function service(name: string): Service {
  const s = services[name];
  if (!s) throw new Error(`service ${name} is missing`);
  return s;
}

/** depends_on in either syntax, as name → condition (the short list form means service_started). */
function dependencies(s: Service): Record<string, string> {
  const d = s.depends_on;
  if (!d) return {};
  if (Array.isArray(d)) return Object.fromEntries(d.map((n) => [n, 'service_started']));
  return Object.fromEntries(Object.entries(d).map(([n, v]) => [n, v.condition ?? 'service_started']));
}

/** Published ports as { host, container }, from "[ip:]host:container[/proto]" strings or the long syntax. */
function publishedPorts(s: Service): { host: number; container: number }[] {
  return (s.ports ?? []).map((p) => {
    if (typeof p === 'string') {
      const parts = p.replace(/\/(tcp|udp)$/, '').split(':');
      const container = Number(parts[parts.length - 1]);
      const host = Number(parts.length >= 2 ? parts[parts.length - 2] : container);
      return { host, container };
    }
    return { host: Number(p.published ?? p.target), container: p.target };
  });
}

function environment(s: Service): Record<string, string> {
  const e = s.environment;
  if (!e) return {};
  if (Array.isArray(e)) {
    return Object.fromEntries(
      e.map((kv) => {
        const i = kv.indexOf('=');
        return i < 0 ? [kv, ''] : [kv.slice(0, i), kv.slice(i + 1)];
      }),
    );
  }
  return Object.fromEntries(Object.entries(e).map(([k, v]) => [k, v === null ? '' : String(v)]));
}

function commandText(s: Service): string {
  const parts = [s.entrypoint, s.command].flatMap((c) => (c === undefined ? [] : Array.isArray(c) ? c : [c]));
  return parts.join('\n');
}

/** One-shot jobs: services that something waits on to complete successfully. Everything else runs for good. */
const oneShot = new Set(
  Object.values(services).flatMap((s) =>
    Object.entries(dependencies(s))
      .filter(([, cond]) => cond === 'service_completed_successfully')
      .map(([n]) => n),
  ),
);

describe('docker-compose.yaml', () => {
  it('defines the control-plane services', () => {
    for (const name of [
      'postgresql',
      'temporal',
      'temporal-admin-tools',
      'temporal-ui',
      'gpuops-control',
      'gpuops-router',
    ]) {
      expect(services).toHaveProperty([name]);
    }
  });

  it('does not run node or hypervisor workers (they are systemd services on their hosts)', () => {
    for (const [name, s] of Object.entries(services)) {
      expect(`${name}: ${commandText(s)}`).not.toMatch(/workers\/(node|hypervisor)\.ts/);
    }
  });

  it('starts Temporal only once PostgreSQL is healthy, and PostgreSQL has a healthcheck to make that mean something', () => {
    expect(dependencies(service('temporal'))).toMatchObject({ postgresql: 'service_healthy' });
    expect(JSON.stringify(service('postgresql').healthcheck?.test)).toContain('pg_isready');
  });

  it('runs Temporal on PostgreSQL persistence, with the schema set up before the server starts', () => {
    const env = environment(service('temporal'));
    expect(env.DB).toBe('postgres12');
    expect(env.POSTGRES_SEEDS).toBe('postgresql');
    const schemaJobs = Object.entries(dependencies(service('temporal')))
      .filter(([, cond]) => cond === 'service_completed_successfully')
      .map(([n]) => n);
    expect(schemaJobs.some((n) => /temporal-sql-tool/.test(commandText(service(n))))).toBe(true);
  });

  it('makes the UI and the control worker wait for a healthy Temporal', () => {
    for (const name of ['temporal-ui', 'gpuops-control', 'temporal-admin-tools']) {
      expect(dependencies(service(name))).toMatchObject({ temporal: 'service_healthy' });
    }
  });

  it('starts the control worker only after the search attributes are registered', () => {
    expect(dependencies(service('gpuops-control'))).toMatchObject({
      'temporal-admin-tools': 'service_completed_successfully',
    });
  });

  it('points every Temporal client at the temporal service', () => {
    for (const name of ['temporal-ui', 'temporal-admin-tools', 'gpuops-control']) {
      expect(environment(service(name)).TEMPORAL_ADDRESS).toBe('temporal:7233');
    }
    expect(environment(service('gpuops-control')).GPUOPS_CONFIG).toBe('/etc/gpuops/gpuops.yaml');
  });

  it('publishes the Temporal frontend, the UI and the router', () => {
    expect(publishedPorts(service('temporal'))).toContainEqual({ host: 7233, container: 7233 });
    expect(publishedPorts(service('temporal-ui'))).toContainEqual(expect.objectContaining({ container: 8080 }));
    expect(publishedPorts(service('gpuops-router'))).toContainEqual({ host: 8088, container: 8080 });
    // Nothing else shares a host port with them.
    const hostPorts = Object.values(services).flatMap((s) => publishedPorts(s).map((p) => p.host));
    expect(new Set(hostPorts).size).toBe(hostPorts.length);
  });

  it('keeps PostgreSQL off the host network', () => {
    expect(publishedPorts(service('postgresql'))).toEqual([]);
  });

  it('gives every long-running service a restart policy, and a healthcheck wherever something waits for healthy', () => {
    const waitedForHealthy = new Set(
      Object.values(services).flatMap((s) =>
        Object.entries(dependencies(s))
          .filter(([, cond]) => cond === 'service_healthy')
          .map(([n]) => n),
      ),
    );
    expect(oneShot).toEqual(new Set(['temporal-schema', 'temporal-admin-tools']));
    for (const [name, s] of Object.entries(services)) {
      if (oneShot.has(name)) {
        // A restarting one-shot would never "complete successfully".
        expect([undefined, 'no']).toContain(s.restart);
        continue;
      }
      expect({ name, restart: s.restart }).toEqual({
        name,
        restart: expect.stringMatching(/^(always|unless-stopped|on-failure(:\d+)?)$/),
      });
      if (waitedForHealthy.has(name))
        expect({ name, healthcheck: s.healthcheck?.test }).toEqual({ name, healthcheck: expect.anything() });
    }
    expect(service('gpuops-router').healthcheck?.test).toBeDefined();
  });

  it('declares every named volume it mounts, and keeps PostgreSQL data and router state on named volumes', () => {
    const declared = new Set(Object.keys(compose.volumes ?? {}));
    const named = Object.values(services).flatMap((s) =>
      (s.volumes ?? [])
        .map((v) => (typeof v === 'string' ? (v.split(':')[0] ?? '') : (v.source ?? '')))
        .filter((src) => src !== '' && !src.startsWith('.') && !src.startsWith('/') && !src.startsWith('~')),
    );
    expect(named.length).toBeGreaterThan(0);
    for (const v of named) expect(declared).toContain(v);
    const mountsOf = (name: string): string[] =>
      (service(name).volumes ?? []).map((v) => (typeof v === 'string' ? v : `${v.source}:${v.target}`));
    expect(mountsOf('postgresql').some((m) => /^[a-z][\w-]*:\/var\/lib\/postgresql\/data/.test(m))).toBe(true);
    expect(mountsOf('gpuops-router').some((m) => /^[a-z][\w-]*:\/var\/lib\/gpuops/.test(m))).toBe(true);
  });

  it('mounts gpuops.yaml and the secrets read-only into the gpuops services', () => {
    for (const name of ['gpuops-control', 'gpuops-router']) {
      const mounts = (service(name).volumes ?? []).filter((v): v is string => typeof v === 'string');
      expect(mounts).toContain('./gpuops.yaml:/etc/gpuops/gpuops.yaml:ro');
      expect(mounts).toContain('./secrets:/etc/gpuops/secrets:ro');
    }
  });

  it('writes no secret inline: password, token and secret variables come from ${VARS} or name files', () => {
    const secretKey = /PASSWORD|PASSWD|PWD|TOKEN|SECRET|API_KEY/i;
    const checked: string[] = [];
    for (const [name, s] of Object.entries(services)) {
      for (const [key, value] of Object.entries(environment(s))) {
        if (!secretKey.test(key)) continue;
        checked.push(`${name}.${key}`);
        const fromVar = /^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$/.test(value);
        const isFile = /_FILE$/.test(key) && value.startsWith('/');
        expect({ at: `${name}.${key}`, ok: fromVar || isFile }).toEqual({ at: `${name}.${key}`, ok: true });
      }
    }
    // The check must have had something to check: PostgreSQL and Temporal both need the database password.
    expect(checked).toEqual(expect.arrayContaining(['postgresql.POSTGRES_PASSWORD', 'temporal.POSTGRES_PWD']));
  });

  it('registers exactly the search attributes the workflows use, with their types, idempotently', () => {
    const script = commandText(service('temporal-admin-tools'));
    expect(script).toContain('temporal operator search-attribute create');
    expect(script).toContain('temporal operator cluster health');
    const registered = Object.fromEntries(
      [...script.matchAll(/^\s*register\s+(\w+)\s+(\w+)\s*$/gm)].map((m) => [m[1], m[2]]),
    );
    expect(registered).toEqual(SEARCH_ATTRIBUTE_TYPES);
    expect(registered).toEqual({
      GpuopsNode: 'Keyword',
      GpuopsAlias: 'Keyword',
      GpuopsModel: 'Keyword',
      GpuopsStage: 'Keyword',
      GpuopsCanaryWeight: 'Int',
    });
    // Already-registered attributes are skipped rather than failing the job on the second `up`.
    expect(script).toMatch(/search-attribute list/);
  });

  it('builds the gpuops services from the Dockerfile and keeps secrets out of the build context', () => {
    expect(service('gpuops-control').build).toBeDefined();
    expect(service('gpuops-router').command).toEqual(['node', '--import', 'tsx', 'src/cli/main.ts', 'router']);
    expect(existsSync(path.join(ROOT, 'Dockerfile'))).toBe(true);
    const ignored = readFileSync(path.join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim());
    expect(ignored).toEqual(expect.arrayContaining(['node_modules', 'secrets', '.env']));
  });
});

/**
 * The production target CI tests (npm run test:production: src/temporal/production-server.ts) is this file's
 * Temporal without Docker. These hold the two together: change one, and the other must follow.
 */
describe('docker-compose.yaml and the tested production target', () => {
  const pg = { host: 'postgresql', port: 5432, user: 'temporal', password: 'pw' };
  const ports = {
    frontend: 7233,
    frontendHttp: 7243,
    frontendMembership: 6933,
    history: 7234,
    historyMembership: 6934,
    matching: 7235,
    matchingMembership: 6935,
    worker: 7239,
    workerMembership: 6939,
  };
  const target = serverEnvironment({ pg, ip: '0.0.0.0', ports, databases: DEFAULT_DATABASES });
  /** Set on both sides, to values that depend on the host: the seeds, the secret, the file path. */
  const hostSpecific = new Set(['POSTGRES_PWD', 'DYNAMIC_CONFIG_FILE_PATH']);
  /** Set only by the target: its free ports (compose keeps the defaults in its own network) and its log level. */
  const targetOnly = /^((FRONTEND|HISTORY|MATCHING|WORKER)_\w+_PORT|LOG_LEVEL)$/;

  /** The default of a `${VAR:-default}` image tag. */
  const tagDefault = (image: string | undefined): string | undefined =>
    /:\$\{[A-Z_]+:-([^}]+)\}$/.exec(image ?? '')?.[1];

  it('runs the server release the target builds, with admin tools of the same release', () => {
    expect(tagDefault(service('temporal').image)).toBe(TEMPORAL_SERVER_VERSION);
    expect(tagDefault(service('temporal-schema').image)).toBe(TEMPORAL_SERVER_VERSION);
    expect(tagDefault(service('temporal-admin-tools').image)).toBe(TEMPORAL_SERVER_VERSION);
  });

  it('gives the server the environment the target gives it', () => {
    const composed = environment(service('temporal'));
    for (const [key, value] of Object.entries(composed)) {
      expect({ key, inTarget: key in target }).toEqual({ key, inTarget: true });
      if (!hostSpecific.has(key)) expect({ key, value: target[key] }).toEqual({ key, value });
    }
    for (const key of Object.keys(target)) {
      if (!targetOnly.test(key)) expect({ key, inCompose: key in composed }).toEqual({ key, inCompose: true });
    }
  });

  it('mounts the dynamic config file the target starts the server with', () => {
    const rel = path.relative(ROOT, DYNAMIC_CONFIG_FILE);
    const mount = (service('temporal').volumes ?? []).find(
      (v): v is string => typeof v === 'string' && v.startsWith(`./${path.dirname(rel)}:`),
    );
    expect(mount).toBeDefined();
    const inContainer = mount?.split(':')[1] ?? '';
    // DYNAMIC_CONFIG_FILE_PATH is relative to the image's working directory, /etc/temporal.
    const file = environment(service('temporal')).DYNAMIC_CONFIG_FILE_PATH ?? '';
    expect(path.posix.resolve('/etc/temporal', file)).toBe(path.posix.join(inContainer, path.basename(rel)));
  });

  it('creates and migrates the same databases, with the same temporal-sql-tool commands and SQL_* environment', () => {
    const job = service('temporal-schema');
    expect(Object.keys(environment(job)).sort()).toEqual(Object.keys(schemaToolEnvironment(pg)).sort());
    expect(environment(job).SQL_PLUGIN).toBe(schemaToolEnvironment(pg).SQL_PLUGIN);
    const script = commandText(job);
    expect(script).toContain(
      `for db in ${DEFAULT_DATABASES.temporal}:temporal ${DEFAULT_DATABASES.visibility}:visibility; do`,
    );
    expect(script).toContain('schema=/etc/temporal/schema/postgresql/v12');
    for (const cmd of ['create', 'setup-schema -v 0.0', 'update-schema -d "$$schema/$$dir/versioned"'])
      expect(script).toContain(`temporal-sql-tool --db "$$name" ${cmd}`);
  });

  it('creates the namespace with the target’s retention', () => {
    expect(environment(service('temporal-admin-tools')).NAMESPACE_RETENTION).toBe(
      `\${TEMPORAL_NAMESPACE_RETENTION:-${NAMESPACE_RETENTION}}`,
    );
  });
});
