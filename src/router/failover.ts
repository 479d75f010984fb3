/**
 * Failover and auto-drain: which upstream failures the router may retry on another variant, and the router's own
 * drain of a node whose engines all refuse connections. The auto-drained set is soft state beside the route table,
 * not in it: it never bumps the table's version (so it never makes a deployment's compare-and-swap fail), is not
 * persisted (after a restart a dead node is found again within a few refused connections), and never touches the
 * operator's `drained` list.
 */
import net from 'node:net';
import type { Config } from '../config/schema';
import { parseDuration } from '../domain/durations';
import type { RouterMetrics } from './metrics';
import { normalizeEngineUrl, type RouteStore } from './routes';

/**
 * Error codes of an engine request that provably never reached the engine, so retrying it elsewhere cannot run a
 * generation twice: the TCP connection was refused or never established (no route, no such host, connect timeout),
 * hence not one byte of the request was written. Deliberately absent: ECONNRESET, EPIPE and undici's
 * UND_ERR_SOCKET ("other side closed"). They happen on an established (often reused keep-alive) connection after
 * the request may have been written, i.e. the engine may have started generating; such a request is answered 502,
 * never retried.
 */
/** Resolver failures (the router's DNS, not the engine): retried on another variant, not evidence against a node. */
const RESOLVER_FAILURES: ReadonlySet<string> = new Set(['ENOTFOUND', 'EAI_AGAIN']);

const NEVER_SENT: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** The error's connect-level code when the request provably never reached the engine (see NEVER_SENT), else null. */
export function connectFailure(err: unknown): string | null {
  const e = err as { code?: unknown; cause?: { code?: unknown }; errors?: unknown } | null;
  if (!e) return null;
  // Happy-eyeballs connects (a name with IPv4 and IPv6 addresses) fail with an AggregateError: every try must be one.
  if (Array.isArray(e.errors) && e.errors.length > 0) {
    const codes = e.errors.map(connectFailure);
    return codes.every((c) => c !== null) ? (codes[0] ?? null) : null;
  }
  const code = typeof e.code === 'string' ? e.code : typeof e.cause?.code === 'string' ? e.cause.code : undefined;
  return code !== undefined && NEVER_SENT.has(code) ? code : null;
}

/** When the router drains a node by itself, and when it looks again. */
export interface AutoDrainOptions {
  /** Consecutive refused connections an engine needs before it counts as refusing (default 3). */
  refusals: number;
  /** How long, from its first refusal, a streak must last before it counts (default 5000 ms): a restart blip does not. */
  afterMs: number;
  /**
   * Fallback for a router with no watcher releasing its drains: an auto-drain this old (ms) gets a TCP connect to
   * each engine, again every as long; an engine that accepts is released. 0 turns it off (default 30 000).
   */
  recheckMs: number;
}

export const AUTO_DRAIN_DEFAULTS: AutoDrainOptions = { refusals: 3, afterMs: 5_000, recheckMs: 30_000 };

/** One engine the router drained by itself, as GET /admin/routes lists it under `autoDrained`. */
export interface AutoDrainEntry {
  /** Normalised engine URL. */
  engine: string;
  /** The node it runs on (gpuops.yaml), or `host:<hostname>` for an engine no node lists. */
  node: string;
  by: 'router';
  reason: string;
  /** ISO time it was drained. */
  since: string;
}

export interface AutoDrainDeps {
  store: RouteStore;
  metrics: RouterMetrics;
  log: (line: string) => void;
  /** Engine base URL → node id, from gpuops.yaml's nodes[].engines[].url. */
  engineNodes?: Record<string, string>;
  options?: Partial<AutoDrainOptions>;
  now?: () => number;
  /** Whether an engine accepts a TCP connection (the recheck); injectable for tests. */
  accepts?: (engine: string) => Promise<boolean>;
  /** Called after every change of the auto-drained set (the shadow mirror cuts copies to a drained engine). */
  onChange?: () => void;
}

interface Streak {
  count: number;
  since: number;
  code: string;
}

/**
 * Counts consecutive refused connections per engine and drains every routed engine of a node once all of them are
 * refusing. Which node an engine belongs to comes from gpuops.yaml (the same facts the watcher and recovery use, so
 * any writer of the route table, a hand-written PUT or an old state file included, is covered without a field on
 * the variant); an engine no node lists is grouped by its host, since engines on one machine share its fate.
 */
export class AutoDrainer {
  /** Normalised URLs of auto-drained engines; the data path reads it on every request. */
  readonly drained = new Set<string>();
  readonly options: AutoDrainOptions;
  private readonly streaks = new Map<string, Streak>();
  private readonly entries = new Map<string, AutoDrainEntry & { checkedAt: number }>();
  private readonly nodes = new Map<string, string>();
  private readonly now: () => number;
  private readonly accepts: (engine: string) => Promise<boolean>;
  private timer: NodeJS.Timeout | undefined;
  private checking = false;
  /** Set by close(): a recheck still running, or a late refusal, must not arm the timer again. */
  private closed = false;

  constructor(private readonly deps: AutoDrainDeps) {
    this.options = { ...AUTO_DRAIN_DEFAULTS, ...deps.options };
    for (const [url, node] of Object.entries(deps.engineNodes ?? {})) this.nodes.set(normalizeEngineUrl(url), node);
    this.now = deps.now ?? Date.now;
    this.accepts = deps.accepts ?? tcpAccepts;
    deps.metrics.trackAutoDrained(this.drained);
  }

  /** The node an engine belongs to. */
  nodeOf(engine: string): string {
    const url = normalizeEngineUrl(engine);
    return this.nodes.get(url) ?? `host:${new URL(url).hostname}`;
  }

  /** The engine answered (any status): its refusal streak ends. Per request, so it costs one size check when idle. */
  connected(engine: string): void {
    if (this.streaks.size !== 0) this.streaks.delete(normalizeEngineUrl(engine));
  }

  /** The engine refused a connection (`code`); drains its node when every routed engine of it is refusing. */
  refused(engine: string, code: string): void {
    // The router's own resolver failing says nothing about the node: retried elsewhere, never counted to a drain.
    if (RESOLVER_FAILURES.has(code)) return;
    const url = normalizeEngineUrl(engine);
    const now = this.now();
    const s = this.streaks.get(url);
    if (s) {
      s.count += 1;
      s.code = code;
    } else this.streaks.set(url, { count: 1, since: now, code });
    if (!this.drained.has(url) && this.isRefusing(url, now)) this.maybeDrainNode(this.nodeOf(url), now);
  }

  /**
   * Release auto-drains (the watcher saw the node healthy, an operator undrained the engine, or the recheck found
   * it accepting); the engines' refusal streaks start over. Returns the engines released.
   */
  release(engines: readonly string[], by: string): string[] {
    const released: string[] = [];
    for (const e of engines) {
      const url = normalizeEngineUrl(e);
      this.streaks.delete(url);
      if (!this.entries.delete(url)) continue;
      this.drained.delete(url);
      released.push(url);
    }
    if (released.length > 0) {
      this.deps.log(`router: auto-drain released by ${by}: ${released.join(', ')}`);
      this.changed();
    }
    return released;
  }

  /** The auto-drained engines, oldest first. */
  list(): AutoDrainEntry[] {
    return [...this.entries.values()].map(({ checkedAt: _, ...e }) => e);
  }

  /** Stop the recheck timer for good (the router is closing). */
  close(): void {
    this.closed = true;
    this.stopTimer();
  }

  private stopTimer(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private isRefusing(url: string, now: number): boolean {
    const s = this.streaks.get(url);
    return s !== undefined && s.count >= this.options.refusals && now - s.since >= this.options.afterMs;
  }

  /**
   * The node's engines that carry traffic: in a variant with weight > 0 and not drained by an operator or already by
   * the router. Engines without traffic give no evidence, so they neither block nor join the drain.
   */
  private routedEngines(node: string): string[] {
    const snap = this.deps.store.current;
    const out = new Set<string>();
    for (const route of Object.values(snap.routes)) {
      for (const v of route.variants) {
        const url = normalizeEngineUrl(v.engine);
        if (v.weight > 0 && !snap.drained.includes(url) && !this.drained.has(url) && this.nodeOf(url) === node)
          out.add(url);
      }
    }
    return [...out];
  }

  private maybeDrainNode(node: string, now: number): void {
    const engines = this.routedEngines(node);
    if (engines.length === 0 || !engines.every((u) => this.isRefusing(u, now))) return;
    const since = new Date(now).toISOString();
    for (const url of engines) {
      const s = this.streaks.get(url);
      const reason =
        `every routed engine of node ${node} refused ${this.options.refusals}+ consecutive connections ` +
        `over ${this.options.afterMs} ms (${s?.count ?? 0} refused, last ${s?.code ?? '?'})`;
      this.entries.set(url, { engine: url, node, by: 'router', reason, since, checkedAt: now });
      this.drained.add(url);
    }
    this.deps.log(`router: auto-drained node ${node}: ${engines.join(', ')} (all refusing connections)`);
    this.deps.metrics.autoDrainedNode(node);
    this.changed();
  }

  /** The drained set changed (on a client's request path, from refused()): never throws. */
  private changed(): void {
    this.deps.metrics.autoDrainsChanged(this.list(), this.deps.store.current);
    if (this.entries.size === 0) this.stopTimer();
    else if (!this.timer && !this.closed && this.options.recheckMs > 0) {
      this.timer = setInterval(() => void this.recheck(), Math.min(this.options.recheckMs, 5_000));
      this.timer.unref();
    }
    // Last, once the recheck is armed: a listener's failure is logged, never the request's nor the drain's.
    try {
      this.deps.onChange?.();
    } catch (err) {
      this.deps.log(`router: auto-drain change listener failed: ${String(err)}`);
    }
  }

  /** The fallback when no watcher releases a drain: engines drained (or last checked) recheckMs ago get a connect. */
  private async recheck(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      const due = [...this.entries.values()].filter((e) => this.now() - e.checkedAt >= this.options.recheckMs);
      const ok = await Promise.all(due.map((e) => this.accepts(e.engine)));
      for (const e of due) e.checkedAt = this.now();
      this.release(
        due.filter((_, i) => ok[i]).map((e) => e.engine),
        'router recheck (engine accepts connections)',
      );
    } finally {
      this.checking = false;
    }
  }
}

/** Whether a TCP connection to the engine's host and port succeeds within 2 s. */
export function tcpAccepts(engine: string): Promise<boolean> {
  const u = new URL(engine);
  const port = Number(u.port) || (u.protocol === 'https:' ? 443 : 80);
  return new Promise((resolve) => {
    const sock = net.connect({ host: u.hostname, port, timeout: 2_000 });
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.once('connect', () => done(true));
    sock.once('timeout', () => done(false));
    sock.once('error', () => done(false));
  });
}

/**
 * The router's failover options from gpuops.yaml: engine URL → node id for every engine of every node, and
 * `router.autoDrain` in milliseconds.
 */
export function autoDrainFromConfig(config: Pick<Config, 'nodes' | 'router'>): {
  engineNodes: Record<string, string>;
  autoDrain: AutoDrainOptions;
} {
  const engineNodes: Record<string, string> = {};
  for (const n of config.nodes) for (const e of n.engines) engineNodes[e.url] = n.id;
  const a = config.router.autoDrain;
  return {
    engineNodes,
    autoDrain: { refusals: a.refusals, afterMs: parseDuration(a.after), recheckMs: parseDuration(a.recheck) },
  };
}
