/**
 * The worker processes' flags (node:util parseArgs): the declared `--name value` flags only, and a clear error naming
 * the flag for anything else, before a worker reads its config or dials Temporal.
 */
import { spawnSync } from 'node:child_process';
import { tsxCommand } from '../src/cli/processes';
import { ValidationError } from '../src/domain/validation';
import { parseWorkerFlags } from '../src/temporal/worker-main';

const NODE_FLAGS = { node: { value: 'id' } };

function problems(argv: string[]): string[] {
  try {
    parseWorkerFlags(argv, NODE_FLAGS);
  } catch (e) {
    if (e instanceof ValidationError) return e.problems;
    throw e;
  }
  return [];
}

test('reads --name value and --name=value', () => {
  expect(parseWorkerFlags(['--node', 'n1'], NODE_FLAGS)).toEqual({ node: 'n1' });
  expect(parseWorkerFlags(['--node=n1'], NODE_FLAGS)).toEqual({ node: 'n1' });
  expect(parseWorkerFlags([], NODE_FLAGS)).toEqual({});
  expect(parseWorkerFlags(['--task-queue', 'q'], { 'task-queue': { value: 'queue' } })).toEqual({ 'task-queue': 'q' });
});

test.each<[string, string[], string[]]>([
  ['a misspelt flag', ['--nod', 'n1'], ['--nod: unknown flag (this worker takes --node <id>)']],
  ['a short flag', ['-n', 'n1'], ['-n: unknown flag (this worker takes --node <id>)']],
  ['a flag without its value', ['--node'], ['--node: needs a value (--node <id>)']],
  ['an empty value', ['--node='], ['--node: needs a value (--node <id>)']],
  [
    'a flag where its value should be',
    ['--node', '--verbose'],
    ['--node: needs a value, got the flag-like "--verbose" (write --node=--verbose if it is one)'],
  ],
  ['a stray argument', ['n1'], ['"n1": unexpected argument (this worker takes --node <id>)']],
  [
    'several problems at once',
    ['--nod', 'n1', '--queue=x', 'extra'],
    [
      '--nod: unknown flag (this worker takes --node <id>)',
      '--queue: unknown flag (this worker takes --node <id>)',
      '"extra": unexpected argument (this worker takes --node <id>)',
    ],
  ],
])('refuses %s, naming the flag', (_what, argv, expected) => {
  expect(problems(argv)).toEqual(expected);
});

test('a worker started with a bad flag exits 2 at once, naming the flag', () => {
  const cmd = tsxCommand('workers/node.ts', ['--nod', 'n1']);
  // No Temporal and no config needed: flags are checked first.
  const r = spawnSync(cmd.command, cmd.args, {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, GPUOPS_CONFIG: '/nonexistent/gpuops.yaml' },
  });
  expect(r.status).toBe(2);
  expect(r.stderr).toContain(
    'gpuops node worker: invalid arguments:\n  --nod: unknown flag (this worker takes --node <id> --metrics-listen <ip:port|off>)',
  );
});
