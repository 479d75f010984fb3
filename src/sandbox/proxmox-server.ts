/**
 * A Proxmox VE API subset for sandbox VMs: token authentication, version, VM status/config, power actions that
 * return a UPID, and task status. Power actions only write the node's state file; the VM state machine (shared with
 * `qm`) and the node's supervisor make the simulated guest follow — including the Proxmox semantics gpuops depends
 * on: shutdown/reboot go through ACPI and a hung guest ignores them until the timeout, stop/reset always work.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import { SANDBOX_HTTP_LIMITS, fastifyLimits } from '../http-limits';
import * as core from './shims/lib/core';
import type { PowerAction, SandboxState, TaskRecord } from './state';

/** A VM the server answers for: its vmid and the node state file that simulates it. */
export interface ProxmoxTarget {
  vmid: number;
  stateFile: string;
}

export interface ProxmoxServerOptions {
  /** Listen address (default 127.0.0.1). */
  host?: string;
  /** Port (0 = any free port; default 0). */
  port?: number;
  /** Proxmox node name the VMs live on, as in /nodes/{node}/qemu (default "pve"). */
  pveNode?: string;
  /** Accepted API token id, USER@REALM!TOKENID. */
  tokenId: string;
  /** The token secret. When absent it is read from tokenSecretFile, which is created with a new UUID if missing. */
  tokenSecret?: string;
  tokenSecretFile?: string;
  /** VMs by vmid; a function is asked on every request (nodes may come and go). */
  targets?: ProxmoxTarget[] | (() => ProxmoxTarget[]);
  /** Also find VMs by scanning `<stateDir>/<node>/state.json` for the vmid. */
  stateDir?: string;
  log?: (line: string) => void;
}

export interface ProxmoxServerHandle {
  /** Base URL, e.g. http://127.0.0.1:18006 (the API lives under /api2/json). */
  url: string;
  port: number;
  tokenId: string;
  tokenSecret: string;
  close(): Promise<void>;
}

const POWER_ACTIONS: readonly PowerAction[] = ['start', 'stop', 'shutdown', 'reboot', 'reset'];

function isPowerAction(s: string | undefined): s is PowerAction {
  return (POWER_ACTIONS as readonly (string | undefined)[]).includes(s);
}

class ApiError extends Error {
  constructor(
    readonly status: number,
    /** Proxmox puts the reason in the HTTP status line. */
    readonly reason: string,
    readonly errors?: Record<string, string>,
  ) {
    super(reason);
  }
}

/** The token secret: given, read from its file, or generated and written there (mode 0600) on first start. */
export function resolveTokenSecret(opts: Pick<ProxmoxServerOptions, 'tokenSecret' | 'tokenSecretFile'>): string {
  if (opts.tokenSecret) return opts.tokenSecret;
  if (!opts.tokenSecretFile) throw new Error('Proxmox sandbox: tokenSecret or tokenSecretFile is required');
  if (existsSync(opts.tokenSecretFile)) return readFileSync(opts.tokenSecretFile, 'utf8').trim();
  const secret = randomUUID();
  mkdirSync(path.dirname(opts.tokenSecretFile), { recursive: true });
  writeFileSync(opts.tokenSecretFile, `${secret}\n`, { mode: 0o600 });
  return secret;
}

/** Proxmox accepts form-encoded parameters (what its clients send) and JSON. */
function parseParams(body: string, contentType: string | undefined): Record<string, string> {
  if (body.trim() === '') return {};
  if (contentType?.includes('application/json')) {
    const v: unknown = JSON.parse(body);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, String(x)]));
    return {};
  }
  return Object.fromEntries(new URLSearchParams(body));
}

function vmStatusCurrent(state: SandboxState, now: number): Record<string, unknown> {
  const vm = state.vm;
  const running = vm.status === 'running';
  const maxmem = vm.memoryMiB * 1048576;
  const uptime = running ? Math.max(0, Math.floor((now - vm.bootedAt) / 1000)) : 0;
  const base: Record<string, unknown> = {
    vmid: vm.vmid,
    name: vm.name,
    status: vm.status,
    qmpstatus: running ? 'running' : 'stopped',
    uptime,
    cpus: vm.cores,
    cpu: running ? 0.0312 : 0,
    maxmem,
    mem: running ? Math.round(maxmem * 0.37) : 0,
    maxdisk: 200 * 1024 ** 3,
    disk: 0,
    diskread: running ? 512_802_816 + uptime * 4096 : 0,
    diskwrite: running ? 104_857_600 + uptime * 2048 : 0,
    netin: running ? 1_048_576 + uptime * 900 : 0,
    netout: running ? 524_288 + uptime * 700 : 0,
    ha: { managed: 0 },
    agent: 1,
    tags: 'gpu;gpuops-sandbox',
  };
  if (running) {
    // A hung guest still has a QEMU process: Proxmox cannot tell it apart from a healthy one here.
    Object.assign(base, {
      pid: 4000 + vm.bootId,
      'running-machine': 'pc-q35-8.1+pve0',
      'running-qemu': '8.1.5',
      balloon: maxmem,
      freemem: Math.round(maxmem * 0.58),
      'proxmox-support': {
        'pbs-dirty-bitmap': true,
        'pbs-library-version': '1.4.1 (UNKNOWN)',
        'query-bitmap-info': true,
      },
      nics: { tap101i0: { netin: 1_048_576, netout: 524_288 } },
    });
  }
  return base;
}

function vmConfig(state: SandboxState): Record<string, unknown> {
  const vm = state.vm;
  const cfg: Record<string, unknown> = {
    agent: '1',
    balloon: 0,
    bios: 'ovmf',
    boot: 'order=scsi0;net0',
    cores: vm.cores,
    cpu: 'host',
    machine: 'q35',
    memory: String(vm.memoryMiB),
    name: vm.name,
    net0: `virtio=BC:24:11:${core.hexOf(`${state.node}/mac`, 6).toUpperCase().match(/../g)?.join(':') ?? '00:00:00'},bridge=vmbr0,firewall=1`,
    numa: 0,
    ostype: 'l26',
    scsi0: `local-lvm:vm-${vm.vmid}-disk-1,discard=on,iothread=1,size=200G`,
    scsihw: 'virtio-scsi-single',
    sockets: 1,
    digest: core.hexOf(`${state.node}/config/${state.gpus.length}`, 40),
  };
  state.gpus.forEach((g, i) => {
    cfg[`hostpci${i}`] = `${g.hostPci},pcie=1`;
  });
  return cfg;
}

/** What a route's handler gets: the request, its path parameters, its (query and body) parameters, the time. */
interface ApiCall {
  req: FastifyRequest;
  path: Record<string, string | undefined>;
  params: Record<string, string>;
  now: number;
}

/** Start the simulated Proxmox API. Resolves once listening. */
export async function startProxmoxServer(opts: ProxmoxServerOptions): Promise<ProxmoxServerHandle> {
  const pveNode = opts.pveNode ?? 'pve';
  const secret = resolveTokenSecret(opts);
  const log = opts.log ?? (() => undefined);
  const targets = (): ProxmoxTarget[] => (typeof opts.targets === 'function' ? opts.targets() : (opts.targets ?? []));

  const locate = (vmid: number): string => {
    const hit =
      targets().find((t) => t.vmid === vmid)?.stateFile ??
      (opts.stateDir ? core.findStateByVmid(opts.stateDir, vmid) : undefined);
    if (!hit || !existsSync(hit))
      throw new ApiError(500, `Configuration file 'nodes/${pveNode}/qemu-server/${vmid}.conf' does not exist`);
    return hit;
  };

  const authenticate = (header: string | undefined): void => {
    if (!header) throw new ApiError(401, 'No ticket');
    const m = /^PVEAPIToken=([^=\s]+)=(\S+)$/.exec(header.trim());
    if (!m) throw new ApiError(401, 'No ticket');
    const [, id, given] = m;
    if (id !== opts.tokenId) {
      const [user, token] = (id ?? '').split('!');
      throw new ApiError(401, `no such token '${token ?? ''}' for user '${user ?? ''}'`);
    }
    if (given !== secret) throw new ApiError(401, 'invalid token value!');
  };

  const pathOf = (req: FastifyRequest): string => new URL(req.url, 'http://pve').pathname;
  /** A method Proxmox does not have, named as Proxmox names it (without the /api2/json prefix). */
  const notImplemented = (req: FastifyRequest): ApiError => {
    const p = pathOf(req);
    return new ApiError(501, `Method '${req.method} ${p.replace(/^\/api2\/json(?=\/)/, '')}' not implemented`);
  };
  /** Every path under /nodes/{node} names a node first: another name fails as Proxmox's lookup of it does. */
  const checkNode = (node: string): void => {
    if (node === pveNode) return;
    throw new ApiError(
      500,
      `hostname lookup '${node}' failed - failed to get address info for: ${node}: Name or service not known`,
    );
  };

  const send = (reply: FastifyReply, status: number, reason: string, body: unknown): FastifyReply => {
    // Proxmox puts the reason in the HTTP status line.
    reply.raw.statusMessage = reason;
    return reply
      .code(status)
      .headers({
        'content-type': 'application/json;charset=UTF-8',
        server: 'pve-api-daemon/3.0',
        'cache-control': 'max-age=0',
        pragma: 'no-cache',
      })
      .send(JSON.stringify(body));
  };

  const app = Fastify({
    logger: false,
    exposeHeadRoutes: false,
    // close() must not wait for clients' keep-alive connections; those time out after 5 s, as Node's default.
    forceCloseConnections: true,
    ...fastifyLimits(SANDBOX_HTTP_LIMITS),
  });
  // Parameters are parsed by the routes (form-encoded or JSON), whatever the content type says.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => done(null, body));
  // Outside the API everything is "not implemented"; inside it nothing is answered without a valid token.
  app.addHook('onRequest', async (req) => {
    if (pathOf(req).startsWith('/api2/json/')) authenticate(req.headers.authorization);
  });
  app.setErrorHandler((err, _req, reply) => {
    if (err instanceof ApiError) {
      return send(reply, err.status, err.reason, {
        data: null,
        ...(err.errors ? { errors: err.errors } : { message: `${err.reason}\n` }),
      });
    }
    const message = err instanceof Error ? err.message : String(err);
    log(`proxmox: ${message}`);
    return send(reply, 500, 'Internal Server Error', { data: null, message: `${message}\n` });
  });
  app.setNotFoundHandler(async (req) => {
    const node = /^\/api2\/json\/nodes\/([^/]+)\//.exec(pathOf(req))?.[1];
    if (node !== undefined) checkNode(node);
    throw notImplemented(req);
  });

  /** A route under /api2/json, answering `{ data }`; its `:node` must be this node and its `:vmid` a number. */
  const api = (method: 'GET' | 'POST', url: string, handler: (call: ApiCall) => unknown): void => {
    app.route<{ Params: Record<string, string | undefined> }>({
      method,
      url: `/api2/json${url}`,
      handler: async (req, reply) => {
        const query = Object.fromEntries(new URL(req.url, 'http://pve').searchParams);
        const body = typeof req.body === 'string' ? req.body : '';
        const params = { ...query, ...parseParams(body, req.headers['content-type']) };
        const { node, vmid } = req.params;
        if (node !== undefined) checkNode(node);
        if (vmid !== undefined && !/^\d+$/.test(vmid)) throw notImplemented(req);
        return send(reply, 200, 'OK', { data: handler({ req, path: req.params, params, now: Date.now() }) });
      },
    });
  };
  const vmidOf = (call: ApiCall): number => Number(call.path.vmid);

  api('GET', '/version', () => ({ version: '8.2.4', release: '8.2', repoid: 'faa83925c9641325' }));
  api('GET', '/nodes', () => [
    {
      node: pveNode,
      status: 'online',
      type: 'node',
      id: `node/${pveNode}`,
      level: '',
      maxcpu: 32,
      maxmem: 137438953472,
      uptime: 864000,
    },
  ]);
  api('GET', '/nodes/:node/qemu', ({ now }) =>
    targets().flatMap((t) => {
      const s = core.tryReadState(t.stateFile);
      return s ? [{ ...vmStatusCurrent(s, now), vmid: t.vmid }] : [];
    }),
  );
  // Through update, not read: time-driven VM transitions must be applied before reporting.
  api('GET', '/nodes/:node/qemu/:vmid/status/current', (call) =>
    core.updateState(locate(vmidOf(call)), (s, t) => vmStatusCurrent(s, t)),
  );
  api('GET', '/nodes/:node/qemu/:vmid/config', (call) => vmConfig(core.readState(locate(vmidOf(call)))));
  api('POST', '/nodes/:node/qemu/:vmid/status/:action', (call) => {
    const action = call.path.action;
    if (!isPowerAction(action)) throw notImplemented(call.req);
    const vmid = vmidOf(call);
    let timeoutMs: number | undefined;
    const timeout = call.params.timeout;
    if (timeout !== undefined) {
      const t = Number(timeout);
      if (!Number.isInteger(t) || t < 0) {
        throw new ApiError(400, 'Parameter verification failed.', {
          timeout: `type check ('integer') failed - got '${timeout}'`,
        });
      }
      timeoutMs = t * 1000;
    }
    const task = core.updateState(locate(vmid), (s, t) =>
      core.requestPower(s, action, t, {
        user: opts.tokenId,
        pveNode,
        ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      }),
    );
    log(`proxmox: ${action} VM ${vmid} -> ${task.upid} (${task.exitstatus})`);
    return task.upid;
  });
  /** The task a UPID names (its vmid is the UPID's seventh field), or a 500 as Proxmox answers a UPID it cannot find. */
  const findTask = (upid: string): TaskRecord => {
    const vmid = Number(upid.split(':')[6]);
    let file: string | undefined;
    try {
      file = Number.isInteger(vmid) ? locate(vmid) : undefined;
    } catch {
      file = undefined;
    }
    const task = file ? core.updateState(file, (s) => s.tasks.find((x) => x.upid === upid)) : undefined;
    if (!task) throw new ApiError(500, `unable to parse worker upid '${upid}'`);
    return task;
  };
  api('GET', '/nodes/:node/tasks/:upid/status', ({ path: p, now }) => {
    const task = findTask(p.upid ?? '');
    const st = core.taskStatus(task, now);
    return {
      upid: task.upid,
      node: task.node,
      pid: task.pid,
      pstart: task.pstart,
      starttime: task.starttime,
      type: task.type,
      id: task.id,
      user: task.user,
      ...(st.status === 'running' ? { status: 'running' } : { status: 'stopped', exitstatus: st.exitstatus }),
    };
  });
  api('GET', '/nodes/:node/tasks/:upid/log', ({ path: p, now }) => {
    const task = findTask(p.upid ?? '');
    const lines = core.taskStatus(task, now).status === 'running' ? task.log.slice(0, -1) : task.log;
    return lines.map((t, i) => ({ n: i + 1, t }));
  });

  const host = opts.host ?? '127.0.0.1';
  await app.listen({ host, port: opts.port ?? 0 });
  const port = (app.server.address() as AddressInfo).port;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    tokenId: opts.tokenId,
    tokenSecret: secret,
    close: () => app.close(),
  };
}
