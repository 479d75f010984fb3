import {
  DockerCli,
  gpusFlags,
  NoSuchContainerError,
  parseDockerInspect,
  parseImageDefaults,
  runArgsFromInspect,
  scanLogSignals,
} from '../../src/hosts/docker';
import { ToolError } from '../../src/hosts/exec';
import { containerState } from '../helpers/hosts';
import { fakeTool, fixture } from './fakes';

describe('parseDockerInspect', () => {
  it('reads state, health, restart count, image and times of a running container', () => {
    const [s] = parseDockerInspect({ exitCode: 0, stdout: fixture('docker/inspect-ollama-running.json'), stderr: '' }, [
      'ollama',
    ]);
    expect(s).toEqual(
      containerState({
        restartCount: 1,
        health: 'healthy',
        image: 'ollama/ollama:0.5.7',
        startedAt: '2025-02-03T07:41:09.552017684Z',
        finishedAt: '2025-02-03T07:40:58.90412233Z',
      }),
    );
  });

  it('reports an OOM-killed exit, and a restarting unhealthy container', () => {
    const states = parseDockerInspect(
      { exitCode: 0, stdout: fixture('docker/inspect-vllm-oom-exited.json'), stderr: '' },
      ['vllm-fast', 'vllm-deep'],
    );
    // Order follows the names asked, not docker's output order.
    expect(states.map((s) => s.name)).toEqual(['vllm-fast', 'vllm-deep']);
    const [fast, deep] = states;
    expect(deep).toMatchObject({
      status: 'exited',
      running: false,
      exitCode: 137,
      oomKilled: true,
      health: 'none',
      restartCount: 0,
    });
    expect(fast).toMatchObject({
      status: 'restarting',
      running: true,
      health: 'unhealthy',
      restartCount: 7,
      exitCode: 1,
    });
  });

  it('turns "No such object" into exists:false instead of failing the whole inspect', () => {
    const states = parseDockerInspect(
      {
        exitCode: 1,
        stdout: fixture('docker/inspect-ollama-running.json'),
        stderr: fixture('docker/inspect-missing.stderr.txt'),
      },
      ['ollama', 'llama-cpu'],
    );
    expect(states[0]?.exists).toBe(true);
    expect(states[1]).toMatchObject({ name: 'llama-cpu', exists: false, status: 'missing', running: false });
  });

  it('throws for a failure it cannot attribute to a missing container (daemon down)', () => {
    expect(() =>
      parseDockerInspect({ exitCode: 1, stdout: '', stderr: fixture('docker/daemon-down.stderr.txt') }, ['ollama']),
    ).toThrow(/Cannot connect to the Docker daemon/);
  });
});

describe('scanLogSignals', () => {
  it('keeps the fault lines (CUDA OOM, illegal memory access) and nothing else', () => {
    const signals = scanLogSignals(fixture('docker/logs-vllm-oom.txt').split('\n'));
    expect(signals).toHaveLength(2);
    expect(signals[0]).toMatch(/illegal memory access/);
    expect(signals[1]).toMatch(/^ERROR .*torch\.OutOfMemoryError: CUDA out of memory/);
  });

  it('keeps at most five, the most recent, each cut to 300 characters', () => {
    const lines = Array.from({ length: 9 }, (_, i) => `step ${i}: NCCL error ${'x'.repeat(400)}`);
    const signals = scanLogSignals(lines);
    expect(signals).toHaveLength(5);
    expect(signals[0]).toMatch(/^step 4:/);
    expect(signals[4]).toMatch(/^step 8:/);
    expect(signals.every((s) => s.length === 300)).toBe(true);
  });
});

describe('DockerCli against a fake docker', () => {
  it('inspects with an argument array and scans logs since the container started', async () => {
    const docker = fakeTool('docker', [
      { args: ['inspect'], stdout: fixture('docker/inspect-vllm-oom-exited.json') },
      { args: ['logs'], stdout: 'INFO ok\n', stderr: fixture('docker/logs-vllm-oom.txt') },
    ]);
    const cli = new DockerCli({ bin: docker.bin });
    const [deep] = await cli.inspect(['vllm-deep'], { logSignals: { tail: 50 } });
    expect(deep?.logSignals.some((l) => /CUDA out of memory/.test(l))).toBe(true);
    expect(docker.calls()).toEqual([
      ['inspect', 'vllm-deep'],
      ['logs', '--tail', '50', '--since', '2025-02-03T08:02:17.118744031Z', 'vllm-deep'],
    ]);
  });

  it('merges stderr into logs (engines log their errors there)', async () => {
    const docker = fakeTool('docker', [{ args: ['logs'], stdout: 'from stdout\n', stderr: 'from stderr\n' }]);
    const lines = await new DockerCli({ bin: docker.bin }).logs('ollama', { tail: 10 });
    expect(lines.sort()).toEqual(['from stderr', 'from stdout']);
  });

  it('passes the stop timeout to restart and raises NoSuchContainerError for an unknown name', async () => {
    const docker = fakeTool('docker', [
      { args: ['restart', '-t', '30', 'ollama'], stdout: 'ollama\n' },
      { args: ['restart'], stderr: 'Error response from daemon: No such container: ghost\n', exit: 1 },
    ]);
    const cli = new DockerCli({ bin: docker.bin });
    await expect(cli.restart('ollama', { timeoutSec: 30 })).resolves.toBeUndefined();
    await expect(cli.restart('ghost')).rejects.toBeInstanceOf(NoSuchContainerError);
  });

  it('names the command and its stderr when docker itself fails', async () => {
    const docker = fakeTool('docker', [{ stderr: fixture('docker/daemon-down.stderr.txt'), exit: 1 }]);
    const err = await new DockerCli({ bin: docker.bin }).stop('ollama').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ToolError);
    expect((err as Error).message).toContain('stop -t 10 ollama` exited 1: Cannot connect to the Docker daemon');
  });

  it('reports a missing docker binary as a clear error', async () => {
    const err = await new DockerCli({ bin: '/nonexistent/docker' }).inspect(['ollama']).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/could not start: ENOENT/);
  });
});

describe('runArgsFromInspect (recreating a canary slot container)', () => {
  const [entry] = JSON.parse(fixture('docker/inspect-vllm-slot-running.json')) as unknown[];
  const [imageEntry] = JSON.parse(fixture('docker/image-inspect-vllm-openai.json')) as unknown[];
  const image = parseImageDefaults(imageEntry);
  const newCmd = ['--model', 'Qwen/Qwen2.5-14B-Instruct-AWQ', '--revision', 'b5d1a9c', '--port', '8000'];

  it('keeps name, image, ports, binds, GPU request, IPC, restart policy, ulimits, log options and own labels', () => {
    const spec = runArgsFromInspect(entry, { cmd: newCmd, image });
    expect(spec.args).toEqual([
      'run',
      '-d',
      '--name',
      'vllm-deep',
      // The image's own labels (maintainer, org.opencontainers.*) come with the image; only the operator's is passed.
      '--label',
      'com.example.role=deep',
      '--publish',
      '8001:8000',
      '--volume',
      '/srv/hf-cache:/root/.cache/huggingface',
      '--volume',
      '/etc/gpuops/secrets/vllm-api-key:/run/secrets/vllm-api-key:ro',
      '--gpus',
      'device=1',
      // --ipc=host shares the host's /dev/shm: no --shm-size.
      '--ipc',
      'host',
      '--restart',
      'unless-stopped',
      '--ulimit',
      'memlock=-1:-1',
      '--ulimit',
      'stack=67108864:67108864',
      '--log-opt',
      'max-file=3',
      '--log-opt',
      'max-size=50m',
      'vllm/vllm-openai:v0.6.6',
      ...newCmd,
    ]);
    // Only what the operator added to the image's environment, and never on the command line.
    expect(spec.env).toEqual(['HF_TOKEN=hf_abcDEF0123456789ghiJKL', 'VLLM_LOGGING_LEVEL=INFO']);
    expect(spec.args.join(' ')).not.toContain('hf_abc');
    expect(spec.cmd).toEqual(newCmd);
  });

  it('without the image defaults passes entrypoint, workdir, every label and variable explicitly', () => {
    const spec = runArgsFromInspect(entry, { cmd: newCmd });
    expect(spec.args.slice(4, 8)).toEqual(['--entrypoint', 'python3', '--workdir', '/vllm-workspace']);
    // The rest of the entrypoint leads the command, so Path + Args are what they were.
    expect(spec.cmd).toEqual(['-m', 'vllm.entrypoints.openai.api_server', ...newCmd]);
    expect(spec.args.slice(-spec.cmd.length)).toEqual(spec.cmd);
    expect(spec.env).toHaveLength(10);
    expect(spec.args).toContain('org.opencontainers.image.version=22.04');
  });

  it('writes --gpus as the docker CLI parses it: all, a count, one device, a quoted device list', () => {
    const req = (over: Record<string, unknown>) => [
      { Driver: '', Count: 0, DeviceIDs: null, Capabilities: [['gpu']], ...over },
    ];
    expect(gpusFlags(req({ Count: -1 }))).toEqual(['all']);
    expect(gpusFlags(req({ Count: 2 }))).toEqual(['2']);
    expect(gpusFlags(req({ DeviceIDs: ['1'] }))).toEqual(['device=1']);
    expect(gpusFlags(req({ DeviceIDs: ['0', '1'] }))).toEqual(['"device=0,1"']);
    expect(gpusFlags(req({ Count: -1, Capabilities: [['gpu', 'compute', 'utility']] }))).toEqual([
      'all,"capabilities=compute,utility"',
    ]);
    expect(gpusFlags(null)).toEqual([]);
  });

  it('keeps shm size with a private IPC namespace, and publishes nothing on the host network', () => {
    const e = JSON.parse(JSON.stringify(entry)) as { HostConfig: Record<string, unknown> };
    e.HostConfig.IpcMode = 'private';
    e.HostConfig.ShmSize = 17179869184;
    expect(runArgsFromInspect(e, { cmd: [], image }).args).toEqual(
      expect.arrayContaining(['--ipc', 'private', '--shm-size', '17179869184']),
    );
    e.HostConfig.NetworkMode = 'host';
    const host = runArgsFromInspect(e, { cmd: [], image }).args;
    expect(host).toEqual(expect.arrayContaining(['--network', 'host']));
    expect(host).not.toContain('--publish');
  });
});
