/**
 * Test doubles for host tools and HTTP services: a fake executable that answers by argument rules and records its
 * calls, and a tiny node:http server on an ephemeral port.
 */
import { chmodSync, mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const FIXTURES = path.join(__dirname, '..', 'fixtures');

/** Read a fixture file as text. */
export function fixture(rel: string): string {
  return readFileSync(path.join(FIXTURES, rel), 'utf8');
}

/** How a fake tool answers a call whose leading arguments equal `args` (no `args`: any call). */
export interface FakeRule {
  args?: string[];
  stdout?: string;
  stderr?: string;
  exit?: number;
}

export interface FakeTool {
  /** Absolute path of the executable. */
  bin: string;
  /** Argument vectors of every call so far. */
  calls(): string[][];
}

/**
 * An executable named `name` that prints per the first matching rule. It is a Node script, so it runs wherever the
 * tests do; its argv is recorded exactly as received (proving argument arrays reach the tool unsplit).
 */
export function fakeTool(name: string, rules: FakeRule[]): FakeTool {
  const dir = mkdtempSync(path.join(os.tmpdir(), `gpuops-fake-${name}-`));
  const bin = path.join(dir, name);
  const rulesFile = path.join(dir, 'rules.json');
  const callsFile = path.join(dir, 'calls.jsonl');
  writeFileSync(rulesFile, JSON.stringify(rules));
  writeFileSync(
    bin,
    `#!/usr/bin/env node
const fs = require('fs');
const argv = process.argv.slice(2);
fs.appendFileSync(${JSON.stringify(callsFile)}, JSON.stringify(argv) + '\\n');
const rules = JSON.parse(fs.readFileSync(${JSON.stringify(rulesFile)}, 'utf8'));
const rule = rules.find((r) => !r.args || r.args.every((a, i) => argv[i] === a));
if (!rule) { process.stderr.write('fake ${name}: no rule for ' + JSON.stringify(argv) + '\\n'); process.exit(99); }
if (rule.stdout) process.stdout.write(rule.stdout);
if (rule.stderr) process.stderr.write(rule.stderr);
process.exitCode = rule.exit || 0;
`,
  );
  chmodSync(bin, 0o755);
  return {
    bin,
    calls: () =>
      existsSync(callsFile)
        ? readFileSync(callsFile, 'utf8')
            .split('\n')
            .filter((l) => l !== '')
            .map((l) => JSON.parse(l) as string[])
        : [],
  };
}

/** A request the test server received. */
export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface TestServer {
  url: string;
  requests: SeenRequest[];
  close(): Promise<void>;
}

/** An HTTP server on 127.0.0.1:<ephemeral> whose handler sees the buffered body. */
export async function startServer(
  handler: (req: SeenRequest, res: http.ServerResponse) => unknown,
): Promise<TestServer> {
  const requests: SeenRequest[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const seen: SeenRequest = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      };
      requests.push(seen);
      Promise.resolve(handler(seen, res)).catch((err: unknown) => {
        res.statusCode = 500;
        res.end(String(err));
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        // Hung handlers keep sockets open on purpose; drop them so the server can close.
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Send a JSON body with a status. */
export function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
  res.end(text);
}
