/**
 * Every shipped example is a valid gpuops.yaml, and a broken one fails with messages that name the field and the
 * rule, one line per problem, the way operators read them in `gpuops up` output.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { parseConfig } from '../src/config/load';
import type { Config } from '../src/config/schema';
import { ValidationError } from '../src/domain/validation';

const EXAMPLES = path.resolve(__dirname, '..', 'examples');
const exampleFiles = readdirSync(EXAMPLES)
  .filter((f) => f.endsWith('.yaml'))
  .sort();

function loadExample(file: string): Config {
  return parseConfig(readFileSync(path.join(EXAMPLES, file), 'utf8'), file);
}

/** The problems a config text is rejected with; fails the test if it is accepted. */
function problems(text: string): string[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (e) {
    if (e instanceof ValidationError) return e.problems;
    throw e;
  }
  throw new Error('config was accepted');
}

/**
 * A config document as the broken cases edit it. Deliberately untyped: the point is to write shapes the schema
 * rejects (unknown fields, wrong types), which a precise type would not allow.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Draft = Record<string, any>;

/** A small valid config; each broken case below changes one thing in a fresh copy. */
function base(): Draft {
  return {
    nodes: [
      {
        id: 'a4000-1',
        gpus: [{ index: 0, model: 'NVIDIA RTX A4000', memoryMiB: 16376 }],
        engines: [{ name: 'ollama', type: 'ollama', url: 'http://a4000-1.lan:11434', container: 'ollama', gpus: [0] }],
        vm: { hypervisor: 'pve1', vmid: 120 },
        modelStores: ['/srv/ollama/models'],
      },
    ],
    hypervisors: [
      {
        id: 'pve1',
        type: 'proxmox-api',
        url: 'https://pve1.lan:8006',
        pveNode: 'pve1',
        tokenId: 'gpuops@pve!recovery',
        tokenSecretFile: '/etc/gpuops/secrets/pve1-token-secret',
      },
    ],
    policies: { default: { canarySteps: [10, 50], stepDuration: '5m' } },
    backups: [
      {
        id: 'models',
        node: 'a4000-1',
        what: 'model-store',
        paths: ['/srv/ollama/models'],
        repository: '/mnt/backup/restic',
        passwordFile: '/etc/gpuops/secrets/restic-password',
        schedule: { cron: '0 3 * * *' },
        rpo: '36h',
      },
    ],
    notifications: [{ type: 'slack', name: 'oncall', urlFile: '/etc/gpuops/secrets/slack-webhook-url' }],
  };
}

function broken(edit: (c: Draft) => void): string {
  const c = base();
  edit(c);
  return stringify(c);
}

describe('examples/*.yaml', () => {
  it('ships the three fleets of the design and the sandbox', () => {
    expect(exampleFiles).toEqual(
      expect.arrayContaining(['a4000-ollama.yaml', 'rtx5090-workstation.yaml', '2x3090-vllm.yaml', 'sandbox.yaml']),
    );
  });

  it.each(exampleFiles)('%s is a valid gpuops.yaml', (file) => {
    expect(() => loadExample(file)).not.toThrow();
  });

  it('names secrets only by file, never by value, in every production example', () => {
    for (const file of exampleFiles.filter((f) => f !== 'sandbox.yaml')) {
      const text = readFileSync(path.join(EXAMPLES, file), 'utf8');
      const fileRefs = [...text.matchAll(/^\s*-?\s*(?:tokenSecret|password|url|apiKey|adminToken)File:\s*(\S+)/gm)].map(
        (m) => m[1] ?? '',
      );
      expect(fileRefs.length).toBeGreaterThan(0);
      for (const ref of fileRefs)
        expect({ file, ref }).toEqual({ file, ref: expect.stringMatching(/^\/etc\/gpuops\/secrets\//) });
    }
  });

  it('a4000-ollama: one Ollama engine on the A4000, VM restarts through the Proxmox API', () => {
    const c = loadExample('a4000-ollama.yaml');
    expect(c.nodes).toHaveLength(1);
    const node = c.nodes[0]!;
    expect(node.gpus.map((g) => g.model)).toEqual(['NVIDIA RTX A4000']);
    expect(node.engines.map((e) => [e.name, e.type])).toEqual([['ollama', 'ollama']]);
    expect(c.hypervisors.find((h) => h.id === node.vm?.hypervisor)?.type).toBe('proxmox-api');
  });

  it('rtx5090-workstation: llama-gpu, vllm-gpu and a GPU-less llama-cpu, and no VM to restart', () => {
    const c = loadExample('rtx5090-workstation.yaml');
    const node = c.nodes[0]!;
    expect(node.vm).toBeUndefined();
    expect(c.hypervisors).toEqual([]);
    expect(node.engines.map((e) => [e.name, e.type, e.gpus])).toEqual([
      ['llama-gpu', 'llamacpp', [0]],
      ['vllm-gpu', 'vllm', [0]],
      ['llama-cpu', 'llamacpp', []],
    ]);
  });

  it('2x3090-vllm: one vLLM per GPU, a qm hypervisor, backups with retention and RPO, Slack by urlFile', () => {
    const c = loadExample('2x3090-vllm.yaml');
    const node = c.nodes[0]!;
    expect(node.gpus.map((g) => g.index)).toEqual([0, 1]);
    expect(node.engines.map((e) => [e.name, e.type, e.gpus])).toEqual([
      ['vllm-fast', 'vllm', [0]],
      ['vllm-deep', 'vllm', [1]],
    ]);
    expect(node.engines[1]?.probeModel).toMatch(/14B.*AWQ/i);
    expect(c.hypervisors.find((h) => h.id === node.vm?.hypervisor)?.type).toBe('qm');
    expect(c.backups.map((b) => b.what).sort()).toEqual(['gpu-config', 'model-store', 'vm-config']);
    for (const b of c.backups) {
      expect(b.rpo).toMatch(/^\d+[smhd]$/);
      expect(Object.keys(b.retention).length).toBeGreaterThan(0);
    }
    expect(c.notifications).toEqual([
      expect.objectContaining({ type: 'slack', urlFile: expect.stringMatching(/^\/etc\/gpuops\/secrets\//) }),
    ]);
  });
});

describe('broken configs are rejected with field-path messages', () => {
  it('accepts the unbroken base, so each case below fails for its own reason', () => {
    expect(() => parseConfig(stringify(base()), 'base.yaml')).not.toThrow();
  });

  it.each<[string, (c: Draft) => void, string[]]>([
    [
      'an engine URL without a scheme',
      (c) => (c.nodes[0].engines[0].url = 'a4000-1.lan:11434'),
      ['nodes[0].engines[0].url: must be an http(s) URL'],
    ],
    ['an unknown (misspelt) field', (c) => (c.nodes[0].gpu = c.nodes[0].gpus), ['nodes[0]: unknown field(s): gpu']],
    ['an unknown top-level section', (c) => (c.alerts = []), ['(root): unknown field(s): alerts']],
    ['a duplicate node id', (c) => c.nodes.push({ id: 'a4000-1' }), ['nodes[1].id: duplicate node id "a4000-1"']],
    [
      'a VM on a hypervisor that is not listed',
      (c) => (c.nodes[0].vm.hypervisor = 'pve9'),
      ['nodes[0].vm.hypervisor: must name a hypervisor in hypervisors[] (got "pve9")'],
    ],
    [
      'a duration without a unit',
      (c) => (c.policies.default.stepDuration = '300'),
      ['policies.default.stepDuration: must be a duration such as 500ms, 30s, 5m, 1h or 7d'],
    ],
    [
      'a duration in words',
      (c) => (c.backups[0].rpo = '1 day'),
      ['backups[0].rpo: must be a duration such as 500ms, 30s, 5m, 1h or 7d'],
    ],
    ['a missing required section', (c) => delete c.nodes, ['nodes: is required']],
    [
      'a missing required field',
      (c) => delete c.nodes[0].engines[0].container,
      ['nodes[0].engines[0].container: is required'],
    ],
    // A present value of the wrong type is not "missing" (zod 4 omits the input from issues by default).
    ['a number given as a string', (c) => (c.nodes[0].vm.vmid = 'one-twenty'), ['nodes[0].vm.vmid: must be number']],
    [
      'a list given as a scalar',
      (c) => (c.nodes[0].modelStores = '/srv/ollama/models'),
      ['nodes[0].modelStores: must be array'],
    ],
    [
      'an unknown engine type',
      (c) => (c.nodes[0].engines[0].type = 'tgi'),
      ['nodes[0].engines[0].type: must be one of "ollama", "vllm", "llamacpp"'],
    ],
    [
      'an engine on a GPU the node does not have',
      (c) => (c.nodes[0].engines[0].gpus = [1]),
      ['nodes[0].engines[0].gpus[0]: must be the index of a GPU in nodes[0].gpus (got 1)'],
    ],
    [
      'a Proxmox token id without realm and token name',
      (c) => (c.hypervisors[0].tokenId = 'gpuops'),
      ['hypervisors[0].tokenId: must be USER@REALM!TOKENID'],
    ],
    [
      'a backup plan for a node that is not listed',
      (c) => (c.backups[0].node = 'a6000-1'),
      ['backups[0].node: must name a node in nodes[] (got "a6000-1")'],
    ],
    [
      'a schedule with both cron and every',
      (c) => (c.backups[0].schedule.every = '1d'),
      ['backups[0].schedule: must set exactly one of cron or every'],
    ],
    [
      'a webhook URL written inline instead of as a file',
      (c) => {
        delete c.notifications[0].urlFile;
        c.notifications[0].url = 'https://hooks.slack.com/services/T000/B000/XXXX';
      },
      ['notifications[0].urlFile: is required', 'notifications[0]: unknown field(s): url'],
    ],
    [
      'a policy name that is not an id',
      (c) => (c.policies.Fast_Path = {}),
      [
        'policies.Fast_Path: invalid name: must be lowercase letters, digits and dashes (max 63), starting with a letter or digit',
      ],
    ],
  ])('%s', (_what, edit, expected) => {
    expect(problems(broken(edit))).toEqual(expected);
  });

  it('reports every bad field at once, not just the first', () => {
    const text = broken((c) => {
      c.nodes[0].engines[0].url = 'ftp://a4000-1.lan/ollama';
      c.policies.default.stepDuration = 'soon';
      c.nodes[0].gpus[0].memoryMiB = 0;
    });
    expect(problems(text).sort()).toEqual(
      [
        'nodes[0].engines[0].url: must be an http(s) URL',
        'nodes[0].gpus[0].memoryMiB: Too small: expected number to be >0',
        'policies.default.stepDuration: must be a duration such as 500ms, 30s, 5m, 1h or 7d',
      ].sort(),
    );
  });

  it('rejects YAML that does not parse, naming the line', () => {
    const p = problems('nodes:\n  - id: a4000-1\n    engines: [\n');
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(/^YAML: .*line \d+/);
  });

  it('rejects a key given twice rather than silently keeping the last', () => {
    const p = problems('nodes:\n  - id: a4000-1\nnodes:\n  - id: a4000-2\n');
    expect(p).toEqual([expect.stringMatching(/^YAML: Map keys must be unique/)]);
  });

  it('says which file was invalid in the error message', () => {
    expect(() =>
      parseConfig(
        broken((c) => (c.nodes[0].vm.hypervisor = 'pve9')),
        '/etc/gpuops/gpuops.yaml',
      ),
    ).toThrow(/^invalid config \/etc\/gpuops\/gpuops\.yaml:\n {2}nodes\[0\]\.vm\.hypervisor: /);
  });
});
