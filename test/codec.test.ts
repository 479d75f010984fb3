/**
 * The payload codec without a server: AES-256-GCM round trips, tampering and unknown keys fail with what to do,
 * plaintext passes through, and key files and the temporal.encryption section are checked at the boundary.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { parseConfig } from '../src/config/load';
import { EncryptionCodec, encryptionCodec, gpuopsDataConverter } from '../src/temporal/codec';

const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-codec-'));
const keyA = randomBytes(32);
const keyB = randomBytes(32);
const codecA = new EncryptionCodec(new Map([['key-a', keyA]]), 'key-a');
const text = (b: Uint8Array | null | undefined): string => Buffer.from(b ?? new Uint8Array()).toString('utf8');
const plain = (value: unknown): Payload => defaultPayloadConverter.toPayload(value);

test('encode encrypts the whole payload (metadata too) under binary/encrypted with the key id; decode restores it', async () => {
  const input = plain({ model: 'qwen2.5:7b-secret', repository: '/srv/restic/models' });
  const [enc] = await codecA.encode([input]);
  expect(text(enc?.metadata?.encoding)).toBe('binary/encrypted');
  expect(text(enc?.metadata?.['encryption-key-id'])).toBe('key-a');
  // IV (12) + ciphertext (as long as the protobuf-encoded payload) + tag (16): nothing of it in clear.
  expect(Buffer.from(enc?.data ?? []).toString('latin1')).not.toMatch(/qwen|restic|json\/plain/);
  const [dec] = await codecA.decode(enc ? [enc] : []);
  expect(text(dec?.metadata?.encoding)).toBe('json/plain');
  expect(defaultPayloadConverter.fromPayload(dec as Payload)).toEqual({
    model: 'qwen2.5:7b-secret',
    repository: '/srv/restic/models',
  });
});

test('every encoding of the same payload differs (a random IV each time)', async () => {
  const p = plain('same');
  const [a, b] = await codecA.encode([p, p]);
  expect(Buffer.from(a?.data ?? []).equals(Buffer.from(b?.data ?? []))).toBe(false);
});

test('a payload altered in storage fails authentication instead of decoding to something else', async () => {
  const [enc] = await codecA.encode([plain({ weight: 5 })]);
  const data = Buffer.from(enc?.data ?? []);
  data[20] = (data[20] ?? 0) ^ 0x01;
  await expect(codecA.decode([{ ...enc, data }])).rejects.toThrow(
    'encrypted payload (key "key-a") failed authentication: altered, or a different key',
  );
});

test('a payload under a key that is not configured fails naming that key id', async () => {
  const [enc] = await codecA.encode([plain(1)]);
  const codecB = new EncryptionCodec(new Map([['key-b', keyB]]), 'key-b');
  await expect(codecB.decode(enc ? [enc] : [])).rejects.toThrow(
    'payload encrypted with key "key-a", which is not configured (temporal.encryption.keys has key-b)',
  );
});

test('plaintext payloads (older history, committed replay histories) pass through decode untouched', async () => {
  const p = plain({ node: 'n1' });
  const [out] = await codecA.decode([p]);
  expect(out).toBe(p);
});

test('rotation: encryptWith the new key, the old one kept, decodes both and encodes with the new', async () => {
  const [old] = await codecA.encode([plain('old')]);
  const rotated = new EncryptionCodec(
    new Map([
      ['key-b', keyB],
      ['key-a', keyA],
    ]),
    'key-b',
  );
  const [fresh] = await rotated.encode([plain('new')]);
  expect(text(fresh?.metadata?.['encryption-key-id'])).toBe('key-b');
  const decoded = await rotated.decode([old, fresh].filter((p): p is Payload => p !== undefined));
  expect(decoded.map((p) => defaultPayloadConverter.fromPayload(p))).toEqual(['old', 'new']);
});

describe('key files and temporal.encryption', () => {
  const keyFile = (name: string, content: string | Buffer): string => {
    const f = path.join(dir, name);
    writeFileSync(f, content);
    return f;
  };
  const config = (encryption: unknown) =>
    parseConfig(JSON.stringify({ temporal: { encryption }, nodes: [{ id: 'n1' }] }), path.join(dir, 'gpuops.yaml'));

  test('a key file holds 32 bytes in base64 (openssl rand -base64 32), a trailing newline allowed; relative to the config', async () => {
    keyFile('a.key', `${keyA.toString('base64')}\n`);
    const cfg = config({ keys: [{ id: 'key-a', file: 'a.key' }], encryptWith: 'key-a' });
    const codec = gpuopsDataConverter({ path: path.join(dir, 'gpuops.yaml'), config: cfg })?.payloadCodecs?.[0];
    const [enc] = await codecA.encode([plain('x')]);
    // The codec read from the file decodes what the in-memory key A encoded: it is the same key.
    expect((await codec?.decode(enc ? [enc] : []))?.map((p) => defaultPayloadConverter.fromPayload(p))).toEqual(['x']);
  });

  test('no encryption section: no data converter (the SDK default, plaintext)', () => {
    expect(gpuopsDataConverter({ path: 'x', config: parseConfig('nodes: [{ id: n1 }]', 'inline') })).toBeUndefined();
  });

  test.each([
    ['short.key', randomBytes(16).toString('base64'), 'must hold 32 random bytes, base64-encoded'],
    ['raw.key', randomBytes(32), 'must hold 32 random bytes, base64-encoded'],
    ['missing.key', null, 'no such file'],
  ])('a bad key file (%s) is named by field and path, its content never', (name, content, rule) => {
    const file = content === null ? path.join(dir, name) : keyFile(name, content);
    const enc = { keys: [{ id: 'k1', file }], encryptWith: 'k1' };
    let message = '';
    try {
      encryptionCodec(enc, path.join(dir, 'gpuops.yaml'));
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toBe(
      `temporal.encryption.keys[0].file (${file}): ${rule}${rule === 'no such file' ? '' : ' (make one with `openssl rand -base64 32`)'}`,
    );
    if (typeof content === 'string') expect(message).not.toContain(content);
  });

  test('encryptWith must name a listed key, and key ids are unique', () => {
    expect(() => config({ keys: [{ id: 'k1', file: 'a' }], encryptWith: 'k2' })).toThrow(
      'temporal.encryption.encryptWith: must be the id of one of keys (k1); got "k2"',
    );
    expect(() =>
      config({
        keys: [
          { id: 'k1', file: 'a' },
          { id: 'k1', file: 'b' },
        ],
        encryptWith: 'k1',
      }),
    ).toThrow('temporal.encryption.keys[1].id: duplicate key id "k1"');
    expect(() => config({ keys: [], encryptWith: 'k1' })).toThrow(
      'temporal.encryption.keys: must list at least one key',
    );
    expect(() => config({ keys: [{ id: 'k 1', file: 'a' }], encryptWith: 'k 1' })).toThrow(
      'temporal.encryption.keys[0].id: must be 1-64 letters, digits, ".", "_" or "-"',
    );
  });

  test('codecServer.corsOrigins are exact origins', () => {
    expect(() =>
      config({
        keys: [{ id: 'k1', file: 'a' }],
        encryptWith: 'k1',
        codecServer: { tokenFile: 't', corsOrigins: ['http://localhost:8233/'] },
      }),
    ).toThrow('temporal.encryption.codecServer.corsOrigins[0]: must be an origin (scheme://host:port)');
  });
});
