/**
 * Proxmox VE adapters: the REST API with an API token (for the control worker) and the `qm` CLI (for a hypervisor
 * worker on the host). VM power actions live here because a node can never restart its own VM.
 */
import { readFile } from 'node:fs/promises';
import * as http from 'node:http';
import * as https from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import type { HypervisorConfig } from '../config/schema';
import { describeFailure, firstLines, runTool } from './exec';

/** Power actions gpuops takes on a VM. */
export type VmPowerAction = 'start' | 'stop' | 'shutdown' | 'reboot' | 'reset';
/** Every VmPowerAction, for input validation. */
export const VM_POWER_ACTIONS: readonly VmPowerAction[] = ['start', 'stop', 'shutdown', 'reboot', 'reset'];

/** GET /nodes/{node}/qemu/{vmid}/status/current, the parts gpuops reads. */
export interface VmStatus {
  vmid: number;
  /** Proxmox's coarse state. */
  status: 'running' | 'stopped';
  /** QEMU's own state when running: 'running', 'paused', 'prelaunch', 'suspended', 'io-error', … */
  qmpstatus: string | null;
  /** Seconds since the VM started; 0 when stopped. */
  uptime: number;
  name: string | null;
  /** A config lock ('backup', 'migrate', …) blocks power actions. */
  lock: string | null;
}

/** GET /nodes/{node}/tasks/{upid}/status. */
export interface TaskStatus {
  status: 'running' | 'stopped';
  /** "OK" on success, "WARNINGS: n" on success with warnings, the error text otherwise; null while running. */
  exitstatus: string | null;
  type: string | null;
  id: string | null;
}

/** The fields of a Proxmox task id, e.g. UPID:pve1:000B1C2D:01A2B3C4:66A0F1E2:qmstart:101:root@pam!gpuops: */
export interface Upid {
  node: string;
  pid: number;
  pstart: number;
  /** Task start, seconds since the epoch. */
  starttime: number;
  type: string;
  id: string;
  user: string;
}

/** Split a UPID into its fields; pid, pstart and starttime are hexadecimal in the string. */
export function parseUpid(upid: string): Upid {
  const m = /^UPID:([^:]+):([0-9A-Fa-f]+):([0-9A-Fa-f]+):([0-9A-Fa-f]+):([^:]+):([^:]*):([^:]+):$/.exec(upid.trim());
  if (!m) throw new Error(`not a Proxmox UPID: "${upid}"`);
  const [, node = '', pid = '0', pstart = '0', starttime = '0', type = '', id = '', user = ''] = m;
  return {
    node,
    pid: Number.parseInt(pid, 16),
    pstart: Number.parseInt(pstart, 16),
    starttime: Number.parseInt(starttime, 16),
    type,
    id,
    user,
  };
}

/** Whether a finished task's exit status means success ("OK", or "WARNINGS: n" which Proxmox also counts as done). */
export function taskSucceeded(exitstatus: string | null): boolean {
  return exitstatus === 'OK' || (exitstatus !== null && /^WARNINGS: \d+$/.test(exitstatus));
}

/** Thrown for a Proxmox API failure. Carries the method, path and HTTP status; never the token secret. */
export class ProxmoxApiError extends Error {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly status: number | null,
    detail: string,
  ) {
    super(`Proxmox ${method} ${path} ${status === null ? 'failed' : `answered HTTP ${status}`}: ${detail}`);
    this.name = 'ProxmoxApiError';
  }
}

/** Thrown when waitTask runs out of time; the task may still finish on its own. */
export class ProxmoxTaskTimeoutError extends Error {
  constructor(
    readonly upid: string,
    readonly last: TaskStatus | null,
  ) {
    super(`Proxmox task ${upid} still ${last?.status ?? 'unknown'} after the wait timeout`);
    this.name = 'ProxmoxTaskTimeoutError';
  }
}

/** Options of ProxmoxApi (a hypervisor of type proxmox-api in gpuops.yaml). */
export interface ProxmoxApiOptions {
  /** API base, e.g. https://pve1.lan:8006 (the /api2/json prefix is added). */
  url: string;
  /** Proxmox node that owns the VMs. */
  pveNode: string;
  /** USER@REALM!TOKENID. */
  tokenId: string;
  /** File holding the token secret; read inside each call and never stored. */
  tokenSecretFile: string;
  /** CA bundle for the Proxmox certificate. */
  caFile?: string;
  /** Accept any certificate (self-signed Proxmox); prefer caFile. */
  insecureSkipVerify?: boolean;
  /** Per-request timeout (default 15 s). */
  timeoutMs?: number;
}

/** The Proxmox VE REST API for one PVE node, authenticated with an API token. */
export class ProxmoxApi {
  private readonly base: URL;
  private readonly opts: ProxmoxApiOptions;
  private agent: http.Agent | https.Agent | undefined;

  constructor(opts: ProxmoxApiOptions) {
    this.opts = opts;
    this.base = new URL(opts.url);
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') {
      throw new Error(`Proxmox url must be http(s) (got ${this.base.protocol})`);
    }
  }

  private async getAgent(): Promise<http.Agent | https.Agent> {
    if (this.agent) return this.agent;
    if (this.base.protocol === 'http:') {
      this.agent = new http.Agent({ keepAlive: true });
    } else {
      // node:https rather than fetch: a per-client CA or an opt-out of verification needs a custom agent, and
      // undici (fetch's dispatcher API) is not a dependency of this project.
      const ca = this.opts.caFile ? await readFile(this.opts.caFile, 'utf8') : undefined;
      this.agent = new https.Agent({
        keepAlive: true,
        ...(ca ? { ca } : {}),
        rejectUnauthorized: !this.opts.insecureSkipVerify,
      });
    }
    return this.agent;
  }

  /** One API call; resolves to the `data` member of Proxmox's `{"data": ...}` envelope. */
  private async call<T>(
    method: 'GET' | 'POST',
    path: string,
    form?: Record<string, string | number>,
    signal?: AbortSignal,
  ): Promise<T> {
    // The secret is read per call and only ever placed in the request header; errors below name method and path.
    const secret = (await readFile(this.opts.tokenSecretFile, 'utf8')).trim();
    const agent = await this.getAgent();
    const url = new URL(`${this.base.pathname.replace(/\/+$/, '')}/api2/json${path}`, this.base);
    const body = form
      ? new URLSearchParams(Object.entries(form).map(([k, v]): [string, string] => [k, String(v)])).toString()
      : undefined;
    const headers: Record<string, string> = {
      Authorization: `PVEAPIToken=${this.opts.tokenId}=${secret}`,
      Accept: 'application/json',
    };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/x-www-form-urlencoded';
      headers['Content-Length'] = String(Buffer.byteLength(body));
    }
    const mod = url.protocol === 'https:' ? https : http;
    const timeoutMs = this.opts.timeoutMs ?? 15_000;
    const { status, statusMessage, text } = await new Promise<{ status: number; statusMessage: string; text: string }>(
      (resolve, reject) => {
        const req = mod.request(
          url,
          { method, headers, agent, timeout: timeoutMs, ...(signal ? { signal } : {}) },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () =>
              resolve({
                status: res.statusCode ?? 0,
                statusMessage: res.statusMessage ?? '',
                text: Buffer.concat(chunks).toString('utf8'),
              }),
            );
            res.on('error', reject);
          },
        );
        req.on('timeout', () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)));
        req.on('error', (err) => reject(new ProxmoxApiError(method, path, null, err.message)));
        req.end(body);
      },
    );
    let parsed: { data?: unknown; message?: unknown; errors?: unknown } | undefined;
    try {
      parsed = text === '' ? undefined : (JSON.parse(text) as typeof parsed);
    } catch {
      parsed = undefined;
    }
    if (status < 200 || status >= 300) {
      // Proxmox puts the reason in the HTTP status line ("401 authentication failure", "500 VM 101 not running") and
      // parameter errors in `errors`.
      const parts = [statusMessage];
      // Newer PVE repeats the status-line reason in the body's `message`: say it once.
      if (typeof parsed?.message === 'string' && !parts.includes(parsed.message.trim()))
        parts.push(parsed.message.trim());
      if (parsed?.errors) parts.push(JSON.stringify(parsed.errors));
      throw new ProxmoxApiError(method, path, status, parts.filter((p) => p !== '').join('; ') || firstLines(text, 2));
    }
    if (!parsed || !('data' in parsed))
      throw new ProxmoxApiError(method, path, status, 'response has no "data" member');
    return parsed.data as T;
  }

  private vmPath(vmid: number): string {
    if (!Number.isInteger(vmid) || vmid < 100) throw new RangeError(`vmid must be an integer >= 100 (got ${vmid})`);
    return `/nodes/${encodeURIComponent(this.opts.pveNode)}/qemu/${vmid}`;
  }

  /** Current state of a VM. */
  async vmStatus(vmid: number, opts: { signal?: AbortSignal } = {}): Promise<VmStatus> {
    const d = await this.call<Record<string, unknown> | null>(
      'GET',
      `${this.vmPath(vmid)}/status/current`,
      undefined,
      opts.signal,
    );
    if (!d) throw new ProxmoxApiError('GET', `${this.vmPath(vmid)}/status/current`, 200, 'empty data');
    const status = d.status;
    if (status !== 'running' && status !== 'stopped') {
      throw new ProxmoxApiError(
        'GET',
        `${this.vmPath(vmid)}/status/current`,
        200,
        `unexpected status ${JSON.stringify(status)}`,
      );
    }
    return {
      vmid,
      status,
      qmpstatus: typeof d.qmpstatus === 'string' ? d.qmpstatus : null,
      uptime: typeof d.uptime === 'number' ? d.uptime : 0,
      name: typeof d.name === 'string' ? d.name : null,
      lock: typeof d.lock === 'string' ? d.lock : null,
    };
  }

  /** The VM's configuration (GET /nodes/{node}/qemu/{vmid}/config): what a vm-config backup keeps. */
  async vmConfig(vmid: number, opts: { signal?: AbortSignal } = {}): Promise<Record<string, unknown>> {
    const d = await this.call<Record<string, unknown> | null>(
      'GET',
      `${this.vmPath(vmid)}/config`,
      undefined,
      opts.signal,
    );
    if (!d) throw new ProxmoxApiError('GET', `${this.vmPath(vmid)}/config`, 200, 'empty data');
    return d;
  }

  /**
   * Start a power action; returns the task's UPID at once (the action runs as a Proxmox task: see waitTask).
   * `shutdown` asks the guest via ACPI and, after `timeoutSec`, Proxmox stops it if `forceStop` is set.
   */
  async power(
    vmid: number,
    action: VmPowerAction,
    opts: { timeoutSec?: number; forceStop?: boolean; signal?: AbortSignal } = {},
  ): Promise<string> {
    if (!VM_POWER_ACTIONS.includes(action)) throw new RangeError(`unknown VM power action "${String(action)}"`);
    const form: Record<string, string | number> = {};
    if (action === 'shutdown' || action === 'reboot') {
      if (opts.timeoutSec !== undefined) form.timeout = opts.timeoutSec;
    }
    if (action === 'shutdown' && opts.forceStop) form.forceStop = 1;
    const upid = await this.call<unknown>('POST', `${this.vmPath(vmid)}/status/${action}`, form, opts.signal);
    if (typeof upid !== 'string' || !upid.startsWith('UPID:')) {
      throw new ProxmoxApiError(
        'POST',
        `${this.vmPath(vmid)}/status/${action}`,
        200,
        `expected a UPID, got ${JSON.stringify(upid)}`,
      );
    }
    return upid;
  }

  /** State of a task. The UPID names its node, which may differ from pveNode after a migration. */
  async taskStatus(upid: string, opts: { signal?: AbortSignal } = {}): Promise<TaskStatus> {
    const node = parseUpid(upid).node;
    const d = await this.call<Record<string, unknown>>(
      'GET',
      `/nodes/${encodeURIComponent(node)}/tasks/${encodeURIComponent(upid)}/status`,
      undefined,
      opts.signal,
    );
    const status = d.status === 'running' ? 'running' : 'stopped';
    return {
      status,
      exitstatus: typeof d.exitstatus === 'string' ? d.exitstatus : null,
      type: typeof d.type === 'string' ? d.type : null,
      id: typeof d.id === 'string' ? d.id : d.id === undefined ? null : String(d.id),
    };
  }

  /**
   * Poll a task until it stops. Resolves with the final status (check `taskSucceeded(exitstatus)`); rejects with
   * ProxmoxTaskTimeoutError after `timeoutMs`. `onPoll` runs after every poll (activities heartbeat there).
   */
  async waitTask(
    upid: string,
    opts: { timeoutMs?: number; pollMs?: number; signal?: AbortSignal; onPoll?: (s: TaskStatus) => void } = {},
  ): Promise<TaskStatus> {
    const deadline = Date.now() + (opts.timeoutMs ?? 300_000);
    const pollMs = opts.pollMs ?? 1000;
    let last: TaskStatus | null = null;
    for (;;) {
      opts.signal?.throwIfAborted();
      last = await this.taskStatus(upid, opts.signal ? { signal: opts.signal } : {});
      opts.onPoll?.(last);
      if (last.status === 'stopped') return last;
      if (Date.now() + pollMs > deadline) throw new ProxmoxTaskTimeoutError(upid, last);
      await sleep(pollMs, undefined, opts.signal ? { signal: opts.signal } : {});
    }
  }

  /** Close kept-alive connections (tests, shutdown). */
  close(): void {
    this.agent?.destroy();
    this.agent = undefined;
  }
}

/** A hypervisor of type proxmox-api, as gpuops.yaml describes it. */
export type ProxmoxApiHypervisor = Extract<HypervisorConfig, { type: 'proxmox-api' }>;

/** How gpuops reaches the Proxmox API of its configured hypervisors. */
export interface ProxmoxApiPoolOptions {
  /** Client factory (tests inject one); default: proxmoxApiFromConfig. */
  apiFor?: (h: ProxmoxApiHypervisor) => ProxmoxApi;
  /** Resolves the secret and CA file paths (relative to the config file); default: as written. */
  resolvePath?: (p: string) => string;
}

/**
 * The ProxmoxApi for a configured hypervisor: its token secret file and CA bundle resolved with `resolvePath`
 * (relative paths in gpuops.yaml are relative to the config file), TLS verification as configured. The one place
 * config turns into a client, for every activity that calls the API.
 */
export function proxmoxApiFromConfig(
  h: ProxmoxApiHypervisor,
  resolvePath: (p: string) => string = (p) => p,
): ProxmoxApi {
  return new ProxmoxApi({
    url: h.url,
    pveNode: h.pveNode,
    tokenId: h.tokenId,
    tokenSecretFile: resolvePath(h.tokenSecretFile),
    ...(h.caFile ? { caFile: resolvePath(h.caFile) } : {}),
    insecureSkipVerify: h.insecureSkipVerify,
  });
}

/**
 * One client per hypervisor id, made on first use and then reused (with its kept-alive connections), by `apiFor`
 * when given, else by proxmoxApiFromConfig.
 */
export function proxmoxApiPool(opts: ProxmoxApiPoolOptions = {}): (h: ProxmoxApiHypervisor) => ProxmoxApi {
  const clients = new Map<string, ProxmoxApi>();
  return (h) => {
    let c = clients.get(h.id);
    if (!c) {
      c = opts.apiFor ? opts.apiFor(h) : proxmoxApiFromConfig(h, opts.resolvePath);
      clients.set(h.id, c);
    }
    return c;
  };
}

/** Parse `qm status <vmid>` output ("status: running"). */
export function parseQmStatus(output: string): 'running' | 'stopped' {
  const m = /^status:\s*(\S+)/m.exec(output);
  const s = m?.[1];
  if (s !== 'running' && s !== 'stopped')
    throw new Error(`unexpected qm status output: ${firstLines(output, 2) || '(empty)'}`);
  return s;
}

/** Outcome of a `qm` power command. */
export interface QmPowerResult {
  /** The VM ends in the state the action aims for (including "already running" for start). */
  ok: boolean;
  /** true when qm reported the VM already in the target state and nothing was done. */
  alreadyInState: boolean;
  output: string;
}

/** Options of QmCli. */
export interface QmCliOptions {
  /** qm binary; looked up on PATH at call time. */
  bin?: string;
  env?: Record<string, string | undefined>;
  /** Per-command timeout (default 10 min: qm waits for a shutdown to finish). */
  timeoutMs?: number;
}

/** The `qm` CLI on a Proxmox host. qm runs power actions synchronously: when it returns, the action is done. */
export class QmCli {
  private readonly bin: string;
  private readonly env: Record<string, string | undefined> | undefined;
  private readonly timeoutMs: number;

  constructor(opts: QmCliOptions = {}) {
    this.bin = opts.bin ?? 'qm';
    this.env = opts.env;
    this.timeoutMs = opts.timeoutMs ?? 600_000;
  }

  /** `qm status <vmid>`. Throws with qm's message for an unknown VM ("Configuration file ... does not exist"). */
  async status(vmid: number): Promise<'running' | 'stopped'> {
    const r = await runTool(this.bin, ['status', String(vmid)], {
      timeoutMs: 30_000,
      ...(this.env ? { env: this.env } : {}),
    });
    if (r.exitCode !== 0) throw new Error(describeFailure(r));
    return parseQmStatus(r.stdout);
  }

  /**
   * `qm <action> <vmid>`. Start on a running VM and stop/shutdown on a stopped one count as success (qm says
   * "already running" / "not running"), so a retried activity does not fail on its own earlier success.
   */
  async power(
    vmid: number,
    action: VmPowerAction,
    opts: { timeoutSec?: number; signal?: AbortSignal } = {},
  ): Promise<QmPowerResult> {
    if (!VM_POWER_ACTIONS.includes(action)) throw new RangeError(`unknown VM power action "${String(action)}"`);
    const args: string[] = [action, String(vmid)];
    if ((action === 'shutdown' || action === 'reboot') && opts.timeoutSec !== undefined)
      args.push('--timeout', String(opts.timeoutSec));
    const r = await runTool(this.bin, args, {
      timeoutMs: this.timeoutMs,
      ...(this.env ? { env: this.env } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    const output = `${r.stdout}\n${r.stderr}`.trim();
    if (r.exitCode === 0) return { ok: true, alreadyInState: false, output };
    if (action === 'start' && /already running/i.test(output)) return { ok: true, alreadyInState: true, output };
    if ((action === 'stop' || action === 'shutdown') && /not running/i.test(output))
      return { ok: true, alreadyInState: true, output };
    throw new Error(describeFailure(r));
  }
}
