/**
 * Router added latency against nginx, in the same run, on the same upstream: a minimal node:http engine that
 * answers a chat completion as a 5-chunk SSE stream. Each request goes direct, through nginx (proxy_buffering off,
 * upstream keep-alive) and through the router, interleaved so all three share the machine's noise; then the same
 * again with concurrent clients. Added latency = percentile(via proxy) − percentile(direct). Loopback only. The
 * upstream and the router each run in a child process of their own, as nginx does, so none of them shares an
 * event loop with the load generator.
 *
 *   npx tsx bench/router.ts          (or npm run bench)
 *   BENCH_REQUESTS=500 npx tsx bench/router.ts
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Agent, request } from 'undici';
import { tsxCommand } from '../src/cli/processes';
import { startRouter } from '../src/router';
import { freePort } from '../src/sandbox/node';

const NGINX = process.env.NGINX_BIN ?? '/usr/sbin/nginx';
/** Requests per target and phase (bounded: the whole bench stays under a minute on a small box). */
const N = Math.min(5000, Math.max(50, Number(process.env.BENCH_REQUESTS ?? 1000)));
const CONCURRENCY = 16;
const WARMUP = 100;

const CHUNKS = [
  ...Array.from(
    { length: 4 },
    (_, i) =>
      `data: ${JSON.stringify({ id: 'b', object: 'chat.completion.chunk', model: 'upstream-model', choices: [{ index: 0, delta: { content: `tok${i} ` } }] })}\n\n`,
  ),
  'data: [DONE]\n\n',
];

/** The upstream: reads the body, streams five SSE chunks back at once (no artificial delay). */
async function startUpstream(): Promise<{ url: string; close: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      for (const c of CHUNKS) res.write(c);
      res.end();
    });
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const a = server.address();
  return {
    url: `http://127.0.0.1:${a && typeof a === 'object' ? a.port : 0}`,
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

/** A real nginx (non-daemon child) proxying to the upstream, config and temp files in a temp dir. */
async function startNginx(upstreamPort: number): Promise<{ url: string; close: () => Promise<void> }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'gpuops-bench-nginx-'));
  const port = await freePort();
  const conf = `
worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream engine { server 127.0.0.1:${upstreamPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
`;
  writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const child: ChildProcess = spawn(
    NGINX,
    ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'error.log')],
    {
      stdio: ['ignore', 'inherit', 'inherit'],
    },
  );
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const deadline = Date.now() + 5000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nginx exited with ${child.exitCode}; see ${dir}/error.log`);
    if (await canConnect(port)) break;
    if (Date.now() > deadline) throw new Error('nginx did not start listening within 5 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      child.kill('SIGQUIT');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

interface Target {
  name: string;
  url: string;
  model: string;
  agent: Agent;
  samples: number[];
}

/** One request to the end of the body; returns ms. */
async function once(t: Target): Promise<number> {
  const t0 = performance.now();
  const res = await request(`${t.url}/v1/chat/completions`, {
    method: 'POST',
    dispatcher: t.agent,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: t.model, stream: true, messages: [{ role: 'user', content: 'hi' }] }),
  });
  for await (const _ of res.body) {
    // drain
  }
  if (res.statusCode !== 200) throw new Error(`${t.name}: HTTP ${res.statusCode}`);
  return performance.now() - t0;
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? NaN;
}

async function phase(targets: Target[], concurrency: number): Promise<void> {
  for (const t of targets) t.samples = [];
  // Interleave: each worker sends direct, nginx, router in turn, so the three see the same load over time.
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < N) {
      next += 1;
      for (const t of targets) t.samples.push(await once(t));
    }
  };
  await Promise.all(Array.from({ length: concurrency }, () => worker()));
}

function report(title: string, targets: Target[]): void {
  const [direct, nginx, router] = targets as [Target, Target, Target];
  const f = (n: number): string => n.toFixed(3).padStart(8);
  console.log(`\n${title} (${direct.samples.length} requests per target)`);
  console.log('  target      p50 ms   p99 ms   added p50   added p99');
  for (const t of targets) {
    const a50 = pct(t.samples, 50) - pct(direct.samples, 50);
    const a99 = pct(t.samples, 99) - pct(direct.samples, 99);
    console.log(
      `  ${t.name.padEnd(8)} ${f(pct(t.samples, 50))} ${f(pct(t.samples, 99))}  ${t === direct ? '       -' : f(a50)}    ${t === direct ? '       -' : f(a99)}`,
    );
  }
  const r50 = pct(router.samples, 50) - pct(direct.samples, 50);
  const n50 = pct(nginx.samples, 50) - pct(direct.samples, 50);
  const r99 = pct(router.samples, 99) - pct(direct.samples, 99);
  const n99 = pct(nginx.samples, 99) - pct(direct.samples, 99);
  // A proxy that adds nothing measurable (or less than the noise) makes a ratio meaningless; say so instead.
  const ratio = (r: number, n: number): string => (n > 0.02 ? `${(r / n).toFixed(2)}×` : 'n/a (nginx added ≈ 0)');
  console.log(
    `  router added latency: p50 ${r50.toFixed(3)} ms, p99 ${r99.toFixed(3)} ms; nginx: p50 ${n50.toFixed(3)} ms, p99 ${n99.toFixed(3)} ms; ratio router/nginx p50 ${ratio(r50, n50)}, p99 ${ratio(r99, n99)}`,
  );
}

/** Run this file in a child process in `mode`; resolves with the URL it printed as `READY <url>`. */
async function child(mode: string, arg?: string): Promise<{ url: string; close: () => Promise<void> }> {
  const cmd = tsxCommand('bench/router.ts', [mode, ...(arg ? [arg] : [])]);
  const proc = spawn(cmd.command, cmd.args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      const m = /READY (\S+)/.exec(out);
      if (m?.[1]) resolve(m[1]);
    });
    proc.once('exit', (code) => reject(new Error(`${mode} exited with ${code}`)));
  });
  return {
    url,
    close: async () => {
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

/** Child mode: serve the upstream or a router in front of `arg` until SIGTERM. */
async function serve(mode: string, arg: string | undefined): Promise<void> {
  let close: () => Promise<void>;
  if (mode === '--serve-upstream') {
    const up = await startUpstream();
    close = up.close;
    console.log(`READY ${up.url}`);
  } else {
    const router = await startRouter({
      port: 0,
      initialRoutes: {
        routes: {
          bench: {
            variants: [{ name: 'stable', engine: arg ?? '', engineType: 'vllm', model: 'upstream-model', weight: 100 }],
          },
        },
      },
    });
    close = router.close;
    console.log(`READY ${router.url}`);
  }
  process.once('SIGTERM', () => void close().then(() => process.exit(0)));
}

/** Run the router benchmark and print its table. */
export async function run(): Promise<void> {
  const upstream = await child('--serve-upstream');
  const nginx = await startNginx(Number(new URL(upstream.url).port));
  const router = await child('--serve-router', upstream.url);
  const mk = (name: string, url: string, model: string): Target => ({
    name,
    url,
    model,
    agent: new Agent({ keepAliveTimeout: 30_000, connections: CONCURRENCY * 2 }),
    samples: [],
  });
  const targets = [
    mk('direct', upstream.url, 'upstream-model'),
    mk('nginx', nginx.url, 'upstream-model'),
    mk('router', router.url, 'bench'),
  ];
  try {
    console.log(`router bench: node ${process.version}, nginx ${NGINX}, upstream ${upstream.url} (5-chunk SSE)`);
    for (let i = 0; i < WARMUP; i++) for (const t of targets) await once(t);
    await phase(targets, 1);
    report('sequential', targets);
    await phase(targets, CONCURRENCY);
    report(`concurrent (${CONCURRENCY} clients)`, targets);
  } finally {
    await Promise.all(targets.map((t) => t.agent.close()));
    await router.close();
    await nginx.close();
    await upstream.close();
  }
}

if (require.main === module) {
  const mode = process.argv[2];
  (mode?.startsWith('--serve-') ? serve(mode, process.argv[3]) : run()).catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
