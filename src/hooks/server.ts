/**
 * The webhook receiver: POST /hooks/alertmanager turns firing Alertmanager alerts into `recoverNode` runs, at most
 * one per alert firing (fingerprint@startsAt) however often it is delivered. GET /healthz for probes.
 *
 * Two layers keep a recovery from starting twice: the persisted dedupe store (a redelivery of an alert already acted
 * on, even after a restart or after its recovery finished, starts nothing) and the workflow-ID conflict policy
 * USE_EXISTING on `recover:<node>` (a second alert about a node that is being recovered attaches to that run).
 */
import type { AddressInfo } from 'node:net';
import type { Client } from '@temporalio/client';
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import { resolveFrom, type LoadedConfig } from '../config/load';
import { fastifyLimits, refusalHandler, withLimits, type HttpLimits } from '../http-limits';
import { parseDuration } from '../domain/durations';
import { formatIssues } from '../domain/validation';
import { CONTROL_TASK_QUEUE, RecoverNodeInput, recoverNodeWorkflow, workflowIds } from '../contracts';
import { startWorkflow } from '../temporal/workflows';
import {
  AlertmanagerPayloadSchema,
  alertKey,
  matchNode,
  recoverInput,
  recoverSummary,
  type AlertmanagerAlert,
  type AlertRecoverInput,
} from './alertmanager';
import { SIGNATURE_HEADER, authenticate, loadHookSecrets } from './auth';
import { DedupeStore } from './dedupe';

/** Path Alertmanager's webhook_config.url points at. */
export const ALERTMANAGER_PATH = '/hooks/alertmanager';

/** Memo key holding the alert key that started a run: how a start tells "started" from "attached to a running one". */
const ALERT_KEY_MEMO = 'gpuopsAlertKey';

export interface HooksServerOptions {
  /** The validated config: node ids, and hooks.* defaults for everything below. */
  loaded: LoadedConfig;
  client: Client;
  /** host:port; port 0 picks a free port. Default hooks.listen. */
  listen?: string;
  /** Secret files, already resolved. Default hooks.tokenFile / hooks.hmacSecretFile (relative to the config). */
  tokenFile?: string;
  hmacSecretFile?: string;
  /** Dedupe store. Default hooks.stateFile, relative to the config file. */
  stateFile?: string;
  nodeLabel?: string;
  dedupeTtlMs?: number;
  /** Where recoveries are started. Default gpuops-control; tests use a queue of their own. */
  taskQueue?: string;
  /** One line per delivery and per decision; never given a credential. Default: silent. */
  log?: (line: string) => void;
  /** Request size and time limits; unset fields keep HOOKS_LIMITS. */
  limits?: Partial<HttpLimits>;
}

/**
 * The receiver's limits. Alertmanager sends a few KiB per group (and truncates at max_alerts); 4 MiB leaves room for
 * large groups. A request is read within 30 s; the idle timeout is long enough for a start that waits on Temporal.
 */
export const HOOKS_LIMITS: HttpLimits = {
  bodyLimitBytes: 4 * 1024 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  idleTimeoutMs: 120_000,
};

export interface HooksServer {
  /** Base URL, e.g. http://127.0.0.1:9095. */
  url: string;
  close(): Promise<void>;
}

/** An alert that was already acted on, or that a running recovery of its node took over. */
export interface DuplicateAlert {
  alertKey: string;
  node: string;
  workflowId: string;
  runId: string;
  /** seen: this key already started (or joined) a recovery; running: the node's recovery was already running. */
  why: 'seen' | 'running';
}

export interface IgnoredAlert {
  alertKey: string;
  alertname: string;
  reason: string;
}

/** The 200 response body of POST /hooks/alertmanager. */
export interface AlertmanagerHookResult {
  /** Workflow IDs of the recoveries this delivery started. */
  started: string[];
  duplicates: DuplicateAlert[];
  ignored: IgnoredAlert[];
}

function splitListen(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  const port = Number(listen.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535)
    throw new Error(`hooks.listen: must be host:port (got "${listen}")`);
  return { host: listen.slice(0, i), port };
}

/** Start the receiver. Reads the secrets and the dedupe store first, so a misconfiguration fails before listening. */
export async function startHooksServer(opts: HooksServerOptions): Promise<HooksServer> {
  const { loaded, client } = opts;
  const cfg = loaded.config.hooks;
  const fromConfig = (p: string | undefined): string | undefined => (p ? resolveFrom(loaded.path, p) : undefined);
  const log = opts.log ?? (() => undefined);
  const secrets = loadHookSecrets({
    tokenFile: opts.tokenFile ?? fromConfig(cfg?.tokenFile),
    hmacSecretFile: opts.hmacSecretFile ?? fromConfig(cfg?.hmacSecretFile),
  });
  const store = DedupeStore.open({
    file: opts.stateFile ?? resolveFrom(loaded.path, cfg?.stateFile ?? '.gpuops/hooks-seen.json'),
    ttlMs: opts.dedupeTtlMs ?? parseDuration(cfg?.dedupeTtl ?? '24h'),
    warn: log,
  });
  const nodeIds = new Set(loaded.config.nodes.map((n) => n.id));
  const nodeLabel = opts.nodeLabel ?? cfg?.nodeLabel ?? 'gpuops_node';
  const taskQueue = opts.taskQueue ?? CONTROL_TASK_QUEUE;

  // Deliveries are handled one at a time: alerts are rare, and this makes "is this key new?" → start → record one
  // step, so two Alertmanagers of an HA pair delivering the same alert at once start it once.
  let queue: Promise<unknown> = Promise.resolve();
  const serially = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = queue.then(fn);
    queue = next.catch(() => undefined);
    return next;
  };

  /** Start (or attach to) the node's recovery for one firing alert, and record its key. */
  async function recover(
    alert: AlertmanagerAlert,
    node: string,
    input: AlertRecoverInput,
  ): Promise<{ started: boolean } & DuplicateAlert> {
    const key = alertKey(alert);
    const workflowId = workflowIds.recover(node);
    const handle = await startWorkflow(client, recoverNodeWorkflow, input, {
      taskQueue,
      workflowId,
      // One recovery at a time per node: an alert about a node under recovery joins that run. Once a run has
      // closed, a new firing may start a new one.
      workflowIdConflictPolicy: 'USE_EXISTING',
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
      staticSummary: recoverSummary(alert, node),
      memo: { [ALERT_KEY_MEMO]: key },
    });
    const runId = handle.firstExecutionRunId;
    // The SDK does not say whether USE_EXISTING started a run or returned a running one; the memo of the run says
    // which alert started it.
    let started = true;
    try {
      const desc = await client.workflow.getHandle(workflowId, runId).describe();
      started = desc.memo?.[ALERT_KEY_MEMO] === key;
    } catch (err) {
      log(`hooks: cannot describe ${workflowId} run ${runId}: ${(err as Error).message}`);
    }
    store.record(key, { node, workflowId, runId });
    return { started, alertKey: key, node, workflowId, runId, why: 'running' };
  }

  async function handleAlerts(alerts: AlertmanagerAlert[]): Promise<AlertmanagerHookResult> {
    const result: AlertmanagerHookResult = { started: [], duplicates: [], ignored: [] };
    let changed = false;
    try {
      for (const alert of alerts) {
        const key = alertKey(alert);
        const alertname = alert.labels.alertname ?? '';
        if (alert.status === 'resolved') {
          // A recovery runs to its own verified end; a resolved alert neither starts nor stops one.
          result.ignored.push({ alertKey: key, alertname, reason: 'resolved' });
          continue;
        }
        const seen = store.get(key);
        if (seen) {
          const { node, workflowId, runId } = seen;
          result.duplicates.push({ alertKey: key, node, workflowId, runId, why: 'seen' });
          continue;
        }
        const match = matchNode(alert.labels, nodeIds, nodeLabel);
        if (match.node === null) {
          result.ignored.push({ alertKey: key, alertname, reason: match.why });
          log(`hooks: ignored ${alertname || key}: ${match.why}`);
          continue;
        }
        // The input is checked with recoverNode's own schema first: one it would refuse starts nothing, and the
        // refusal names the field and the rule (in the response and the log); the rest of the batch proceeds.
        const input = recoverInput(alert, match.node);
        const checked = RecoverNodeInput.safeParse(input);
        if (!checked.success) {
          const reason = `invalid recoverNode input: ${formatIssues(checked.error).join('; ')}`;
          result.ignored.push({ alertKey: key, alertname, reason });
          log(`hooks: refused ${alertname || key}: ${reason}`);
          continue;
        }
        const r = await recover(alert, match.node, input);
        changed = true;
        if (r.started) {
          result.started.push(r.workflowId);
          log(`hooks: started ${r.workflowId} (run ${r.runId}) for ${alertname} ${key}`);
        } else {
          const { started: _started, ...dup } = r;
          result.duplicates.push(dup);
          log(`hooks: ${alertname} ${key} joined the running ${r.workflowId}`);
        }
      }
    } finally {
      // Persist what was started even when a later alert of the batch failed to start: Alertmanager retries the
      // whole batch, and the retry must find these keys seen.
      if (changed) {
        try {
          store.save();
        } catch (err) {
          // The in-memory store still dedupes; only a restart before the next successful save could re-trigger.
          log(`hooks: cannot save dedupe state: ${(err as Error).message}`);
        }
      }
    }
    return result;
  }

  const limits = withLimits(HOOKS_LIMITS, opts.limits);
  const app = Fastify({ logger: false, ...fastifyLimits(limits) });
  // fastify's own refusals (a body over the limit, a bad Content-Length) say what was wrong, in this API's shape.
  app.setErrorHandler(refusalHandler(limits, log, 'hooks'));
  // The HMAC is over the exact bytes sent, so the body is kept raw and parsed only after authentication; this also
  // means an unauthenticated caller learns nothing about the payload format.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  app.get('/healthz', async () => ({ ok: true }));

  app.post(ALERTMANAGER_PATH, async (req: FastifyRequest, reply: FastifyReply) => {
    const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const signature = req.headers[SIGNATURE_HEADER];
    const auth = authenticate(
      secrets,
      { authorization: req.headers.authorization, signature: Array.isArray(signature) ? signature[0] : signature },
      raw,
    );
    if (!auth.ok) {
      log(`hooks: refused ${req.ip}: ${auth.why}`);
      return reply.code(401).header('www-authenticate', 'Bearer').send({ error: 'unauthorized' });
    }
    let json: unknown;
    try {
      json = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      return reply
        .code(400)
        .send({ error: 'invalid payload', problems: [`(root): not JSON (${(err as Error).message})`] });
    }
    const parsed = AlertmanagerPayloadSchema.safeParse(json);
    if (!parsed.success) {
      const problems = formatIssues(parsed.error);
      log(`hooks: bad payload from ${req.ip}: ${problems.join('; ')}`);
      return reply.code(400).send({ error: 'invalid payload', problems });
    }
    const payload = parsed.data;
    if (payload.truncatedAlerts > 0)
      log(`hooks: ${payload.truncatedAlerts} alert(s) of group ${payload.groupKey} were truncated by Alertmanager`);
    try {
      return await serially(() => handleAlerts(payload.alerts));
    } catch (err) {
      // Temporal unreachable (or refusing): 503 makes Alertmanager retry; keys started before the failure are saved.
      log(`hooks: cannot start recovery: ${(err as Error).message}`);
      return reply.code(503).send({ error: `cannot start recovery: ${(err as Error).message}` });
    }
  });

  const { host, port } = splitListen(opts.listen ?? cfg?.listen ?? '127.0.0.1:9095');
  await app.listen({ host, port });
  const addr = app.server.address() as AddressInfo;
  const shownHost = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${shownHost}:${addr.port}`,
    async close() {
      await app.close();
      await queue;
    },
  };
}
