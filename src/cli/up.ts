/**
 * `gpuops up` (= `npm start`): everything gpuops needs on one machine. Without TEMPORAL_ADDRESS it runs the
 * embedded Temporal dev server (SQLite under .gpuops/, Web UI, search attributes registered); then the sandbox
 * nodes (each with its real node worker as a child process), hypervisor workers for `qm` hosts that are local,
 * and the control worker in this process. Ctrl-C (or SIGTERM) stops it all in reverse order.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { loadConfig, resolveFrom, type LoadedConfig } from '../config/load';
import { slotPartnerOf, type HypervisorConfig } from '../config/schema';
import { SEARCH_ATTRIBUTE_TYPES, CONTROL_TASK_QUEUE } from '../contracts';
import { ensureTemporalCli } from '../temporal/cli';
import { ensureRestic } from '../hosts/local-tools';
import {
  connectClient,
  connectWorker,
  resolveTemporalTarget,
  temporalConnectOptions,
  type TemporalTarget,
} from '../temporal/connection';
import { startDevServer } from '../temporal/dev-server';
import { gpuopsDataConverter } from '../temporal/codec';
import { startConfiguredCodecServer } from '../temporal/codec-server';
import { installRuntimeLogger } from '../temporal/worker-main';
import { SandboxNode, sandboxHypervisorEnv, startSandboxProxmox } from '../sandbox/node';
import { initialSandboxModel } from '../sandbox/state';
import { REAL_NODE, REAL_REGISTRY, startRealRegistry, writeRealEnginesConfig } from '../sandbox/real-config';
import { startRouter } from '../router';
import { autoDrainFromConfig } from '../router/failover';
import type { RouteTableInput } from '../router/routes';
import { createControlWorker } from '../../workers/control';
import { ManagedProcess, tsxCommand } from './processes';
import { describeSync, syncSchedules } from '../temporal/schedules';
import { ValidationError } from '../domain/validation';
import { runInputFor } from './backup';
import { startWatchers, watchInputs } from './recovery';
import type { GlobalOptions, Program } from './context';

export interface UpOptions extends GlobalOptions {
  /** Run node/hypervisor workers here for non-sandbox hosts too (single-box installs). */
  localNodeWorkers: boolean;
  /** Start the simulated nodes (default true). */
  sandbox: boolean;
}

/**
 * The node and hypervisor workers `gpuops up` runs here share one host and one gpuops.yaml: metrics.node /
 * metrics.hypervisor name one address per host, which only the first of them could bind. Their metrics are for
 * workers run as services on their own hosts; these run without (the control worker's metrics.control still serves).
 */
const LOCAL_WORKER_METRICS = ['--metrics-listen', 'off'];

const log = (line: string): void => {
  process.stdout.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);
};

/**
 * The sandbox's backup plans need a restic password file: make one with a random password on the first start
 * (mode 0600; never printed), only for plans on sandbox nodes — a real plan's password is the operator's to set.
 */
export function ensureSandboxBackupPasswords(loaded: LoadedConfig): string[] {
  const sandboxNodes = new Set(loaded.config.nodes.filter((n) => n.sandbox).map((n) => n.id));
  const made: string[] = [];
  for (const plan of loaded.config.backups) {
    if (!sandboxNodes.has(plan.node)) continue;
    const file = resolveFrom(loaded.path, plan.passwordFile);
    if (existsSync(file)) continue;
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, `${randomBytes(24).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
    made.push(file);
  }
  return made;
}

/** On a server gpuops did not start, make sure its search attributes exist (idempotent). */
async function registerSearchAttributes(target: TemporalTarget & { address: string }): Promise<void> {
  // The same TLS and API key as every other connection to this server (an mTLS frontend refuses plaintext).
  const conn = await Connection.connect(temporalConnectOptions(target));
  try {
    const existing = await conn.operatorService.listSearchAttributes({ namespace: target.namespace });
    const missing = Object.entries(SEARCH_ATTRIBUTE_TYPES).filter(([k]) => !(k in (existing.customAttributes ?? {})));
    if (missing.length === 0) return;
    // IndexedValueType enum: KEYWORD = 2, INT = 3.
    await conn.operatorService.addSearchAttributes({
      namespace: target.namespace,
      searchAttributes: Object.fromEntries(missing.map(([k, t]) => [k, t === 'Int' ? 3 : 2])),
    });
    log(`registered search attributes: ${missing.map(([k]) => k).join(', ')}`);
  } catch (err) {
    log(
      `warning: could not register search attributes (${(err as Error).message}); register them with \`temporal operator search-attribute create\``,
    );
  } finally {
    await conn.close();
  }
}

export async function upCommand(opts: UpOptions): Promise<void> {
  const loaded: LoadedConfig = loadConfig(opts.config);
  const cfg = loaded.config;
  // What gpuops up will send once running (each plan's schedule action, each node's watcher) is checked with the
  // workflows' own schemas first: a bad input exits 2 naming the field and the rule, before anything starts.
  for (const plan of cfg.backups) runInputFor(cfg, plan);
  watchInputs(cfg);
  // The in-process control worker serves the same /metrics a separate one would (metrics.control).
  installRuntimeLogger(process.env, cfg.metrics.control);
  if (cfg.metrics.control) log(`control worker metrics on http://${cfg.metrics.control}/metrics`);
  const configured = resolveTemporalTarget(cfg);
  const teardown: { name: string; fn: () => Promise<void> }[] = [];
  const stopAll = async (): Promise<void> => {
    for (const t of teardown.reverse()) {
      try {
        await t.fn();
      } catch (err) {
        log(`stopping ${t.name}: ${(err as Error).message}`);
      }
    }
  };

  try {
    log(`config: ${loaded.path}`);
    // Key files are read now: a bad one stops gpuops before anything starts.
    const dataConverter = gpuopsDataConverter(loaded);
    // With encryption.codecServer set, the codec server runs here and the embedded UI decodes through it. The UI
    // is reached as localhost: the codec server is given to it by that name, so its login cookie is same-site.
    let codecUrl: string | undefined;
    const codecServer = cfg.temporal.encryption?.codecServer;
    if (codecServer) {
      // The UI this process starts (temporal.dev.uiPort) is always let in, whatever port it was moved to.
      const ownUi = configured.address === null ? [`http://localhost:${cfg.temporal.dev.uiPort}`] : [];
      const corsOrigins = [...new Set([...codecServer.corsOrigins, ...ownUi])];
      const codec = await startConfiguredCodecServer(loaded, { corsOrigins }, log);
      teardown.push({ name: 'codec server', fn: () => codec.close() });
      codecUrl = codec.url.replace(/^http:\/\/127\.0\.0\.1:/, 'http://localhost:');
    }
    let target: TemporalTarget & { address: string };
    let uiUrl: string | null = null;
    if (configured.address === null) {
      const cli = await ensureTemporalCli(log);
      const dev = cfg.temporal.dev;
      const dbFile = resolveFrom(loaded.path, dev.dbFile);
      const server = await startDevServer({
        cli,
        port: dev.port,
        uiPort: dev.uiPort,
        dbFile,
        logFile: path.join(path.dirname(dbFile), 'temporal.log'),
        namespace: configured.namespace,
        ...(codecUrl ? { uiCodecEndpoint: codecUrl } : {}),
      });
      teardown.push({ name: 'Temporal dev server', fn: () => server.stop() });
      target = { ...configured, address: server.address };
      uiUrl = server.uiUrl;
      log(`Temporal dev server on ${server.address} (history in ${dbFile})`);
    } else {
      target = { ...configured, address: configured.address };
      log(`using Temporal at ${target.address}, namespace ${target.namespace}`);
    }

    const connection = await connectWorker(target);
    teardown.push({ name: 'Temporal connection', fn: () => connection.close() });
    if (configured.address !== null) await registerSearchAttributes(target);

    // Child processes reach Temporal the same way this process does.
    const childEnv: Record<string, string> = {
      TEMPORAL_ADDRESS: target.address,
      TEMPORAL_NAMESPACE: target.namespace,
      GPUOPS_CONFIG: loaded.path,
    };

    const started: string[] = [];
    const sandboxNodes = opts.sandbox ? cfg.nodes.filter((n) => n.sandbox) : [];
    if (sandboxNodes.length > 0) {
      for (const file of ensureSandboxBackupPasswords(loaded))
        log(`sandbox backups: made a restic password in ${file}`);
      if (cfg.backups.length > 0 && !(await ensureRestic(log)))
        log('warning: backups will fail until restic is installed (see above)');
    }
    const sims: SandboxNode[] = [];
    const stateDir = resolveFrom(loaded.path, cfg.sandbox.stateDir);
    for (const node of sandboxNodes) {
      const cmd = tsxCommand('workers/node.ts', ['--node', node.id, ...LOCAL_WORKER_METRICS]);
      const sim = new SandboxNode({
        node,
        stateDir,
        bootSeconds: cfg.sandbox.bootSeconds,
        configPath: loaded.path,
        workerCommand: { ...cmd, env: childEnv },
        log: (l) => log(`[sandbox ${node.id}] ${l}`),
      });
      await sim.start();
      teardown.push({ name: `sandbox ${node.id}`, fn: () => sim.stop() });
      sims.push(sim);
      started.push(
        `sandbox node ${node.id}: engines ${node.engines.map((e) => `${e.name} ${e.url}`).join(', ') || 'none'}; node worker on gpuops-node-${node.id}`,
      );
    }

    // The real node's registry: models a deployment pulls into its real Ollama, pushed there as an operator would.
    let realPull: { model: string; digest: string } | undefined;
    if (sandboxNodes.some((n) => n.engines.some((e) => e.real && e.type === 'ollama'))) {
      try {
        const reg = await startRealRegistry(stateDir);
        for (const h of reg.handles) teardown.push({ name: `registry ${h.host}`, fn: () => h.close() });
        const digest = reg.digests['gpuops-tiny:v2'] ?? '';
        realPull = { model: `${REAL_REGISTRY}/library/gpuops-tiny:v2`, digest };
        started.push(`registry ${REAL_REGISTRY} (distribution v3; gpuops-tiny:v2 ${digest.slice(0, 19)}…)`);
      } catch (err) {
        log(`warning: no registry for the real engines (${(err as Error).message})`);
      }
    }

    // The simulated Proxmox API answers for every sandbox VM managed through a proxmox-api hypervisor.
    const sandboxHv = new Set(sandboxNodes.map((n) => n.vm?.hypervisor).filter((h): h is string => h !== undefined));
    for (const hv of cfg.hypervisors) {
      if (hv.type !== 'proxmox-api' || !sandboxHv.has(hv.id)) continue;
      const url = new URL(hv.url);
      const pve = await startSandboxProxmox(sims, {
        host: url.hostname,
        port: Number(url.port || cfg.sandbox.proxmoxPort),
        pveNode: hv.pveNode,
        tokenId: hv.tokenId,
        tokenSecretFile: resolveFrom(loaded.path, hv.tokenSecretFile),
        stateDir,
        log: (l) => log(`[proxmox ${hv.id}] ${l}`),
      });
      teardown.push({ name: `sandbox Proxmox API ${hv.id}`, fn: () => pve.close() });
      started.push(`sandbox Proxmox API ${hv.id}: ${pve.url}/api2/json (token ${hv.tokenId})`);
    }

    // The inference router, so deployments can be tried end to end: each sandbox engine's first model becomes the
    // stable version of an alias on the first start (a state file, once written, wins), with a fresh admin token.
    if (sandboxNodes.length > 0 && cfg.router.adminTokenFile) {
      const tokenFile = resolveFrom(loaded.path, cfg.router.adminTokenFile);
      if (!existsSync(tokenFile)) {
        mkdirSync(path.dirname(tokenFile), { recursive: true });
        writeFileSync(tokenFile, `${randomUUID()}\n`, { mode: 0o600 });
      }
      const sep = cfg.router.listen.lastIndexOf(':');
      const host = cfg.router.listen.slice(0, sep);
      const port = Number(cfg.router.listen.slice(sep + 1));
      const routes: RouteTableInput['routes'] = {};
      for (const node of sandboxNodes) {
        for (const e of node.engines) {
          // A canary slot's partner is the slot: only the serving half gets an alias.
          // Of a canary slot pair only the first half serves; the other is the slot.
          const partner = slotPartnerOf(node, e.name);
          if (partner && node.engines.indexOf(partner) < node.engines.indexOf(e)) continue;
          const model = initialSandboxModel(e);
          routes[`${node.id}-${e.name}`] = {
            variants: [{ name: 'stable', engine: e.url, engineType: e.type, model, weight: 100 }],
          };
        }
      }
      const router = await startRouter({
        host,
        port,
        stateFile: resolveFrom(loaded.path, cfg.router.stateFile),
        adminTokenFile: tokenFile,
        initialRoutes: { routes, drained: [] },
        ...autoDrainFromConfig(cfg),
        log: (l) => log(`[router] ${l}`),
      });
      teardown.push({ name: 'router', fn: () => router.close() });
      started.push(
        `router ${router.url} (aliases ${Object.keys(router.table.current.routes).join(', ') || 'none'}; admin token in ${tokenFile})`,
      );
    }

    // Hypervisor workers for qm hosts: the sandbox's own, and real ones when this machine is that host.
    const qmHosts = cfg.hypervisors.filter((h): h is Extract<HypervisorConfig, { type: 'qm' }> => h.type === 'qm');
    for (const hv of qmHosts) {
      const simulated = sandboxHv.has(hv.id);
      if (!simulated && !opts.localNodeWorkers) continue;
      const env = { ...childEnv, ...(simulated ? sandboxHypervisorEnv(stateDir) : {}) };
      const cmd = tsxCommand('workers/hypervisor.ts', ['--hypervisor', hv.id, ...LOCAL_WORKER_METRICS]);
      const proc = new ManagedProcess({ name: `hypervisor ${hv.id}`, ...cmd, env, log });
      proc.start();
      teardown.push({ name: `hypervisor worker ${hv.id}`, fn: () => proc.stop() });
      started.push(`hypervisor worker ${hv.id} on gpuops-hypervisor-${hv.id}${simulated ? ' (sandbox qm)' : ''}`);
    }

    if (opts.localNodeWorkers) {
      for (const node of cfg.nodes.filter((n) => !n.sandbox)) {
        const cmd = tsxCommand('workers/node.ts', ['--node', node.id, ...LOCAL_WORKER_METRICS]);
        const proc = new ManagedProcess({ name: `node ${node.id}`, ...cmd, env: childEnv, log });
        proc.start();
        teardown.push({ name: `node worker ${node.id}`, fn: () => proc.stop() });
        started.push(`node worker ${node.id} on gpuops-node-${node.id} (local)`);
      }
    }
    const remote = cfg.nodes.filter((n) => !n.sandbox && !opts.localNodeWorkers);

    const client = await connectClient(target, { dataConverter });
    teardown.push({ name: 'Temporal client', fn: () => client.connection.close() });
    const worker = await createControlWorker({
      connection,
      namespace: target.namespace,
      loaded,
      client,
      dataConverter,
    });
    started.unshift(`control worker on ${CONTROL_TASK_QUEUE} (all workflows)`);
    if (codecUrl) started.push(`codec server ${codecUrl} (payloads encrypted; browsers log in at ${codecUrl}/login)`);
    // Backup plans become Temporal Schedules backup:<plan>; a failure here must not keep gpuops from starting.
    try {
      log(`backup schedules: ${describeSync(await syncSchedules(client, cfg))}`);
    } catch (err) {
      log(`warning: backup schedules not synced (${(err as Error).message}); run \`gpuops schedules sync\``);
    }
    // One watcher per node (kept if already running: the watcher outlives gpuops restarts in Temporal's history).
    try {
      const watchers = await startWatchers(client, cfg);
      started.push(
        `watchers: ${watchers.join(', ')} (probe every ${cfg.recovery.probeInterval}, recover after ${cfg.recovery.failureThreshold} failures)`,
      );
    } catch (err) {
      log(`warning: watchers not started (${(err as Error).message}); run \`gpuops watch\``);
    }

    const cfgFlag = process.env.GPUOPS_CONFIG || opts.config ? ` -c ${loaded.path}` : '';
    const first = cfg.nodes[0]?.id ?? 'NODE';
    log(
      [
        '',
        'gpuops is up.',
        uiUrl
          ? `  Temporal UI:      ${uiUrl}`
          : `  Temporal:         ${target.address} (namespace ${target.namespace})`,
        `  Temporal server:  ${target.address}`,
        ...started.map((s) => `  ${s}`),
        ...(remote.length
          ? [`  waiting for node workers on their hosts: ${remote.map((n) => `gpuops-node-${n.id}`).join(', ')}`]
          : []),
        '',
        'Try:',
        `  ./bin/gpuops${cfgFlag} status                       # health of every node (inspectNode workflow)`,
        ...(sandboxNodes.length
          ? [
              `  ./bin/gpuops${cfgFlag} sandbox fault ${first} xid-79  # the simulated GPU falls off the bus`,
              `  ./bin/gpuops${cfgFlag} status ${first}             # now classified: restart-vm`,
              `  ./bin/gpuops${cfgFlag} sandbox clear ${first}`,
            ]
          : []),
        ...sandboxNodes
          .filter((n) => n.engines.some((e) => e.real))
          .flatMap((n) => {
            const e = n.engines.find((x) => x.real);
            return [
              `  ./bin/gpuops${cfgFlag} sandbox fault ${n.id} engine-hang --engine ${e?.name ?? ''}  # a real ${e?.type ?? ''} frozen (${e?.runtime === 'docker' ? 'docker pause' : 'SIGSTOP'}): the watcher restarts it`,
            ];
          }),
        ...(sandboxNodes.length && cfg.backups[0]
          ? [
              `  ./bin/gpuops${cfgFlag} backup run ${cfg.backups[0].id}       # a restic backup now (its Schedule runs it every ${cfg.backups[0].schedule.every ?? cfg.backups[0].schedule.cron})`,
              `  ./bin/gpuops${cfgFlag} backup status                     # each plan's newest good snapshot against its RPO`,
              `  ./bin/gpuops${cfgFlag} backup restore ${cfg.backups[0].id} --target /tmp/gpuops-restore   # latest snapshot, verified`,
            ]
          : []),
        ...(realPull
          ? [
              `  ./bin/gpuops${cfgFlag} deploy ${REAL_NODE.id}-ollama ${realPull.model} --node ${REAL_NODE.id} --policy tiny --no-safety-probes --digest ${realPull.digest} --follow`,
              `  ./bin/gpuops${cfgFlag} approve ${REAL_NODE.id}-ollama --node ${REAL_NODE.id}   # in another terminal, at awaiting-approval`,
            ]
          : []),
        `  temporal workflow start --address ${target.address} --task-queue ${CONTROL_TASK_QUEUE} --type inspectNode --input '{"node":"${first}"}'`,
        '',
        'Ctrl-C stops everything; history is kept for the next start.',
        '',
      ].join('\n'),
    );
    // Runs until SIGINT/SIGTERM: the SDK's Runtime shuts the worker down gracefully on those signals.
    await worker.run();
    log('control worker stopped; shutting down');
  } finally {
    await stopAll();
    log('stopped');
  }
}

export function registerUpCommand(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  program
    .command('up')
    .description('run gpuops: embedded Temporal dev server (unless TEMPORAL_ADDRESS), workers, sandbox nodes')
    .option('--local-node-workers', 'also run node/hypervisor workers here for non-sandbox nodes (single-box setups)')
    .option('--no-sandbox', 'do not start simulated nodes')
    .option(
      '--real-engines',
      'add sandbox-3, whose llama-server and Ollama are real (built by `npm run engines`), to the sandbox config',
    )
    .action(async (opts) => {
      const g = globals();
      if (opts.realEngines && g.config) {
        throw new ValidationError('argument', ['--real-engines: uses the sandbox config; do not combine it with -c']);
      }
      const config = opts.realEngines ? writeRealEnginesConfig() : g.config;
      await upCommand({
        ...g,
        ...(config ? { config } : {}),
        localNodeWorkers: opts.localNodeWorkers ?? false,
        sandbox: opts.sandbox,
      });
    });
}
