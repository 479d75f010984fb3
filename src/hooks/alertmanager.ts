/**
 * Prometheus Alertmanager's webhook payload (version "4", as `webhook_config` receivers get it) and how one alert
 * becomes the input of a `recoverNode` run. Pure: no I/O, so the mapping rules are unit-testable on their own.
 */
import { z } from 'zod';

/** Label and annotation maps: Alertmanager sends every value as a string. */
const StringMap = z.record(z.string(), z.string());

/** One alert of a notification (`.Alerts` in Alertmanager's template data). */
export const AlertmanagerAlertSchema = z.object({
  status: z.enum(['firing', 'resolved']),
  labels: StringMap,
  annotations: StringMap.default({}),
  // Bounded because fingerprint@startsAt goes into the workflow input (recoverNode caps alertKey at 200 characters):
  // Alertmanager sends 16 hex digits and an RFC 3339 time.
  startsAt: z.string().min(1, { message: 'must be an RFC 3339 time' }).max(64),
  endsAt: z.string().optional(),
  generatorURL: z.string().optional(),
  fingerprint: z.string().min(1, { message: 'must be the alert fingerprint' }).max(128),
});

/**
 * The body Alertmanager POSTs to a webhook receiver. Not strict: Alertmanager (and Grafana's compatible sender)
 * add fields over time, and an unknown extra field must not make us drop a real alert.
 */
export const AlertmanagerPayloadSchema = z.object({
  version: z.literal('4'),
  groupKey: z.string(),
  truncatedAlerts: z.int().min(0).default(0),
  status: z.enum(['firing', 'resolved']),
  receiver: z.string(),
  groupLabels: StringMap.default({}),
  commonLabels: StringMap.default({}),
  commonAnnotations: StringMap.default({}),
  externalURL: z.string().default(''),
  alerts: z.array(AlertmanagerAlertSchema),
});

export type AlertmanagerAlert = z.output<typeof AlertmanagerAlertSchema>;
export type AlertmanagerPayload = z.output<typeof AlertmanagerPayloadSchema>;

/**
 * The `recoverNode` input the receiver builds from an alert: a narrowing of contracts' RecoverNodeInput, whose schema
 * the receiver checks it with before it starts anything (src/hooks/server.ts).
 */
export interface AlertRecoverInput {
  node: string;
  reason: string;
  trigger: { source: 'alertmanager'; detail: string; alertKey: string };
  /** Fault kind named by the alert's `gpuops_fault` label, when the alert rule sets one. */
  fault?: string;
}

/** Label an alert rule sets to name the fault kind outright (e.g. "xid-79"), saving the workflow a diagnosis. */
export const FAULT_LABEL = 'gpuops_fault';

/** Longest `trigger.detail` / `reason` we put in workflow history: annotations can carry whole runbooks. */
const MAX_DETAIL = 1000;
const MAX_REASON = 200;

/**
 * The idempotency key of an alert. Alertmanager's fingerprint identifies the label set; startsAt tells one firing of
 * it from the next, so a flapping alert that resolved and fired again is a new key while every redelivery (group
 * repeat, retry, a second Alertmanager in an HA pair) of the same firing is the same key.
 */
export function alertKey(alert: Pick<AlertmanagerAlert, 'fingerprint' | 'startsAt'>): string {
  return `${alert.fingerprint}@${alert.startsAt}`;
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/**
 * Host part of a Prometheus `instance` label: "gpu-1:9400", "[fe80::1]:9400", "http://gpu-1.lan:8080/metrics" and
 * "gpu-1" all name their host; lowercased, as hostnames compare case-insensitively.
 */
export function instanceHost(instance: string): string {
  let rest = instance.trim().replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  rest = rest.split(/[/?#]/)[0] ?? '';
  rest = rest.replace(/^[^@]*@/, '');
  const bracketed = /^\[([^\]]+)\]/.exec(rest);
  if (bracketed?.[1]) return bracketed[1].toLowerCase();
  // Exactly one colon is host:port; more than one is a bare IPv6 address.
  if (rest.split(':').length === 2) rest = rest.slice(0, rest.indexOf(':'));
  return rest.toLowerCase();
}

/** Which configured node an alert is about, or why none. */
export type NodeMatch = { node: string; label: string } | { node: null; why: string };

/**
 * Find the node an alert is about. `nodeLabel` (default gpuops_node) is authoritative when present: an alert rule
 * that names a node explicitly and gets it wrong should be reported, not silently matched by its instance. Without
 * it, the `node` label, then the host of `instance` (also its first DNS label, so "gpu-1.lan:9400" is node gpu-1)
 * are tried, and the first that is a configured node id wins.
 */
export function matchNode(labels: Record<string, string>, nodeIds: ReadonlySet<string>, nodeLabel: string): NodeMatch {
  const explicit = labels[nodeLabel];
  if (explicit !== undefined) {
    return nodeIds.has(explicit)
      ? { node: explicit, label: nodeLabel }
      : { node: null, why: `${nodeLabel}="${explicit}" is not a configured node` };
  }
  const candidates: [string, string][] = [];
  if (labels.node !== undefined) candidates.push(['node', labels.node]);
  if (labels.instance !== undefined) {
    const host = instanceHost(labels.instance);
    candidates.push(['instance', host]);
    const first = host.split('.')[0];
    if (first && first !== host && !/^\d+$/.test(first)) candidates.push(['instance', first]);
  }
  for (const [label, value] of candidates) if (nodeIds.has(value)) return { node: value, label };
  const seen = [nodeLabel, 'node', 'instance'].filter((l) => labels[l] !== undefined);
  return {
    node: null,
    why:
      seen.length === 0
        ? `no ${nodeLabel}, node or instance label`
        : `${seen.map((l) => `${l}="${labels[l] ?? ''}"`).join(', ')} name no configured node`,
  };
}

/** The recoverNode input for a firing alert about `node`. */
export function recoverInput(alert: AlertmanagerAlert, node: string): AlertRecoverInput {
  const alertname = alert.labels.alertname ?? 'unnamed alert';
  const { summary, description } = alert.annotations;
  const parts = [alertname, summary && `summary: ${summary}`, description && `description: ${description}`];
  const fault = alert.labels[FAULT_LABEL];
  return {
    node,
    reason: truncate(summary ? `${alertname}: ${summary}` : alertname, MAX_REASON),
    trigger: {
      source: 'alertmanager',
      detail: truncate(parts.filter(Boolean).join('; '), MAX_DETAIL),
      alertKey: alertKey(alert),
    },
    ...(fault ? { fault: truncate(fault, MAX_REASON) } : {}),
  };
}

/** What the Temporal UI shows for the run (the contract's staticSummary). */
export function recoverSummary(alert: AlertmanagerAlert, node: string): string {
  return `Recover ${node}: ${alert.labels.alertname ?? 'unnamed alert'} (Alertmanager)`;
}
