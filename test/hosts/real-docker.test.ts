/**
 * docker/podman parsers against real outputs (see test/fixtures/docker/real/SOURCES.md): the docker 29 and podman
 * missing-object messages, DeviceRequests written by tools that request one GPU per request, and podman's own state
 * names and record shapes.
 */
import {
  commandList,
  gpusFlags,
  missingNames,
  parseDockerInspect,
  parseImageDefaults,
  parseInspectEntry,
  runArgsFromInspect,
  userOf,
} from '../../src/hosts/docker';
import { fixture } from './fakes';

const json = (rel: string): unknown => JSON.parse(fixture(rel)) as unknown;

/** A minimal docker-compatible inspect entry, for the fields a test varies. */
function entry(over: { Config?: Record<string, unknown>; HostConfig?: Record<string, unknown> } = {}): unknown {
  return {
    Id: 'c0ffee',
    Name: '/vllm-fast',
    State: { Status: 'running', Running: true },
    Config: { Image: 'vllm/vllm-openai:v0.10.0', Cmd: ['--model', 'm'], Env: [], ...over.Config },
    HostConfig: { NetworkMode: 'host', ...over.HostConfig },
  };
}

describe('missing containers (docker 29 and podman wording)', () => {
  it('reads docker 29 lower-case "error: no such object" and keeps the containers that exist', () => {
    const stderr = fixture('docker/real/inspect-missing-docker-29.stderr.txt');
    expect([...missingNames(stderr)]).toEqual(['vllm-canary']);
    const states = parseDockerInspect({ exitCode: 1, stdout: fixture('docker/inspect-ollama-running.json'), stderr }, [
      'ollama',
      'vllm-canary',
    ]);
    expect(states.map((s) => [s.name, s.exists, s.status])).toEqual([
      ['ollama', true, 'running'],
      ['vllm-canary', false, 'missing'],
    ]);
  });

  it('reads podman\'s quoted name ("no such object: \\"foo\\"")', () => {
    expect([...missingNames(fixture('docker/real/inspect-missing-podman-4.stderr.txt'))]).toEqual(['foo']);
  });

  it('still reads the older wordings', () => {
    expect([
      ...missingNames('Error: No such object: ghost\nError response from daemon: No such container: ghost2\n'),
    ]).toEqual(['ghost', 'ghost2']);
  });
});

describe('GPU device requests on recreate', () => {
  it('merges one DeviceRequest per GPU UUID into one --gpus "device=A,B" (ocean-node, driver nvidia)', () => {
    const requests = json('docker/real/device-requests-one-per-gpu-uuid.json');
    expect(gpusFlags(requests)).toEqual([
      '"device=GPU-a5e31522-2217-8c10-bcd3-8915ea371f89,GPU-c46eeff5-903b-8280-2f16-4fc3f6140d47"',
    ]);
    const spec = runArgsFromInspect(entry({ HostConfig: { DeviceRequests: requests } }), { cmd: ['--model', 'm'] });
    expect(spec.args.filter((a, i) => spec.args[i - 1] === '--gpus')).toEqual([
      '"device=GPU-a5e31522-2217-8c10-bcd3-8915ea371f89,GPU-c46eeff5-903b-8280-2f16-4fc3f6140d47"',
    ]);
  });

  it('recreates a count request written with driver "nvidia" (dockwatch)', () => {
    expect(gpusFlags(json('docker/real/device-requests-count-1.json'))).toEqual(['1']);
  });

  it('keeps requests that cannot merge as separate --gpus flags', () => {
    const requests = [
      { Driver: '', Count: 0, DeviceIDs: ['0'], Capabilities: [['gpu']] },
      { Driver: '', Count: 0, DeviceIDs: ['1'], Capabilities: [['gpu', 'video']] },
      { Driver: '', Count: 0, DeviceIDs: ['2'], Capabilities: [['gpu']] },
    ];
    expect(gpusFlags(requests)).toEqual(['"device=0,2"', 'device=1,capabilities=video']);
  });
});

describe('podman inspect shapes', () => {
  it('reads podman 1.x "configured" (never started) as created, so a standby slot half is not a crash', () => {
    const s = parseInspectEntry({ Name: 'vllm-b', State: { Status: 'configured', Running: false, ExitCode: 0 } });
    expect(s).toMatchObject({ status: 'created', running: false, exists: true });
    expect(parseInspectEntry({ Name: 'x', State: { Status: 'stopped', Running: false } }).status).toBe('exited');
    expect(parseInspectEntry({ Name: 'x', State: { Status: 'initialized', Running: false } }).status).toBe('created');
  });

  it('reads the health of podman 2.x from State.Healthcheck and podman 4 created state', () => {
    const [prom] = parseDockerInspect(
      { exitCode: 0, stdout: fixture('docker/real/inspect-podman-2020-prometheus-state.json'), stderr: '' },
      ['39479a9eced2'],
    );
    expect(prom).toMatchObject({
      status: 'running',
      running: true,
      health: 'none',
      startedAt: '2020-11-22T21:08:38.265612345-05:00',
    });
    expect(
      parseInspectEntry({
        Name: 'x',
        State: { Status: 'running', Running: true, Healthcheck: { Status: 'unhealthy' } },
      }).health,
    ).toBe('unhealthy');
    const [created] = json('docker/real/inspect-podman-4-created-state.json') as unknown[];
    expect(parseInspectEntry(created, 'hello')).toMatchObject({ status: 'created', running: false, health: 'none' });
  });

  it('keeps a podman 1.x string Entrypoint and numeric or object User on recreate', () => {
    const spec = runArgsFromInspect(
      entry({ Config: { Entrypoint: 'python3 -m vllm.entrypoints.openai.api_server', User: 1000 } }),
      { cmd: ['--model', 'm'] },
    );
    expect(spec.args).toEqual(expect.arrayContaining(['--entrypoint', 'python3', '--user', '1000']));
    expect(spec.cmd).toEqual(['-m', 'vllm.entrypoints.openai.api_server', '--model', 'm']);
    expect(userOf({ uid: 1000, gid: 1000 })).toBe('1000:1000');
    expect(userOf({ Uid: '0' })).toBe('0');
    expect(commandList('')).toBeNull();
    expect(parseImageDefaults({ Config: { Entrypoint: '/bin/sh -c', User: 0 } })).toMatchObject({
      Entrypoint: ['/bin/sh', '-c'],
      User: '0',
    });
  });

  it('passes no --runtime for podman\'s default "oci" nor --shm-size for its default (real HostConfig)', () => {
    const { HostConfig } = json('docker/real/inspect-podman-hostconfig-excerpt.json') as {
      HostConfig: Record<string, unknown>;
    };
    const args = runArgsFromInspect(entry({ HostConfig }), { cmd: [] }).args;
    expect(args).not.toContain('--runtime');
    expect(args).not.toContain('--shm-size');
    expect(args).toEqual(expect.arrayContaining(['--ipc', 'private', '--log-driver', 'k8s-file']));
  });
});
