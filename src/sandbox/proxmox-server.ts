/**
 * A Proxmox VE API subset for sandbox VMs: token authentication, version, VM status/config, power actions that
 * return a UPID, and task status. Power actions only write the node's state file; the VM state machine (shared with
 * `qm`) and the node's supervisor make the simulated guest follow — including the Proxmox semantics gpuops depends
 * on: shutdown/reboot go through ACPI and a hung guest ignores them until the timeout, stop/reset always work.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import * as core from './bin/lib/core';
import type { PowerAction, SandboxState } from './state';

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

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
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

/** Start the simulated Proxmox API. Resolves once listening. */
export async function startProxmoxServer(opts: ProxmoxServerOptions): Promise<ProxmoxServerHandle> {
  const pveNode = opts.pveNode ?? 'pve';
  const secret = resolveTokenSecret(opts);
  const log = opts.log ?? (() => undefined);

  const locate = (vmid: number): string => {
    const targets = typeof opts.targets === 'function' ? opts.targets() : (opts.targets ?? []);
    const hit =
      targets.find((t) => t.vmid === vmid)?.stateFile ??
      (opts.stateDir ? core.findStateByVmid(opts.stateDir, vmid) : undefined);
    if (!hit || !existsSync(hit))
      throw new ApiError(500, `Configuration file 'nodes/${pveNode}/qemu-server/${vmid}.conf' does not exist`);
    return hit;
  };

  const authenticate = (req: http.IncomingMessage): void => {
    const header = req.headers.authorization;
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

  const route = async (method: string, p: string, params: Record<string, string>): Promise<unknown> => {
    const now = Date.now();
    if (method === 'GET' && p === '/version') return { version: '8.2.4', release: '8.2', repoid: 'faa83925c9641325' };
    if (method === 'GET' && p === '/nodes') {
      return [
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
      ];
    }
    const nodeMatch = /^\/nodes\/([^/]+)(\/.*)$/.exec(p);
    if (!nodeMatch) throw new ApiError(501, `Method '${method} ${p}' not implemented`);
    const [, node, rest] = nodeMatch;
    if (node !== pveNode) {
      throw new ApiError(
        500,
        `hostname lookup '${node ?? ''}' failed - failed to get address info for: ${node ?? ''}: Name or service not known`,
      );
    }
    let m: RegExpExecArray | null;
    if (method === 'GET' && rest === '/qemu') {
      const targets = typeof opts.targets === 'function' ? opts.targets() : (opts.targets ?? []);
      return targets.flatMap((t) => {
        const s = core.tryReadState(t.stateFile);
        return s ? [{ ...vmStatusCurrent(s, now), vmid: t.vmid }] : [];
      });
    }
    if ((m = /^\/qemu\/(\d+)\/status\/current$/.exec(rest ?? '')) && method === 'GET') {
      const file = locate(Number(m[1]));
      // Through update, not read: time-driven VM transitions must be applied before reporting.
      return core.updateState(file, (s, t) => vmStatusCurrent(s, t));
    }
    if ((m = /^\/qemu\/(\d+)\/config$/.exec(rest ?? '')) && method === 'GET') {
      return vmConfig(core.readState(locate(Number(m[1]))));
    }
    if ((m = /^\/qemu\/(\d+)\/status\/(\w+)$/.exec(rest ?? '')) && method === 'POST') {
      const vmid = Number(m[1]);
      const action = m[2] as PowerAction;
      if (!POWER_ACTIONS.includes(action)) throw new ApiError(501, `Method '${method} ${p}' not implemented`);
      let timeoutMs: number | undefined;
      if (params.timeout !== undefined) {
        const t = Number(params.timeout);
        if (!Number.isInteger(t) || t < 0) {
          throw new ApiError(400, 'Parameter verification failed.', {
            timeout: `type check ('integer') failed - got '${params.timeout}'`,
          });
        }
        timeoutMs = t * 1000;
      }
      const file = locate(vmid);
      const task = core.updateState(file, (s, t) =>
        core.requestPower(s, action, t, {
          user: opts.tokenId,
          pveNode,
          ...(timeoutMs !== undefined ? { timeoutMs } : {}),
        }),
      );
      log(`proxmox: ${action} VM ${vmid} -> ${task.upid} (${task.exitstatus})`);
      return task.upid;
    }
    if ((m = /^\/tasks\/([^/]+)\/(status|log)$/.exec(rest ?? '')) && method === 'GET') {
      const upid = decodeURIComponent(m[1] ?? '');
      const vmid = Number(upid.split(':')[6]);
      const file = Number.isInteger(vmid)
        ? (() => {
            try {
              return locate(vmid);
            } catch {
              return undefined;
            }
          })()
        : undefined;
      const task = file ? core.updateState(file, (s) => s.tasks.find((x) => x.upid === upid)) : undefined;
      if (!task) throw new ApiError(500, `unable to parse worker upid '${upid}'`);
      if (m[2] === 'log') {
        const st = core.taskStatus(task, now);
        const lines = st.status === 'running' ? task.log.slice(0, -1) : task.log;
        return lines.map((t, i) => ({ n: i + 1, t }));
      }
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
    }
    throw new ApiError(501, `Method '${method} ${p}' not implemented`);
  };

  const server = http.createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://pve');
      const method = req.method ?? 'GET';
      const send = (status: number, reason: string, body: unknown): void => {
        const text = JSON.stringify(body);
        res.writeHead(status, reason, {
          'Content-Type': 'application/json;charset=UTF-8',
          'Content-Length': Buffer.byteLength(text),
          Server: 'pve-api-daemon/3.0',
          'Cache-Control': 'max-age=0',
          Pragma: 'no-cache',
        });
        res.end(text);
      };
      try {
        const body = await readBody(req);
        if (!url.pathname.startsWith('/api2/json/'))
          throw new ApiError(501, `Method '${method} ${url.pathname}' not implemented`);
        authenticate(req);
        const params = { ...Object.fromEntries(url.searchParams), ...parseParams(body, req.headers['content-type']) };
        const data = await route(method, url.pathname.slice('/api2/json'.length), params);
        send(200, 'OK', { data });
      } catch (err) {
        if (err instanceof ApiError) {
          send(err.status, err.reason, {
            data: null,
            ...(err.errors ? { errors: err.errors } : { message: `${err.reason}\n` }),
          });
        } else {
          log(`proxmox: ${err instanceof Error ? err.message : String(err)}`);
          send(500, 'Internal Server Error', {
            data: null,
            message: `${err instanceof Error ? err.message : String(err)}\n`,
          });
        }
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = addr && typeof addr === 'object' ? addr.port : (opts.port ?? 0);
  const host = opts.host ?? '127.0.0.1';
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    tokenId: opts.tokenId,
    tokenSecret: secret,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
