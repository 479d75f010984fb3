/**
 * The admin API: bearer-token auth that fails closed, atomic replace with compare-and-swap, weight patches, drain,
 * and a route table that survives a restart.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { startRouter, type RouterHandle } from '../../src/router';
import { canaryRoute, tempDir, tokenFile } from './helpers';

let dir: string;
let cleanup: () => void;
let token: string;
let router: RouterHandle;
const stateFile = (): string => path.join(dir, 'state', 'routes.json');

const table = {
  routes: {
    chat: canaryRoute(
      { engine: 'http://127.0.0.1:9/', model: 'qwen2.5:0.5b', weight: 90 },
      { engine: 'http://127.0.0.1:10', model: 'qwen2.5:0.5b-good', weight: 10 },
    ),
  },
};

beforeEach(async () => {
  const t = tempDir();
  dir = t.dir;
  cleanup = t.cleanup;
  token = tokenFile(dir);
  router = await startRouter({ port: 0, stateFile: stateFile(), adminTokenFile: token });
});

afterEach(async () => {
  await router.close();
  cleanup();
});

async function admin(
  method: string,
  p: string,
  body?: unknown,
  headers: Record<string, string> = { authorization: 'Bearer s3cret-token' },
): Promise<{ status: number; etag: string | null; json: Record<string, unknown> }> {
  const res = await fetch(`${router.adminUrl}${p}`, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.status, etag: res.headers.get('etag'), json: (await res.json()) as Record<string, unknown> };
}

describe('authentication', () => {
  test.each([
    ['no Authorization header', {}],
    ['a wrong token', { authorization: 'Bearer s3cret-tokeN' }],
    ['a token prefix', { authorization: 'Bearer s3cret' }],
    ['the token without the Bearer scheme', { authorization: 's3cret-token' }],
  ])('refuses %s with 401 and changes nothing', async (_what, headers: Record<string, string>) => {
    await admin('PUT', '/routes', table);
    const before = readFileSync(stateFile(), 'utf8');
    const calls: [string, string, unknown][] = [
      ['PUT', '/routes', { routes: {} }],
      ['PATCH', '/routes/chat/weights', { weights: { canary: 100 } }],
      ['POST', '/drain', { engine: 'http://127.0.0.1:9' }],
      ['GET', '/routes', undefined],
      ['GET', '/stats', undefined],
    ];
    for (const [method, p, body] of calls) {
      const r = await admin(method, p, body, headers);
      expect([method, p, r.status]).toEqual([method, p, 401]);
      expect(r.json.error).toMatch(/unauthorized/);
    }
    expect(router.table.current.version).toBe(1);
    expect(readFileSync(stateFile(), 'utf8')).toBe(before);
  });

  test('refuses every call when no token file is configured', async () => {
    const open = await startRouter({ port: 0 });
    try {
      const res = await fetch(`${open.adminUrl}/routes`, {
        method: 'PUT',
        headers: { authorization: 'Bearer ', 'content-type': 'application/json' },
        body: JSON.stringify(table),
      });
      expect(res.status).toBe(401);
      expect(open.table.current.version).toBe(0);
    } finally {
      await open.close();
    }
  });

  test('accepts the token from the file and logs the change without the token', async () => {
    const lines: string[] = [];
    const logged = await startRouter({ port: 0, adminTokenFile: token, log: (l) => lines.push(l) });
    try {
      const res = await fetch(`${logged.adminUrl}/routes`, {
        method: 'PUT',
        headers: { authorization: 'Bearer s3cret-token', 'x-gpuops-actor': 'deployModel/wf-1' },
        body: JSON.stringify(table),
      });
      expect(res.status).toBe(200);
      expect(lines.some((l) => l.includes('deployModel/wf-1') && l.includes('version 0 → 1'))).toBe(true);
      expect(lines.join('\n')).not.toContain('s3cret');
    } finally {
      await logged.close();
    }
  });
});

describe('route changes', () => {
  test('PUT replaces the table and returns the new version as an ETag', async () => {
    const r = await admin('PUT', '/routes', table);
    expect(r.status).toBe(200);
    expect(r.etag).toBe('"1"');
    expect(r.json).toMatchObject({ version: 1, etag: '"1"', drained: [] });
    const get = await admin('GET', '/routes');
    expect(get.json.routes).toEqual(table.routes);
  });

  test('PUT with a stale If-Match gets 409 and changes nothing; the current ETag succeeds', async () => {
    await admin('PUT', '/routes', table);
    await admin('PATCH', '/routes/chat/weights', { weights: { canary: 20, stable: 80 } });
    const stale = await admin(
      'PUT',
      '/routes',
      { routes: {} },
      { authorization: 'Bearer s3cret-token', 'if-match': '"1"' },
    );
    expect(stale.status).toBe(409);
    expect(stale.json).toMatchObject({ version: 2, etag: '"2"' });
    expect(Object.keys(router.table.current.routes)).toEqual(['chat']);
    const fresh = await admin(
      'PUT',
      '/routes',
      { routes: {} },
      { authorization: 'Bearer s3cret-token', 'if-match': '"2"' },
    );
    expect(fresh.status).toBe(200);
    expect(fresh.json).toMatchObject({ version: 3, routes: {} });
  });

  test('PATCH changes one alias’s weights atomically and keeps the rest', async () => {
    await admin('PUT', '/routes', {
      ...table,
      routes: {
        ...table.routes,
        other: canaryRoute(
          { engine: 'http://a:1', model: 'x', weight: 1 },
          { engine: 'http://b:1', model: 'y', weight: 0 },
        ),
      },
    });
    const r = await admin('PATCH', '/routes/chat/weights', { weights: { canary: 50 } });
    expect(r.status).toBe(200);
    const chat = router.table.current.routes.chat!;
    expect(chat.variants.map((v) => [v.name, v.weight])).toEqual([
      ['stable', 90],
      ['canary', 50],
    ]);
    expect(router.table.current.routes.other!.variants.map((v) => v.weight)).toEqual([1, 0]);
    expect((await admin('PATCH', '/routes/nope/weights', { weights: { canary: 1 } })).status).toBe(404);
    const bad = await admin('PATCH', '/routes/chat/weights', { weights: { canray: 1 } });
    expect(bad.status).toBe(400);
    expect(bad.json.problems).toEqual(['weights.canray: no such variant in "chat"']);
    const zero = await admin('PATCH', '/routes/chat/weights', { weights: { canary: 0, stable: 0 } });
    expect(zero.status).toBe(400);
    expect(router.table.current.version).toBe(2);
  });

  test('an invalid table is refused with field-named problems and changes nothing', async () => {
    const r = await admin('PUT', '/routes', {
      routes: {
        chat: {
          variants: [
            { name: 'stable', engine: 'not a url', engineType: 'ollama', model: 'm', weight: 101 },
            { name: 'stable', engine: 'http://a:1', engineType: 'tgi', model: '', weight: 1 },
          ],
        },
      },
    });
    expect(r.status).toBe(400);
    expect(r.json.problems).toEqual(
      expect.arrayContaining([
        'routes.chat.variants[0].engine: must be an http(s) URL',
        expect.stringMatching(/^routes\.chat\.variants\[0\]\.weight: /),
        expect.stringMatching(/^routes\.chat\.variants\[1\]\.engineType: must be one of/),
        'routes.chat.variants[1].model: must be a model name',
      ]),
    );
    expect(router.table.current.version).toBe(0);
    expect(existsSync(stateFile())).toBe(false);
  });

  test('drain and undrain are recorded in the table, normalised', async () => {
    await admin('PUT', '/routes', table);
    const d = await admin('POST', '/drain', { engine: 'http://127.0.0.1:9/' });
    expect(d.status).toBe(200);
    expect(d.json.drained).toEqual(['http://127.0.0.1:9']);
    expect(router.table.isDrained('http://127.0.0.1:9')).toBe(true);
    const u = await admin('POST', '/undrain', { engine: 'http://127.0.0.1:9' });
    expect(u.json.drained).toEqual([]);
  });
});

test('the route table survives a restart, written by rename with no temp file left behind', async () => {
  await admin('PUT', '/routes', table);
  await admin('POST', '/drain', { engine: 'http://127.0.0.1:10' });
  const before = router.table.current;
  await router.close();
  router = await startRouter({ port: 0, stateFile: stateFile(), adminTokenFile: token });
  expect(router.table.current).toEqual(before);
  const get = await admin('GET', '/routes');
  expect(get.json).toMatchObject({ version: 2, routes: table.routes, drained: ['http://127.0.0.1:10'] });
  expect(readdirSync(path.dirname(stateFile()))).toEqual(['routes.json']);
  const models = (await (await fetch(`${router.url}/v1/models`)).json()) as { data: { id: string }[] };
  expect(models.data.map((m) => m.id)).toEqual(['chat']);
});

test('a corrupt state file stops the router from starting instead of silently emptying the table', async () => {
  await admin('PUT', '/routes', table);
  await router.close();
  const { writeFileSync } = await import('node:fs');
  writeFileSync(stateFile(), '{"format":1,"version":"x"}');
  await expect(startRouter({ port: 0, stateFile: stateFile() })).rejects.toThrow(/version: must be number/);
  router = await startRouter({ port: 0 });
});
