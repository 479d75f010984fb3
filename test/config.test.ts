import { readFileSync } from 'node:fs';
import path from 'node:path';
import { configJsonSchema } from '../src/config/json-schema';
import { parseConfig } from '../src/config/load';
import { resolveTemporalTarget, resolveTargetOrDev } from '../src/temporal/connection';
import { ValidationError } from '../src/domain/validation';

const minimal = parseConfig('nodes:\n  - id: n1\n', 'inline');

test('the committed gpuops.schema.json is what the zod schema generates (regenerate with `npm run schema`)', () => {
  const committed: unknown = JSON.parse(readFileSync(path.join(__dirname, '..', 'gpuops.schema.json'), 'utf8'));
  expect(committed).toEqual(configJsonSchema());
});

test('the JSON Schema carries the field docs operators see in their editor', () => {
  const text = JSON.stringify(configJsonSchema());
  expect(text).toContain('Base URL of the engine HTTP API');
  expect(text).toContain('File holding the API token secret');
});

describe('Temporal target', () => {
  test('no address anywhere means the embedded dev server on temporal.dev.port', () => {
    expect(resolveTemporalTarget(minimal, {}).address).toBeNull();
    expect(resolveTargetOrDev(minimal, {}).address).toBe('127.0.0.1:7233');
  });

  test('environment overrides the config, with the temporal CLI variable names', () => {
    const t = resolveTemporalTarget(minimal, {
      TEMPORAL_ADDRESS: 'temporal.prod:7233',
      TEMPORAL_NAMESPACE: 'gpuops',
      TEMPORAL_TLS_CERT: '/etc/gpuops/client.pem',
      TEMPORAL_TLS_KEY: '/etc/gpuops/client.key',
      TEMPORAL_API_KEY: 'secret-value',
    });
    expect(t).toEqual({
      address: 'temporal.prod:7233',
      namespace: 'gpuops',
      tls: {
        certFile: '/etc/gpuops/client.pem',
        keyFile: '/etc/gpuops/client.key',
        caFile: undefined,
        serverName: undefined,
      },
      apiKey: { env: 'TEMPORAL_API_KEY' },
    });
    // The key itself never appears in the target (it is read at connect time).
    expect(JSON.stringify(t)).not.toContain('secret-value');
  });

  test('a malformed TEMPORAL_ADDRESS is refused with the variable named', () => {
    expect(() => resolveTemporalTarget(minimal, { TEMPORAL_ADDRESS: 'http://x' })).toThrow(ValidationError);
    expect(() => resolveTemporalTarget(minimal, { TEMPORAL_ADDRESS: 'http://x' })).toThrow(
      /TEMPORAL_ADDRESS: must be host:port/,
    );
  });

  test('a client certificate without its key is refused', () => {
    expect(() => resolveTemporalTarget(minimal, { TEMPORAL_TLS_CERT: '/c.pem' })).toThrow(
      /certFile and keyFile must be set together/,
    );
  });
});
