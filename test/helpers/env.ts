import { execFileSync } from 'node:child_process';
/**
 * Shared plumbing for workflow tests: a client and worker connection to the run-wide Temporal dev server, a
 * workflow bundle built once per test file, and sandbox nodes whose real node worker runs as a child process.
 */
import { appendFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { getDeploymentStatusQuery, nodeTaskQueue, type DeploymentStatus } from '../../src/contracts';
import {
  DefaultLogger,
  type NativeConnection,
  Runtime,
  bundleWorkflowCode,
  type WorkflowBundle,
  type Worker,
} from '@temporalio/worker';
import { stringify } from 'yaml';
import { parseConfig, type LoadedConfig } from '../../src/config/load';
import { SandboxNode, freePort, sandboxHypervisorEnv, startSandboxProxmox } from '../../src/sandbox/node';
import { ManagedProcess, tsxCommand } from '../../src/cli/processes';
import { createControlWorker } from '../../workers/control';
import { connectWorker, temporalConnectOptions, type TemporalTarget } from '../../src/temporal/connection';
import { tlsFilesIn } from '../../src/temporal/production-server';
import { startRouter, type RouterHandle } from '../../src/router';
import { runLog } from './run-log';
import { writeTestSecret } from './secrets';

// Worker state changes are logged at INFO; the console gets only warnings and errors. Everything from INFO up (the
// workflows' and activities' own log lines with their attributes) goes to the run's log on disk, which the secret
// scan reads (test/helpers/run-log.ts).
const consoleLogger = new DefaultLogger('WARN');
const workerLog = runLog('temporal-runtime');
Runtime.install({
  logger: new DefaultLogger('INFO', (entry) => {
    let meta = '';
    try {
      meta = entry.meta
        ? ` ${JSON.stringify(entry.meta, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`
        : '';
    } catch {
      meta = ' (attributes not serialisable)';
    }
    workerLog(`${entry.level} ${entry.message}${meta}`);
    if (entry.level === 'WARN' || entry.level === 'ERROR') consoleLogger.log(entry.level, entry.message, entry.meta);
  }),
});

export function testAddress(): string {
  const a = process.env.TEMPORAL_TEST_ADDRESS;
  if (!a) throw new Error('TEMPORAL_TEST_ADDRESS is not set: run tests through jest (test/global-setup.ts)');
  return a;
}

/**
 * The run-wide server as a gpuops target: on the production target (mTLS, test/global-setup.ts) with the client
 * certificate, CA and server name it was started with, so every client, worker and child process of the run goes
 * through gpuops's own TLS connection code; another address (a test's own server) is plaintext.
 */
export function testTarget(address = testAddress()): TemporalTarget & { address: string } {
  const dir = process.env.TEMPORAL_TEST_TLS_DIR;
  if (!dir || address !== process.env.TEMPORAL_TEST_ADDRESS) return { address, namespace: 'default' };
  const f = tlsFilesIn(dir);
  return {
    address,
    namespace: 'default',
    tls: { certFile: f.clientCert, keyFile: f.clientKey, caFile: f.caCert, serverName: f.serverName },
  };
}

export function uniqueId(prefix: string): string {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

let bundlePromise: Promise<WorkflowBundle> | undefined;
/** The workflow bundle, built once per test file (webpack takes seconds). */
export function workflowBundle(): Promise<WorkflowBundle> {
  bundlePromise ??= bundleWorkflowCode({ workflowsPath: require.resolve('../../workflows'), logger: quietLogger });
  return bundlePromise;
}

/** recoverNode timings that keep an incident in seconds on the sandbox (production defaults are minutes). */
export const FAST_RECOVERY = {
  verifyTimeout: '20s',
  verifyInterval: '500ms',
  bootTimeout: '40s',
  powerTimeout: '20s',
  pickupTimeout: '2s',
  probeTimeout: '4s',
  containerStopTimeout: '1s',
};

/** A bundler/worker logger that keeps only warnings and errors. */
export const quietLogger = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: (m: string) => console.warn(m),
  error: (m: string) => console.error(m),
};

export interface TestEnv {
  client: Client;
  connection: NativeConnection;
  /** A control task queue of this test file's own, so parallel test files never take each other's workflows. */
  controlQueue: string;
  address: string;
  close(): Promise<void>;
}

export async function openTestEnv(address = testAddress()): Promise<TestEnv> {
  const target = testTarget(address);
  const conn = await Connection.connect(temporalConnectOptions(target));
  const connection = await connectWorker(target);
  return {
    client: new Client({ connection: conn, namespace: 'default' }),
    connection,
    controlQueue: uniqueId('gpuops-control-test'),
    address,
    async close() {
      await connection.close();
      await conn.close();
    },
  };
}

export interface TestSandbox {
  loaded: LoadedConfig;
  nodeId: string;
  sim: SandboxNode;
  dir: string;
  stop(): Promise<void>;
}

/**
 * A sandbox node with one Ollama engine on a free port, its config written to a temp gpuops.yaml, and the real node
 * worker (workers/node.ts) running as a child process against the test server.
 */
export interface TestSandboxOptions {
  address?: string;
  bootSeconds?: number;
  withWorker?: boolean;
  /** Give the node a VM behind a simulated Proxmox API (type proxmox-api) on a free port. */
  proxmox?: boolean;
  /** Give the node a VM on a hypervisor of type qm, served by a real hypervisor worker (child process). */
  qm?: boolean;
  /** Extra top-level config (notifications, router, recovery…), merged into the generated gpuops.yaml. */
  extra?: Record<string, unknown>;
  /**
   * The node's GPUs and engines instead of one A4000 with one Ollama engine; each engine's `url` port is replaced
   * by a free one.
   */
  hardware?: { gpus: Record<string, unknown>[]; engines: (Record<string, unknown> & { name: string })[] };
  /**
   * Write the run-wide server's TLS files into the node's gpuops.yaml (temporal.tls) when it runs mTLS (default);
   * false leaves them out, for a test that gives them through TEMPORAL_TLS_* instead.
   */
  configTls?: boolean;
  /** The node's `tools` (e.g. the real docker CLI and a process directory for real engines). */
  tools?: Record<string, unknown>;
}

export async function startTestSandbox(opts: TestSandboxOptions = {}): Promise<TestSandbox> {
  const address = opts.address ?? testAddress();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-sbx-'));
  const nodeId = uniqueId('t');
  const enginePort = await freePort();
  const pvePort = opts.proxmox ? await freePort() : 0;
  const vmid = 1000 + Math.floor(Math.random() * 8000);
  const qmId = uniqueId('qm');
  const { tls } = opts.configTls === false ? { tls: undefined } : testTarget(address);
  const raw = {
    ...opts.extra,
    // extra.temporal (e.g. encryption) is kept; the address and TLS are the run's.
    temporal: { ...(opts.extra?.temporal as object | undefined), address, ...(tls ? { tls } : {}) },
    ...(opts.proxmox
      ? {
          hypervisors: [
            {
              id: 'pve-test',
              type: 'proxmox-api',
              url: `http://127.0.0.1:${pvePort}`,
              pveNode: 'pve',
              tokenId: 'root@pam!gpuops',
              tokenSecretFile: path.join(dir, 'pve-token'),
            },
          ],
        }
      : opts.qm
        ? { hypervisors: [{ id: qmId, type: 'qm' }] }
        : {}),
    nodes: [
      {
        id: nodeId,
        sandbox: true,
        gpus: opts.hardware?.gpus ?? [{ index: 0, model: 'NVIDIA RTX A4000', memoryMiB: 16376 }],
        engines: opts.hardware
          ? await Promise.all(
              opts.hardware.engines.map(async (e) => ({ ...e, url: e.url ?? `http://127.0.0.1:${await freePort()}` })),
            )
          : [
              {
                name: 'ollama',
                type: 'ollama',
                url: `http://127.0.0.1:${enginePort}`,
                container: 'ollama',
                gpus: [0],
                probeModel: 'llama3.2:1b',
              },
            ],
        modelStores: [path.join(dir, 'sandbox', nodeId, 'models')],
        ...(opts.tools ? { tools: opts.tools } : {}),
        ...(opts.proxmox ? { vm: { hypervisor: 'pve-test', vmid } } : {}),
        ...(opts.qm ? { vm: { hypervisor: qmId, vmid } } : {}),
      },
    ],
    sandbox: { stateDir: path.join(dir, 'sandbox'), bootSeconds: opts.bootSeconds ?? 1 },
  };
  // The Proxmox API token secret is a UUID, as Proxmox makes them; the sandbox API reads it from this file.
  if (opts.proxmox) writeTestSecret(path.join(dir, 'pve-token'), 'proxmox-token-secret', 'uuid');
  const configPath = path.join(dir, 'gpuops.yaml');
  writeFileSync(configPath, stringify(raw));
  const config = parseConfig(stringify(raw), configPath);
  const node = config.nodes[0];
  if (!node) throw new Error('no node');
  const cmd = tsxCommand('workers/node.ts', ['--node', nodeId]);
  // The node's log (its worker's output, the simulated VM's events) and its hypervisor's, as `gpuops up` prints them:
  // kept in the sandbox's dir for the secret scan (test/global-teardown.ts).
  const log = (line: string): void => appendFileSync(path.join(dir, 'sandbox.log'), `${line}\n`);
  const sim = new SandboxNode({
    log,
    node,
    stateDir: config.sandbox.stateDir,
    bootSeconds: config.sandbox.bootSeconds,
    configPath,
    ...(opts.withWorker === false
      ? {}
      : {
          workerCommand: {
            ...cmd,
            env: { TEMPORAL_ADDRESS: address, GPUOPS_CONFIG: configPath, GPUOPS_LOG_LEVEL: 'WARN' },
          },
        }),
    workerRestartDelayMs: 200,
  });
  await sim.start();
  const pve = opts.proxmox
    ? await startSandboxProxmox([sim], {
        port: pvePort,
        pveNode: 'pve',
        tokenId: 'root@pam!gpuops',
        tokenSecretFile: path.join(dir, 'pve-token'),
        log: (l) => log(`[proxmox] ${l}`),
      })
    : undefined;
  let hv: ManagedProcess | undefined;
  if (opts.qm) {
    // qm runs on the Proxmox host's own worker; in the sandbox its qm shim finds the VM by vmid in the state dir.
    hv = new ManagedProcess({
      name: `hypervisor ${qmId}`,
      ...tsxCommand('workers/hypervisor.ts', ['--hypervisor', qmId]),
      env: { ...sandboxHypervisorEnv(config.sandbox.stateDir), TEMPORAL_ADDRESS: address, GPUOPS_CONFIG: configPath },
      log,
    });
    hv.start();
  }
  return {
    loaded: { path: configPath, config },
    nodeId,
    sim,
    dir,
    async stop() {
      await hv?.stop();
      await pve?.close();
      await sim.stop();
    },
  };
}

/**
 * Wait until the node worker polls its queue (a fresh worker needs a moment to connect). `pid`: only a poller of that
 * process counts (gpuops workers' identities end in `:<pid>`); the server lists a worker that stopped for minutes.
 */
export async function waitForPoller(
  client: Client,
  taskQueue: string,
  timeoutMs = 30_000,
  pid?: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await client.workflowService.describeTaskQueue({
      namespace: 'default',
      taskQueue: { name: taskQueue },
      taskQueueType: 2, // TASK_QUEUE_TYPE_ACTIVITY
    });
    const pollers = (r.pollers ?? []).filter((p) => pid === undefined || (p.identity ?? '').endsWith(`:${pid}`));
    if (pollers.length > 0) return;
    await new Promise((res) => setTimeout(res, 200));
  }
  throw new Error(`no worker${pid === undefined ? '' : ` of pid ${pid}`} polled ${taskQueue} within ${timeoutMs} ms`);
}

export async function controlWorker(env: TestEnv, loaded: LoadedConfig): Promise<Worker> {
  return createControlWorker({
    connection: env.connection,
    namespace: 'default',
    loaded,
    workflowBundle: await workflowBundle(),
    taskQueue: env.controlQueue,
    client: env.client,
  });
}

/** Write a file and return its path (for configs and fixtures in temp dirs). */
export function writeTemp(dir: string, name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

/**
 * With GPUOPS_RECORD_HISTORIES=1, save a finished workflow's history (as `temporal workflow show --output json`
 * prints it) to test/histories/<name>.json, for test/replay.test.ts. Otherwise does nothing.
 */
export function recordHistory(env: TestEnv, workflowId: string, name: string, runId?: string): void {
  if (process.env.GPUOPS_RECORD_HISTORIES !== '1') return;
  const cli = process.env.TEMPORAL_CLI_PATH ?? 'temporal';
  const args = ['workflow', 'show', '--address', env.address, '-w', workflowId, ...(runId ? ['-r', runId] : [])];
  const out = execFileSync(cli, [...args, '--output', 'json'], { maxBuffer: 64 * 1024 * 1024 });
  writeFileSync(path.join(__dirname, '..', 'histories', `${name}.json`), out);
}

/** A real router on a free port with its own admin token, and the gpuops.yaml `router` block that points at it. */
export interface TestRouter {
  router: RouterHandle;
  config: { router: { listen: string; adminTokenFile: string } };
}

export async function startTestRouter(): Promise<TestRouter> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-router-'));
  const adminTokenFile = path.join(dir, 'router-token');
  writeTestSecret(adminTokenFile, 'router-admin-token');
  const port = await freePort();
  const router = await startRouter({ port, adminTokenFile, log: runLog('router') });
  return { router, config: { router: { listen: `127.0.0.1:${port}`, adminTokenFile } } };
}

/** What `useSandboxEnv` holds for a test file; its getters are live once the file's beforeAll has run. */
export interface SandboxEnv {
  /** The connection to the run-wide dev server and this file's control queue. */
  readonly env: TestEnv;
  /** The file's own sandbox node, started in beforeAll (only with the `sandbox` option). */
  readonly sbx: TestSandbox;
  /** The real router (only with `router: true`). */
  readonly router: RouterHandle;
  /** The gpuops.yaml `router` block that points at `router`; every sandbox started here has it in its config. */
  readonly routerConfig: TestRouter['config'];
  /**
   * Start a sandbox node that lives until the file ends (stopped, its real engines removed, in afterAll), and return
   * once its node worker polls its queue (at once when it has no worker).
   */
  sandbox(opts?: TestSandboxOptions): Promise<TestSandbox>;
}

export interface SandboxEnvOptions {
  /** Start the file's own sandbox node (`sbx`) in beforeAll with these options; without it tests call `sandbox()`. */
  sandbox?: TestSandboxOptions;
  /** Start a real router (`router`) before any sandbox node, and put its `router` block in each node's config. */
  router?: boolean;
  /**
   * Clean-up that still needs the env and the sandbox nodes: the first thing this afterAll does (an afterAll the file
   * declares after calling useSandboxEnv runs once the env is closed).
   */
  beforeStop?: () => Promise<void>;
}

/**
 * Registers the beforeAll and afterAll of a workflow test file: open the test env, start the router and the file's
 * sandbox node as asked, and tear them all down, whatever started, in the reverse order.
 */
export function useSandboxEnv(opts: SandboxEnvOptions = {}): SandboxEnv {
  let env: TestEnv | undefined;
  let own: TestSandbox | undefined;
  let router: TestRouter | undefined;
  const sandboxes: TestSandbox[] = [];
  const live = <T>(value: T | undefined, what: string): T => {
    if (value === undefined) throw new Error(`useSandboxEnv: no ${what} (not asked for, or read before beforeAll)`);
    return value;
  };
  const ctx: SandboxEnv = {
    get env() {
      return live(env, 'env');
    },
    get sbx() {
      return live(own, 'sandbox');
    },
    get router() {
      return live(router, 'router').router;
    },
    get routerConfig() {
      return live(router, 'router').config;
    },
    async sandbox(sopts = {}) {
      const s = await startTestSandbox(router ? { ...sopts, extra: { ...router.config, ...sopts.extra } } : sopts);
      sandboxes.push(s);
      if (sopts.withWorker !== false) await waitForPoller(ctx.env.client, nodeTaskQueue(s.nodeId));
      return s;
    },
  };
  beforeAll(async () => {
    env = await openTestEnv();
    if (opts.router) router = await startTestRouter();
    if (opts.sandbox) own = await ctx.sandbox(opts.sandbox);
  });
  afterAll(async () => {
    // Every step runs even when one before it fails (a sandbox that cannot stop must not leave the rest running);
    // the first failure is then the hook's.
    const steps: (() => Promise<unknown> | undefined)[] = [
      () => (env ? opts.beforeStop?.() : undefined),
      ...sandboxes.flatMap((s) => [() => s.stop(), () => s.sim.real.remove()]),
      () => router?.router.close(),
      () => env?.close(),
    ];
    let first: unknown;
    for (const step of steps) {
      try {
        await step(); // in order: the env closes last
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  });
  return ctx;
}

/** Poll a deployModel's status query until `pred` holds; fail at once if the deployment ends first. */
export async function waitForDeployment(
  h: WorkflowHandle,
  pred: (st: DeploymentStatus) => boolean,
  timeoutMs = 45_000,
): Promise<DeploymentStatus> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const st = await h.query(getDeploymentStatusQuery);
    if (pred(st)) return st;
    if (st.outcome !== 'in-progress' || Date.now() > until) {
      throw new Error(
        `gave up waiting: stage ${st.stage}, outcome ${st.outcome}, rollback ${JSON.stringify(st.rollback)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
