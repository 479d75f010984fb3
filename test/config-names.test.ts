/**
 * Config strictness: Docker container names and systemd unit names by their real rules, and no value that reaches a
 * command line may start with "-" or hold a control character. Each field refuses flags, spaces, slashes and the
 * like with a line naming the field and the rule, and accepts real names (those of examples/*.yaml among them).
 */
import { parseConfig } from '../src/config/load';
import { ValidationError } from '../src/domain/validation';

type Doc = Record<string, unknown>;

const DASH = 'must not start with "-"';
const CONTROL = 'must not contain control characters';
const DOCKER = 'must be a Docker container name: [a-zA-Z0-9][a-zA-Z0-9_.-]+';
const UNIT = 'must be a systemd service unit name';
const PROCESS = 'must be a process name';

function problems(doc: Doc): string[] {
  try {
    parseConfig(JSON.stringify(doc), 'inline');
  } catch (e) {
    if (e instanceof ValidationError) return e.problems;
    throw e;
  }
  return [];
}

const engine = (over: Doc): Doc => ({
  name: 'e1',
  type: 'ollama',
  url: 'http://127.0.0.1:11434',
  container: 'ollama',
  ...over,
});
const node = (over: Doc): Doc => ({ nodes: [{ id: 'n1', ...over }] });
const plan = (over: Doc): Doc => ({
  nodes: [{ id: 'n1' }],
  backups: [
    {
      id: 'b1',
      node: 'n1',
      what: 'model-store',
      paths: ['/srv/models'],
      repository: '/srv/restic',
      passwordFile: '/etc/gpuops/restic-pw',
      rpo: '1d',
      schedule: { every: '1h' },
      ...over,
    },
  ],
});
const proc = (over: Doc): Doc =>
  engine({ runtime: 'process', container: 'llama', process: { command: '/bin/true', ...over } });

/** A field, how a value lands in it, the path its problems name, values it refuses (with the rule) and accepts. */
const FIELDS: [string, (v: string) => Doc, string, [string, string][], string[]][] = [
  [
    'a docker engine container',
    (v) => node({ engines: [engine({ container: v })] }),
    'nodes[0].engines[0].container',
    [
      ['-rf', DASH],
      ['--privileged', DASH],
      ['a b', DOCKER],
      ['a/b', DOCKER],
      ['../x', DOCKER],
      ['a', DOCKER],
      ['_ab', DOCKER],
      ['.ab', DOCKER],
      ['ab:', DOCKER],
      ['\u00e9t\u00e9', DOCKER],
      ['ab\u0000', CONTROL],
      ['ab\n', CONTROL],
      ['', 'must not be empty'],
    ],
    ['ollama', 'vllm-fast', 'llama-cpu', 'vllm-blue', 'llama.cpu_1', 'ab', 'A1', 'x'.repeat(300)],
  ],
  [
    'a systemd engine unit',
    (v) => node({ engines: [engine({ runtime: 'systemd', container: v })] }),
    'nodes[0].engines[0].container',
    [
      ['-rf', DASH],
      ['-ollama.service', DASH],
      ['ollama', UNIT],
      ['ollama.socket', UNIT],
      ['a b.service', UNIT],
      ['a/b.service', UNIT],
      ['ollama@.service', UNIT],
      ['@x.service', UNIT],
      ['.service', UNIT],
      ['ollama;reboot.service', UNIT],
      [`${'x'.repeat(248)}.service`, 'at most 255 characters'],
    ],
    [
      'ollama.service',
      'ollama@gpu0.service',
      'getty@tty1.service',
      'a@b@c.service',
      'dev-disk-by\\x2duuid.service',
      'my:unit_1.2.service',
      `${'x'.repeat(247)}.service`,
    ],
  ],
  [
    'a process engine name',
    (v) => node({ engines: [engine({ runtime: 'process', container: v, process: { command: '/bin/true' } })] }),
    'nodes[0].engines[0].container',
    [
      ['-rf', DASH],
      ['../x', PROCESS],
      ['a b', PROCESS],
      ['a/b', PROCESS],
    ],
    ['llama', 'llama-server', 'x1.y_z'],
  ],
  ...(['docker', 'nvidiaSmi', 'dmesg', 'systemctl', 'journalctl', 'systemdUnitDir', 'processDir'] as const).map(
    (tool): [string, (v: string) => Doc, string, [string, string][], string[]] => [
      `tools.${tool}`,
      (v) => node({ tools: { [tool]: v } }),
      `nodes[0].tools.${tool}`,
      [
        ['-rf', DASH],
        ['--privileged', DASH],
        ['/usr/bin/x\u0000', CONTROL],
        ['', 'must'],
      ],
      ['/usr/bin/docker', 'docker', '/opt/gpu tools/nvidia-smi', './bin/x'],
    ],
  ),
  [
    'a model store',
    (v) => node({ modelStores: [v] }),
    'nodes[0].modelStores[0]',
    [
      ['-rf', DASH],
      ['/srv\nmodels', CONTROL],
    ],
    ['/srv/ollama/models', '/root/.cache/huggingface'],
  ],
  [
    'a process cwd',
    (v) => node({ engines: [proc({ cwd: v })] }),
    'nodes[0].engines[0].process.cwd',
    [['--help', DASH]],
    ['/var/lib/llama', 'work dir'],
  ],
  [
    'a process command',
    (v) => node({ engines: [proc({ command: v })] }),
    'nodes[0].engines[0].process.command',
    [
      ['-rf', 'must be an absolute path'],
      ['/bin/tr\nue', 'must not contain control characters'],
    ],
    ['/usr/local/bin/llama-server'],
  ],
  [
    'a sandbox engine image',
    (v) => ({
      nodes: [
        {
          id: 'n1',
          sandbox: true,
          tools: { docker: '/usr/bin/docker' },
          engines: [engine({ real: { image: v } })],
        },
      ],
    }),
    'nodes[0].engines[0].real.image',
    [
      ['--privileged', 'must be a docker image reference'],
      ['img name', 'must be a docker image reference'],
    ],
    ['ollama/ollama:0.6.2', 'ghcr.io/ggml-org/llama.cpp:server', 'registry.lan:5000/x@sha256:abc'],
  ],
  [
    'a qm binary',
    (v) => ({ nodes: [{ id: 'n1' }], hypervisors: [{ id: 'pve1', type: 'qm', qm: v }] }),
    'hypervisors[0].qm',
    [['-rf', DASH]],
    ['qm', '/usr/sbin/qm'],
  ],
  [
    'a backup path',
    (v) => plan({ paths: [v] }),
    'backups[0].paths[0]',
    [
      ['-rf', DASH],
      ['--exclude=/', DASH],
      ['/srv/\u0000', CONTROL],
    ],
    ['/srv/ollama/models', '/srv/models with space'],
  ],
  [
    'a backup repository',
    (v) => plan({ repository: v }),
    'backups[0].repository',
    [
      ['-o', DASH],
      ['--repo=/x', DASH],
    ],
    ['/srv/restic', 'sftp:backup@nas:/restic', 's3:s3.amazonaws.com/bucket', 'rest:https://h:8000/'],
  ],
  [
    'a backup password file',
    (v) => plan({ passwordFile: v }),
    'backups[0].passwordFile',
    [['--password-command=id', DASH]],
    ['/etc/gpuops/restic-pw'],
  ],
  [
    'a restic read-data-subset',
    (v) => plan({ verify: { readDataSubset: v } }),
    'backups[0].verify.readDataSubset',
    [
      ['-x', 'must be a restic --read-data-subset value'],
      ['5%; reboot', 'must be a restic --read-data-subset value'],
      ['1/0', 'must be a restic --read-data-subset value'],
    ],
    ['5%', '2.5%', '1/5', '50M', '1G', '100'],
  ],
  [
    "a backup plan's free-space floor",
    (v) => plan({ minFree: v }),
    'backups[0].minFree',
    [
      ['20 gigs', 'must be a size'],
      ['-1', 'must be a size'],
      ['10PB', 'must be a size'],
      ['GiB', 'must be a size'],
    ],
    ['20GiB', '500MB', '1.5TB', '0', '1024'],
  ],
];

describe.each(FIELDS)('%s', (_what, build, path, refused, accepted) => {
  test.each(refused)('refuses %j naming the field and the rule', (value, rule) => {
    const lines = problems(build(value));
    expect(lines.some((l) => l.startsWith(`${path}: `) && l.includes(rule))).toBe(true);
    expect(lines).toEqual(lines.filter((l) => l.startsWith(path)));
  });

  test.each(accepted)('accepts %j', (value) => {
    expect(problems(build(value))).toEqual([]);
  });
});

test('a value that broke its own rule is reported on its field only, never quoted by a cross-check', () => {
  const secret = 'sk-live-0123456789 abcdef';
  const lines = problems({ nodes: [{ id: 'n1', vm: { hypervisor: secret, vmid: 101 } }], backups: [] });
  expect(lines).toEqual([
    'nodes[0].vm.hypervisor: must be lowercase letters, digits and dashes (max 63), starting with a letter or digit',
  ]);
});

test('a hostile key is quoted and escaped in the field path, so it cannot forge the path or the line', () => {
  const lines = problems({ nodes: [{ id: 'n1' }], policies: { 'C:\\x\n\u202e': {} } });
  expect(lines).toEqual([
    'policies["C:\\\\x\\n\\u202e"]: invalid name: must be lowercase letters, digits and dashes (max 63), starting with a letter or digit',
  ]);
});
