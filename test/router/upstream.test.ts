/**
 * The engine call on undici's dispatcher API (src/router/upstream.ts) as the proxy drives it: a burst of body chunks
 * that arrives with the headers, before the proxy pipes it, is written out with one wait for the client socket to
 * drain at a time, never a listener per chunk.
 */
import http from 'node:http';
import { startRouter } from '../../src/router';
import { startFixture } from './helpers';

test('a burst of chunks that a full client socket refuses waits for one drain at a time (no listener leak)', async () => {
  const EVENTS = 400;
  const event = `data: ${JSON.stringify({ choices: [{ delta: { content: 'x'.repeat(1024) } }] })}\n\n`;
  const fx = await startFixture((_req, res) => {
    // All in one go: most of it reaches the router with the headers, ahead of the proxy's pipe.
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (let i = 0; i < EVENTS; i++) res.write(event);
    res.end();
  });
  // The most 'drain' listeners any response had at once (node itself warns past 10, asynchronously).
  let most = 0;
  const proto = http.ServerResponse.prototype;
  const on = proto.on;
  proto.on = function (this: http.ServerResponse, ev: string, fn: (...a: unknown[]) => void) {
    const r = on.call(this, ev, fn);
    if (ev === 'drain') most = Math.max(most, this.listenerCount('drain'));
    return r;
  } as typeof on;
  const router = await startRouter({
    port: 0,
    initialRoutes: {
      routes: { chat: { variants: [{ name: 'stable', engine: fx.url, engineType: 'vllm', model: 'm', weight: 100 }] } },
    },
  });
  try {
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${router.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'chat', stream: true, messages: [] }),
      });
      const text = await res.text();
      expect(text.length).toBe(event.length * EVENTS);
    }
    // The writes did wait for the client socket (else the test proves nothing), one wait at a time.
    expect(most).toBe(1);
  } finally {
    proto.on = on;
    await router.close();
    await fx.close();
  }
});
