/**
 * The receiver's rules without a server: which node an alert is about, what the recovery input says, the dedupe
 * store's bounds, credential checks, and the hooks config section.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseConfig } from '../../src/config/load';
import { ValidationError } from '../../src/domain/validation';
import { instanceHost, matchNode, recoverInput, type AlertmanagerAlert } from '../../src/hooks/alertmanager';
import { authenticate, loadHookSecrets, signBody } from '../../src/hooks/auth';
import { DedupeStore } from '../../src/hooks/dedupe';

const nodes = new Set(['gpu-1', 'gpu-2']);

describe('which node an alert is about', () => {
  test('the gpuops_node label wins, and names no other node when it is wrong', () => {
    expect(matchNode({ gpuops_node: 'gpu-2', instance: 'gpu-1:9400' }, nodes, 'gpuops_node')).toEqual({
      node: 'gpu-2',
      label: 'gpuops_node',
    });
    expect(matchNode({ gpuops_node: 'gpu-9', instance: 'gpu-1:9400' }, nodes, 'gpuops_node')).toEqual({
      node: null,
      why: 'gpuops_node="gpu-9" is not a configured node',
    });
  });

  test('without it, the node label, then the host of instance (or its first DNS label) are tried', () => {
    expect(matchNode({ node: 'gpu-1' }, nodes, 'gpuops_node')).toEqual({ node: 'gpu-1', label: 'node' });
    expect(matchNode({ node: 'k8s-worker-3', instance: 'GPU-2.lan:9400' }, nodes, 'gpuops_node')).toEqual({
      node: 'gpu-2',
      label: 'instance',
    });
    expect(matchNode({ instance: '10.0.0.7:9400' }, nodes, 'gpuops_node')).toEqual({
      node: null,
      why: 'instance="10.0.0.7:9400" name no configured node',
    });
    expect(matchNode({ job: 'dcgm' }, nodes, 'gpuops_node')).toEqual({
      node: null,
      why: 'no gpuops_node, node or instance label',
    });
  });

  test('a configured nodeLabel replaces gpuops_node', () => {
    expect(matchNode({ hostname: 'gpu-1', gpuops_node: 'gpu-2' }, nodes, 'hostname').node).toBe('gpu-1');
  });

  test.each([
    ['gpu-1:9400', 'gpu-1'],
    ['http://gpu-1.lan:8080/metrics', 'gpu-1.lan'],
    ['[fe80::1]:9400', 'fe80::1'],
    ['fe80::1', 'fe80::1'],
    ['GPU-1', 'gpu-1'],
  ])('instance %s has host %s', (instance, host) => {
    expect(instanceHost(instance)).toBe(host);
  });
});

test('the recovery input keeps workflow history small: reason and detail are truncated', () => {
  const long = 'x'.repeat(5000);
  const a: AlertmanagerAlert = {
    status: 'firing',
    labels: { alertname: 'EngineDown' },
    annotations: { summary: long, description: long },
    startsAt: '2025-05-04T10:15:30Z',
    fingerprint: 'abc',
  };
  const input = recoverInput(a, 'gpu-1');
  expect(input.reason).toHaveLength(200);
  expect(input.trigger.detail).toHaveLength(1000);
  expect(input.trigger.detail.startsWith('EngineDown; summary: xxx')).toBe(true);
  expect(input).not.toHaveProperty('fault');
  expect(recoverInput({ ...a, annotations: {} }, 'gpu-1').reason).toBe('EngineDown');
});

describe('dedupe store', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-dedupe-'));
  const entry = { node: 'gpu-1', workflowId: 'recover:gpu-1', runId: 'r1' };

  test('forgets a key after the TTL, also across a reopen', () => {
    let now = 1_000_000;
    const file = path.join(dir, 'ttl', 'seen.json');
    const store = DedupeStore.open({ file, ttlMs: 60_000, now: () => now });
    store.record('a@1', entry);
    store.save();
    now += 59_000;
    expect(DedupeStore.open({ file, ttlMs: 60_000, now: () => now }).get('a@1')).toMatchObject(entry);
    now += 2_000;
    expect(DedupeStore.open({ file, ttlMs: 60_000, now: () => now }).get('a@1')).toBeUndefined();
  });

  test('keeps at most maxEntries, dropping the oldest', () => {
    let now = 0;
    const store = DedupeStore.open({ file: path.join(dir, 'bound.json'), ttlMs: 1e9, maxEntries: 3, now: () => now });
    for (const k of ['k1', 'k2', 'k3', 'k4']) {
      now += 1;
      store.record(k, entry);
    }
    expect(store.size).toBe(3);
    expect(store.get('k1')).toBeUndefined();
    expect(store.get('k4')).toBeDefined();
  });

  test('sets an unreadable file aside and starts empty instead of refusing alerts', () => {
    const file = path.join(dir, 'corrupt.json');
    writeFileSync(file, '{"version": 1, "entr');
    const warnings: string[] = [];
    const store = DedupeStore.open({ file, ttlMs: 1000, warn: (l) => warnings.push(l) });
    expect(store.size).toBe(0);
    expect(existsSync(`${file}.corrupt`)).toBe(true);
    expect(warnings[0]).toContain('unreadable');
    store.record('a@1', entry);
    store.save();
    expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({ version: 1, entries: { 'a@1': entry } });
  });
});

describe('credentials', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-secrets-'));
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, 's3cret\n');
  const secrets = loadHookSecrets({ tokenFile });
  const body = Buffer.from('{}');

  test('the bearer scheme is case-insensitive, the token is not', () => {
    expect(authenticate(secrets, { authorization: 'bearer s3cret' }, body)).toEqual({ ok: true, method: 'bearer' });
    expect(authenticate(secrets, { authorization: 'Bearer S3CRET' }, body).ok).toBe(false);
  });

  test('a signature is refused when no HMAC secret is configured', () => {
    expect(authenticate(secrets, { signature: signBody('s3cret', body) }, body)).toEqual({
      ok: false,
      why: 'invalid credentials (X-Gpuops-Signature)',
    });
  });

  test('an empty secret file is refused at start, and the message holds no secret', () => {
    const empty = path.join(dir, 'empty');
    writeFileSync(empty, '\n');
    expect(() => loadHookSecrets({ hmacSecretFile: empty })).toThrow(`hooks.hmacSecretFile ${empty} is empty`);
    expect(() => loadHookSecrets({})).toThrow(/never runs unauthenticated/);
  });
});

describe('hooks config', () => {
  test('refuses a hooks section without tokenFile or hmacSecretFile, naming the field', () => {
    const err = (() => {
      try {
        parseConfig('nodes:\n  - id: n1\nhooks:\n  listen: 0.0.0.0:9095\n', 'inline');
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).problems).toEqual([
      'hooks.tokenFile: must set tokenFile or hmacSecretFile (or both): the webhook receiver never runs unauthenticated',
    ]);
  });

  test('fills in the defaults operators rely on', () => {
    const c = parseConfig('nodes:\n  - id: n1\nhooks:\n  tokenFile: /etc/gpuops/hooks-token\n', 'inline');
    expect(c.hooks).toEqual({
      listen: '127.0.0.1:9095',
      tokenFile: '/etc/gpuops/hooks-token',
      stateFile: '.gpuops/hooks-seen.json',
      dedupeTtl: '24h',
      nodeLabel: 'gpuops_node',
    });
    expect(parseConfig('nodes:\n  - id: n1\n', 'inline').hooks).toBeUndefined();
  });
});
