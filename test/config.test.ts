import { readFileSync } from 'node:fs';
import path from 'node:path';
import { configJsonSchema } from '../src/config/json-schema';
import { parseConfig } from '../src/config/load';
import { slotPartnerOf } from '../src/config/schema';
import { resolveTemporalTarget, resolveTargetOrDev } from '../src/temporal/connection';
import { ValidationError } from '../src/domain/validation';
import { watchInput } from '../src/cli/recovery';

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

describe('canary slots', () => {
  type EngineDraft = Record<string, unknown>;
  const vllm = (name: string, port: number, over: EngineDraft = {}): EngineDraft => ({
    name,
    type: 'vllm',
    url: `http://127.0.0.1:${port}`,
    // Docker names are 2 characters at least.
    container: `${name}-ctr`,
    ...over,
  });
  /** A second node (nodes[1]) whose engines are under test, so errors name nodes[1]. */
  const config = (engines: EngineDraft[]): string =>
    JSON.stringify({ nodes: [{ id: 'sandbox-1' }, { id: 'sandbox-2', engines }] });
  const problems = (engines: EngineDraft[]): string[] => {
    try {
      parseConfig(config(engines), 'inline');
    } catch (e) {
      if (e instanceof ValidationError) return e.problems;
      throw e;
    }
    return [];
  };

  test('pairs two engines of the same type, declared on either side, and finds the partner from both', () => {
    const c = parseConfig(
      config([vllm('vllm-fast', 18100, { canarySlot: 'vllm-deep' }), vllm('vllm-deep', 18101)]),
      'inline',
    );
    const node = c.nodes[1]!;
    expect(slotPartnerOf(node, 'vllm-fast')?.name).toBe('vllm-deep');
    expect(slotPartnerOf(node, 'vllm-deep')?.name).toBe('vllm-fast');
    // Naming each other is the same pair.
    expect(problems([vllm('a', 1, { canarySlot: 'b' }), vllm('b', 2, { canarySlot: 'a' })])).toEqual([]);
  });

  test.each<[string, EngineDraft[], string[]]>([
    [
      'an engine that does not exist',
      [vllm('vllm-fast', 18100, { canarySlot: 'x' })],
      ['nodes[1].engines[0].canarySlot: must name another vllm engine on node sandbox-2 (got "x")'],
    ],
    [
      'itself',
      [vllm('vllm-fast', 18100, { canarySlot: 'vllm-fast' })],
      ['nodes[1].engines[0].canarySlot: must name another vllm engine on node sandbox-2 (got "vllm-fast")'],
    ],
    [
      'an engine of another type',
      [
        vllm('vllm-fast', 18100, { canarySlot: 'llama' }),
        { name: 'llama', type: 'llamacpp', url: 'http://127.0.0.1:8080', container: 'llama' },
      ],
      ['nodes[1].engines[0].canarySlot: must name another vllm engine on node sandbox-2 (got "llama")'],
    ],
    [
      'an Ollama engine with a slot',
      [
        { name: 'ollama', type: 'ollama', url: 'http://127.0.0.1:11434', container: 'ollama', canarySlot: 'o2' },
        { name: 'o2', type: 'ollama', url: 'http://127.0.0.1:11435', container: 'o2' },
      ],
      [
        'nodes[1].engines[0].canarySlot: Ollama canaries are a second tag on the same engine: canarySlot is for vllm and llamacpp engines',
      ],
    ],
    [
      'an engine sharing its container',
      [vllm('a', 1, { canarySlot: 'b' }), vllm('b', 2, { container: 'a-ctr' })],
      ['nodes[1].engines[0].canarySlot: must name an engine with a container of its own ("b" also runs in "a-ctr")'],
    ],
    [
      'an engine already in another pair',
      [vllm('a', 1, { canarySlot: 'b' }), vllm('b', 2), vllm('c', 3, { canarySlot: 'b' })],
      ['nodes[1].engines[2].canarySlot: "b" is already paired with "a": an engine belongs to at most one slot pair'],
    ],
    [
      'a probe model on a half of a pair',
      [vllm('a', 1, { canarySlot: 'b' }), vllm('b', 2, { probeModel: 'Qwen/Qwen2.5-7B-Instruct' })],
      [
        'nodes[1].engines[1].probeModel: must be unset on an engine of a canary slot pair: its model changes with each deployment',
      ],
    ],
  ])('refuses a canarySlot naming %s', (_what, engines, expected) => {
    expect(problems(engines)).toEqual(expected);
  });

  test('an engine outside any pair has no partner', () => {
    const c = parseConfig(config([vllm('a', 1), vllm('b', 2)]), 'inline');
    expect(slotPartnerOf(c.nodes[1]!, 'a')).toBeUndefined();
  });
});

describe('engine runtimes', () => {
  type Draft = Record<string, unknown>;
  const engine = (over: Draft): Draft => ({
    name: 'e',
    type: 'llamacpp',
    url: 'http://127.0.0.1:8080',
    container: 'eng',
    ...over,
  });
  const problems = (engines: Draft[], node: Draft = {}): string[] => {
    try {
      parseConfig(JSON.stringify({ nodes: [{ id: 'n1', engines, ...node }] }), 'inline');
    } catch (e) {
      if (e instanceof ValidationError) return e.problems;
      throw e;
    }
    return [];
  };

  test.each<[string, Draft[], Draft, string[]]>([
    [
      'process without how to run it',
      [engine({ runtime: 'process' })],
      {},
      ['nodes[0].engines[0].process: must say how to run the engine (runtime is process)'],
    ],
    [
      'a relative binary',
      [engine({ runtime: 'process', process: { command: 'llama-server' } })],
      {},
      ['nodes[0].engines[0].process.command: must be an absolute path to the engine binary'],
    ],
    [
      'a process name that is a path',
      [engine({ runtime: 'process', container: '../x', process: { command: '/bin/true' } })],
      {},
      [
        'nodes[0].engines[0].container: must be a process name: a letter or digit, then letters, digits, _ . - (max 128; it names files) (runtime is process)',
      ],
    ],
    [
      'a unit that is not a service',
      [engine({ runtime: 'systemd', container: 'ollama' })],
      {},
      [
        'nodes[0].engines[0].container: must be a systemd service unit name: [A-Za-z0-9:_.\\-]+ then .service, or a template instance name@instance.service (runtime is systemd)',
      ],
    ],
    [
      'a container name that is a flag',
      [engine({ container: '--rm' })],
      {},
      [
        'nodes[0].engines[0].container: must not start with "-" (it is passed to a command, which would read it as an option)',
        'nodes[0].engines[0].container: must be a Docker container name: [a-zA-Z0-9][a-zA-Z0-9_.-]+ (2 characters at least, as dockerd checks) (runtime is docker)',
      ],
    ],
    [
      'one name under two runtimes',
      [engine({}), engine({ name: 'f', runtime: 'process', process: { command: '/bin/true' } })],
      {},
      ['nodes[0].engines[1].container: "eng" already runs e under docker: one name cannot be a process engine too'],
    ],
    [
      'a real engine on a real node',
      [engine({ runtime: 'process', process: { command: '/bin/true' }, real: {} })],
      {},
      ['nodes[0].engines[0].real: is only for sandbox nodes (sandbox: true)'],
    ],
    [
      'a real docker engine beside the docker shim',
      [engine({ real: { image: 'img' } })],
      { sandbox: true },
      [
        'nodes[0].tools.docker: must be the absolute path of the real docker CLI on a sandbox node with real docker engines',
      ],
    ],
  ])('refuses %s', (_what, engines, node, expected) => {
    expect(problems(engines, node)).toEqual(expected);
  });

  test('accepts each runtime', () => {
    expect(
      problems([
        engine({}),
        engine({ name: 'u', runtime: 'systemd', container: 'ollama.service', type: 'ollama' }),
        engine({
          name: 'p',
          runtime: 'process',
          container: 'llama',
          process: { command: '/opt/llama-server', args: ['-m', 'x.gguf'] },
        }),
      ]),
    ).toEqual([]);
  });
});

describe('backup schedule cron expressions', () => {
  const problems = (schedule: Record<string, unknown>): string[] => {
    try {
      parseConfig(
        JSON.stringify({
          nodes: [{ id: 'n1' }],
          backups: [
            {
              id: 'b1',
              node: 'n1',
              what: 'gpu-config',
              repository: '/srv/restic',
              passwordFile: '/etc/gpuops/restic-pw',
              rpo: '1d',
              schedule,
            },
          ],
        }),
        'inline',
      );
    } catch (e) {
      if (e instanceof ValidationError) return e.problems;
      throw e;
    }
    return [];
  };
  const at = 'backups[0].schedule.cron';

  test.each([
    '0 3 * * *',
    '*/15 * * * *',
    '30 2 1-31/2 * *',
    '0 3,15 * * MON-FRI',
    '0 4 * JUL-AUG 0',
    '0 4 * * 7',
    '@daily',
    '@hourly',
    '@weekly',
    '@monthly',
    '@yearly',
  ])('accepts %s, as Temporal Schedules read it', (cron) => {
    expect(problems({ cron })).toEqual([]);
  });

  test.each<[string, string, string[]]>([
    [
      'a minute out of range',
      '60 3 * * *',
      [`${at}: minute "60" must be 0-59, *, a range (a-b), a list (a,b) or a step (*/n)`],
    ],
    [
      'an hour out of range',
      '0 24 * * *',
      [`${at}: hour "24" must be 0-23, *, a range (a-b), a list (a,b) or a step (*/n)`],
    ],
    [
      'a day-of-month out of range',
      '0 3 32 * *',
      [`${at}: day-of-month "32" must be 1-31, *, a range (a-b), a list (a,b) or a step (*/n)`],
    ],
    [
      'a month out of range',
      '0 3 * 13 *',
      [`${at}: month "13" must be 1-12 or JAN-DEC, *, a range (a-b), a list (a,b) or a step (*/n)`],
    ],
    [
      'a backwards range and a bad day name, each named',
      '5-1 3 * * sunday',
      [
        `${at}: minute "5-1" must be 0-59, *, a range (a-b), a list (a,b) or a step (*/n)`,
        `${at}: day-of-week "sunday" must be 0-7 or SUN-SAT (0 and 7 are Sunday), *, a range (a-b), a list (a,b) or a step (*/n)`,
      ],
    ],
    [
      'a seconds field (Temporal reads a sixth field as the year)',
      '0 0 3 * * *',
      [
        `${at}: must have 5 fields (minute hour day-of-month month day-of-week), got 6: Temporal reads a sixth field as the year, not as seconds first as some cron dialects do`,
      ],
    ],
    [
      'an nth weekday (Temporal starts a comment at #)',
      '0 3 * * MON#1',
      [
        `${at}: "#" is not accepted: Temporal reads the rest as a comment (so an nth weekday such as MON#1 is not supported)`,
      ],
    ],
    [
      'L (last day), which Temporal does not support',
      '0 3 L * *',
      [
        `${at}: day-of-month "L": L, W and ? are not supported by Temporal Schedules (must be 1-31, *, a range (a-b), a list (a,b) or a step (*/n))`,
      ],
    ],
    [
      'day-of-month with day-of-week (Temporal ANDs them, crontab ORs them)',
      '0 3 1 * MON',
      [
        `${at}: sets both day-of-month "1" and day-of-week "MON": Temporal runs only on days matching both, not on either as crontab does; set one of them to * (or use two plans)`,
      ],
    ],
    [
      'a date that never comes',
      '0 3 30 2 *',
      [`${at}: never runs: no date matches its day-of-month and month (such as 30 February)`],
    ],
    [
      '@every, which schedule.every says',
      '@every 6h',
      [`${at}: @every is not accepted in cron: set schedule.every instead (e.g. every: 6h)`],
    ],
    [
      'a TZ= prefix, which schedule.timezone says',
      'TZ=UTC 0 3 * * *',
      [`${at}: a TZ= prefix is not accepted in cron: set schedule.timezone instead`],
    ],
    [
      'an unknown macro',
      '@reboot',
      [`${at}: unknown macro "@reboot": use @hourly, @daily, @weekly, @monthly or @yearly`],
    ],
    ['an empty expression', '', [`${at}: must be a cron expression such as "0 3 * * *" (03:00 every day)`]],
  ])('refuses %s with the field path and the rule', (_what, cron, expected) => {
    expect(problems({ cron })).toEqual(expected);
  });
});

describe('recovery.generateTimeout', () => {
  const load = (recovery: Record<string, unknown>) =>
    parseConfig(JSON.stringify({ nodes: [{ id: 'n1' }], recovery }), 'inline');
  const problems = (recovery: Record<string, unknown>): string[] => {
    try {
      load(recovery);
    } catch (e) {
      if (e instanceof ValidationError) return e.problems;
      throw e;
    }
    return [];
  };

  test('reaches the watchers: watchNode gets it, and without it keeps its own default', () => {
    expect(watchInput(load({ generateTimeout: '8s' }), 'n1')).toMatchObject({ generateTimeout: '8s' });
    expect(watchInput(minimal, 'n1')).not.toHaveProperty('generateTimeout');
  });

  test.each<[string, string]>([
    ['10ms', 'recovery.generateTimeout: must be at least 50ms'],
    ['soon', 'recovery.generateTimeout: must be a duration such as 500ms, 30s, 5m, 1h or 7d'],
  ])('refuses %s, naming the field and the rule', (generateTimeout, problem) => {
    expect(problems({ generateTimeout })).toEqual([problem]);
  });
});

describe('recovery.blindAlertAfter', () => {
  const load = (recovery: Record<string, unknown>) =>
    parseConfig(JSON.stringify({ nodes: [{ id: 'n1' }], recovery }), 'inline');

  test('reaches the watchers, 12 by default, 0 allowed (never)', () => {
    expect(watchInput(load({ blindAlertAfter: 4 }), 'n1')).toMatchObject({ blindAlertAfter: 4 });
    expect(watchInput(load({ blindAlertAfter: 0 }), 'n1')).toMatchObject({ blindAlertAfter: 0 });
    expect(watchInput(minimal, 'n1')).toMatchObject({ blindAlertAfter: 12 });
  });

  test.each<[unknown, string]>([
    [-1, 'recovery.blindAlertAfter: Too small: expected number to be >=0'],
    [1.5, 'recovery.blindAlertAfter: must be int'],
    ['12', 'recovery.blindAlertAfter: must be number'],
  ])('refuses %p, naming the field and the rule', (blindAlertAfter, problem) => {
    let problems: string[] = [];
    try {
      load({ blindAlertAfter });
    } catch (e) {
      if (!(e instanceof ValidationError)) throw e;
      problems = e.problems;
    }
    expect(problems).toEqual([problem]);
  });
});
