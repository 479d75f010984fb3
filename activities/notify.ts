/**
 * Notifications from the control worker: a generic JSON webhook, Slack or Discord incoming webhooks. Webhook URLs
 * are secrets (they embed a token): each is read from its urlFile inside the activity and never logged or returned.
 */
import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import type { NotifierSchema } from '../src/config/schema';
import { nonRetryable } from './activity-context';

type NotifierConfig = z.infer<typeof NotifierSchema>;

/** One notification. */
export interface NotifyInput {
  /** Short headline, e.g. "backup model-store-a failed". */
  title: string;
  /** Body text (plain; Slack/Discord render it as markdown). */
  text: string;
  severity: 'info' | 'warning' | 'critical';
  /** Only these notifiers (by name); default: all. */
  to?: string[];
  /** Structured facts for generic webhooks. */
  fields?: Record<string, string | number | boolean | null>;
}

/** Who got it. Errors name the notifier and HTTP status, never the URL. */
export interface NotifyResult {
  sent: string[];
  failed: { name: string; error: string }[];
}

/** What createNotifyActivities needs. */
export interface NotifyActivityDeps {
  notifiers: readonly NotifierConfig[];
  resolvePath?: (p: string) => string;
  /** HTTP timeout per notifier (default 10 s). */
  timeoutMs?: number;
}

function body(n: NotifierConfig, m: NotifyInput): unknown {
  const line = `[${m.severity.toUpperCase()}] ${m.title}`;
  switch (n.type) {
    case 'slack':
      return { text: `*${line}*\n${m.text}` };
    case 'discord':
      // Discord rejects content over 2000 characters.
      return { content: `**${line}**\n${m.text}`.slice(0, 2000) };
    case 'webhook':
      return { source: 'gpuops', title: m.title, text: m.text, severity: m.severity, fields: m.fields ?? {} };
  }
}

/** Notification activities. */
export function createNotifyActivities({ notifiers, resolvePath = (p) => p, timeoutMs = 10_000 }: NotifyActivityDeps) {
  return {
    /**
     * Send a notification to every configured notifier (or those named). Succeeds when at least one got it, or none
     * is configured; fails (and is retried) when all failed.
     */
    async notify(input: NotifyInput): Promise<NotifyResult> {
      const targets = notifiers.filter((n) => !input.to || input.to.includes(n.name));
      if (input.to) {
        const unknown = input.to.filter((t) => !notifiers.some((n) => n.name === t));
        if (unknown.length) throw nonRetryable('UnknownNotifier', `no notifier named ${unknown.join(', ')}`);
      }
      const result: NotifyResult = { sent: [], failed: [] };
      await Promise.all(
        targets.map(async (n) => {
          try {
            const url = (await readFile(resolvePath(n.urlFile), 'utf8')).trim();
            const res = await fetch(url, {
              method: 'POST',
              headers: { 'content-type': 'application/json' },
              body: JSON.stringify(body(n, input)),
              signal: AbortSignal.timeout(timeoutMs),
            });
            if (!res.ok) throw new Error(`HTTP ${res.status}`);
            result.sent.push(n.name);
          } catch (err) {
            // fetch errors can quote the URL; keep only the cause's kind. fetch's own is a bare "TypeError: fetch
            // failed" whose cause holds the system error's code (ECONNREFUSED, ENOTFOUND).
            const e = err as Error & { code?: string; cause?: { code?: unknown } };
            const causeCode = typeof e.cause?.code === 'string' ? e.cause.code : undefined;
            const msg = /^HTTP \d+$/.test(e.message) ? e.message : (e.code ?? causeCode ?? e.name);
            result.failed.push({ name: n.name, error: msg });
          }
        }),
      );
      if (targets.length > 0 && result.sent.length === 0) {
        throw new Error(`every notifier failed: ${result.failed.map((f) => `${f.name} (${f.error})`).join(', ')}`);
      }
      return result;
    },
  };
}

/** The notify activity object. */
export type NotifyActivities = ReturnType<typeof createNotifyActivities>;
