/**
 * A generic-webhook receiver on 127.0.0.1 for notification tests: it keeps every JSON body it is sent, and its URL
 * (with a registered test token, so the secret scan looks for it) is written to a file for a notifier's `urlFile`.
 */
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { testSecret, writeSecretFile } from './secrets';

export interface WebhookReceiver<T> {
  /** The bodies received, in order. */
  received: T[];
  /** The file holding the receiver's URL. */
  urlFile: string;
  /** gpuops.yaml's notifier entry for it. */
  notifier(name: string): { type: 'webhook'; name: string; urlFile: string };
  close(): Promise<void>;
}

/** Start a receiver; its URL file goes in `dir` (a new temporary folder by default). */
export async function startWebhookReceiver<T = Record<string, unknown>>(
  dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-hook-')),
): Promise<WebhookReceiver<T>> {
  const received: T[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      received.push(JSON.parse(body) as T);
      res.end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const urlFile = path.join(dir, 'hook-url');
  writeSecretFile(urlFile, 'notifier-url', `http://127.0.0.1:${port}/hook/${testSecret('notifier-url-token')}`);
  return {
    received,
    urlFile,
    notifier: (name) => ({ type: 'webhook', name, urlFile }),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
