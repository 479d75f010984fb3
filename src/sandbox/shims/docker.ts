/**
 * `docker` for the sandbox node: inspect, start, stop, restart, logs, ps, version, run -d, create, rm and image
 * inspect, printing what the Docker CLI prints, against the node's simulated containers ($GPUOPS_SANDBOX_STATE).
 */
import fs from 'node:fs';
import type { ContainerSim, EngineSim, SandboxState } from '../state';
import * as core from './lib/core';
import { applyLifecycle } from './lib/lifecycle';
import { err, loadState, messageOf, out, parseArgs, parseSince, renderTemplate, type FlagValue } from './lib/shim';

function daemonDown(state: SandboxState): boolean {
  if (state.vm.phase === 'up') return false;
  err('Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n');
  process.exitCode = 1;
  return true;
}

/** Records docker knows: a `runtime: systemd` engine's record is a unit (the systemctl shim's), not a container. */
function dockerContainers(state: SandboxState): ContainerSim[] {
  return Object.values(state.containers).filter((c) => state.engines[c.engine]?.runtime !== 'systemd');
}

function findContainer(state: SandboxState, ref: string): ContainerSim | undefined {
  const name = ref.replace(/^\//, '');
  const all = dockerContainers(state);
  const byName = all.find((c) => c.name === name);
  if (byName) return byName;
  if (/^[0-9a-f]{3,64}$/.test(name)) return all.find((c) => c.id.startsWith(name));
  return undefined;
}

/** A flag's text, when it was given one. */
const str = (v: FlagValue): string | undefined => (typeof v === 'string' ? v : undefined);

interface DeviceRequest {
  Driver: string;
  Count: number;
  DeviceIDs: string[] | null;
  Capabilities: string[][];
  Options: Record<string, string>;
}

/** HostConfig.DeviceRequests for a `--gpus` value: "all", a count, "device=1" or "\"device=0,1\"" (CSV-quoted). */
function deviceRequests(gpus: string | null): DeviceRequest[] | null {
  if (gpus === null) return null;
  const fields: string[] = [];
  for (const m of gpus.matchAll(/"([^"]*)"|([^,]+)/g)) fields.push(m[1] ?? m[2] ?? '');
  const req: DeviceRequest = { Driver: '', Count: 0, DeviceIDs: null, Capabilities: [['gpu']], Options: {} };
  for (const f of fields) {
    if (f === 'all') req.Count = -1;
    else if (/^\d+$/.test(f)) req.Count = Number(f);
    else if (f.startsWith('device=')) req.DeviceIDs = f.slice(7).split(',');
    else if (f.startsWith('capabilities=')) req.Capabilities = [['gpu', ...f.slice(13).split(',')]];
    else if (f.startsWith('driver=')) req.Driver = f.slice(7);
  }
  return [req];
}

/** HostConfig.PortBindings of `--publish` values. */
function portBindings(publish: readonly string[]): Record<string, { HostIp: string; HostPort: string }[]> {
  const bindings: Record<string, { HostIp: string; HostPort: string }[]> = {};
  for (const p of publish) {
    const m = /^(?:(\[[^\]]*\]|[^:]*):)?(?:(\d*):)?(\d+)(?:\/(\w+))?$/.exec(p);
    if (!m) continue;
    const key = `${m[3]}/${m[4] || 'tcp'}`;
    const ip = m[2] !== undefined ? (m[1] || '').replace(/^\[|\]$/g, '') : '';
    const hostPort = m[2] !== undefined ? m[2] : m[1] || '';
    (bindings[key] ??= []).push({ HostIp: ip, HostPort: hostPort });
  }
  return bindings;
}

/** The full `docker inspect` object of a container, as Docker 27 prints it. */
function inspectObject(state: SandboxState, c: ContainerSim): Record<string, unknown> {
  const engine = state.engines[c.engine];
  const id = c.id;
  const running = c.status === 'running';
  const portKey = `${c.ports.container}/tcp`;
  const defaults = core.IMAGE_DEFAULTS[engine ? engine.type : 'llamacpp'];
  // A container made by `docker run` shows what it was run with; seeded ones show the node's usual setup.
  const run = c.run;
  const entrypoint = run && run.entrypoint !== null ? run.entrypoint : defaults.Entrypoint;
  const full = [...entrypoint, ...c.cmd];
  const gpuIds = engine && engine.gpus.length > 0 ? engine.gpus.map(String) : null;
  const stateObj: Record<string, unknown> = {
    Status: c.status,
    Running: running || c.status === 'paused',
    Paused: c.status === 'paused',
    Restarting: c.status === 'restarting',
    OOMKilled: c.oomKilled,
    Dead: c.status === 'dead',
    Pid: running ? c.pid : 0,
    ExitCode: c.exitCode,
    Error: '',
    StartedAt: core.isoNano(c.startedAt),
    FinishedAt: core.isoNano(c.finishedAt),
  };
  if (c.health !== 'none') {
    stateObj.Health = { Status: c.health, FailingStreak: c.health === 'unhealthy' ? 3 : 0, Log: [] };
  }
  const volume = defaults.volume;
  const hostVolume = `/srv/${state.node}/${c.name}`;
  const binds = run ? run.binds : [`${hostVolume}:${volume}`];
  const mounts = binds.map((b) => {
    const [source = '', destination, mode = ''] = b.split(':');
    return {
      Type: source.startsWith('/') ? 'bind' : 'volume',
      Source: source,
      Destination: destination,
      Mode: mode,
      RW: !mode.split(',').includes('ro'),
      Propagation: 'rprivate',
    };
  });
  const ipAddress = running ? `172.17.0.${2 + Object.keys(state.containers).indexOf(c.name)}` : '';
  const lower = core.hexOf(`${id}/lower`, 64);
  return {
    Id: id,
    Created: core.isoNano(c.createdAt),
    Path: full[0],
    Args: full.slice(1),
    State: stateObj,
    Image: c.imageId,
    ResolvConfPath: `/var/lib/docker/containers/${id}/resolv.conf`,
    HostnamePath: `/var/lib/docker/containers/${id}/hostname`,
    HostsPath: `/var/lib/docker/containers/${id}/hosts`,
    LogPath: `/var/lib/docker/containers/${id}/${id}-json.log`,
    Name: `/${c.name}`,
    RestartCount: c.restartCount,
    Driver: 'overlay2',
    Platform: 'linux',
    MountLabel: '',
    ProcessLabel: '',
    AppArmorProfile: 'docker-default',
    ExecIDs: null,
    HostConfig: {
      Binds: binds,
      ContainerIDFile: '',
      LogConfig: { Type: 'json-file', Config: {} },
      NetworkMode: run?.networkMode || 'bridge',
      PortBindings: run ? portBindings(run.publish) : { [portKey]: [{ HostIp: '', HostPort: String(c.ports.host) }] },
      // No restart policy: a crashed engine stays down until gpuops acts (the node's boot unit starts them).
      RestartPolicy: run ? run.restartPolicy : { Name: 'no', MaximumRetryCount: 0 },
      AutoRemove: false,
      VolumeDriver: '',
      VolumesFrom: null,
      CapAdd: null,
      CapDrop: null,
      Dns: [],
      IpcMode: run?.ipcMode || 'private',
      Privileged: false,
      PublishAllPorts: false,
      ReadonlyRootfs: false,
      ShmSize: run ? run.shmSize || 67108864 : engine?.type === 'vllm' ? 17179869184 : 67108864,
      Runtime: run?.runtime || 'runc',
      Isolation: '',
      Memory: 0,
      NanoCpus: 0,
      DeviceRequests: run
        ? deviceRequests(run.gpus)
        : [{ Driver: '', Count: gpuIds ? 0 : -1, DeviceIDs: gpuIds, Capabilities: [['gpu']], Options: {} }],
    },
    GraphDriver: {
      Data: {
        LowerDir: `/var/lib/docker/overlay2/${lower}-init/diff`,
        MergedDir: `/var/lib/docker/overlay2/${lower}/merged`,
        UpperDir: `/var/lib/docker/overlay2/${lower}/diff`,
        WorkDir: `/var/lib/docker/overlay2/${lower}/work`,
      },
      Name: 'overlay2',
    },
    Mounts: mounts,
    Config: {
      Hostname: id.slice(0, 12),
      Domainname: '',
      User: '',
      AttachStdin: false,
      AttachStdout: false,
      AttachStderr: false,
      ExposedPorts: Object.fromEntries(
        [`${defaults.port}/tcp`, portKey, ...Object.keys(run ? portBindings(run.publish) : {})].map((k) => [k, {}]),
      ),
      Tty: false,
      OpenStdin: false,
      StdinOnce: false,
      Env: c.env,
      Cmd: c.cmd,
      Image: c.image,
      Volumes: null,
      WorkingDir: '',
      Entrypoint: entrypoint.length > 0 ? entrypoint : null,
      OnBuild: null,
      Labels: { ...core.IMAGE_LABELS, ...(run ? run.labels : {}) },
    },
    NetworkSettings: {
      Bridge: '',
      SandboxID: running ? core.hexOf(`${id}/sandbox/${c.epoch}`, 64) : '',
      SandboxKey: running ? `/var/run/docker/netns/${core.hexOf(`${id}/netns/${c.epoch}`, 12)}` : '',
      Ports: running
        ? {
            [portKey]: [
              { HostIp: '0.0.0.0', HostPort: String(c.ports.host) },
              { HostIp: '::', HostPort: String(c.ports.host) },
            ],
          }
        : {},
      Gateway: running ? '172.17.0.1' : '',
      IPAddress: ipAddress,
      IPPrefixLen: running ? 16 : 0,
      MacAddress: running ? '02:42:ac:11:00:02' : '',
      Networks: {
        bridge: {
          IPAMConfig: null,
          Links: null,
          Aliases: null,
          NetworkID: core.hexOf('bridge', 64),
          EndpointID: running ? core.hexOf(`${id}/endpoint/${c.epoch}`, 64) : '',
          Gateway: running ? '172.17.0.1' : '',
          IPAddress: ipAddress,
          IPPrefixLen: running ? 16 : 0,
          DNSNames: null,
        },
      },
    },
  };
}

function cmdInspect(argv: string[]): void {
  const { flags, positional } = parseArgs(argv, new Set(['format', 'f', 'type']));
  const { state } = loadState('docker');
  if (daemonDown(state)) return;
  core.applyLoadFailures(state, Date.now());
  if (positional.length === 0) {
    err(
      '"docker inspect" requires at least 1 argument.\nSee \'docker inspect --help\'.\n\nUsage:  docker inspect [OPTIONS] NAME|ID [NAME|ID...]\n\nReturn low-level information on Docker objects\n',
    );
    process.exitCode = 1;
    return;
  }
  const format = flags.format !== undefined ? flags.format : flags.f;
  const found: Record<string, unknown>[] = [];
  const missing: string[] = [];
  for (const ref of positional) {
    const c = findContainer(state, ref);
    if (c) found.push(inspectObject(state, c));
    else missing.push(ref);
  }
  if (typeof format === 'string') {
    try {
      for (const obj of found) out(`${renderTemplate(format, obj)}\n`);
    } catch (e) {
      err(`${messageOf(e)}\n`);
      process.exitCode = 1;
      return;
    }
  } else {
    out(`${JSON.stringify(found, null, 4)}\n`);
  }
  for (const ref of missing) err(`Error: No such object: ${ref}\n`);
  if (missing.length > 0) process.exitCode = 1;
}

/** start/stop/restart: print each name on success, "No such container" for unknown ones, exit 1 if any failed. */
function cmdLifecycle(verb: 'start' | 'stop' | 'restart', argv: string[]): void {
  const { flags, positional } = parseArgs(argv, new Set(['t', 'time', 'timeout', 's', 'signal']));
  const t = Number(flags.t ?? flags.time ?? flags.timeout ?? 10);
  const { file, state } = loadState('docker');
  if (daemonDown(state)) return;
  if (positional.length === 0) {
    err(`"docker ${verb}" requires at least 1 argument.\nSee 'docker ${verb} --help'.\n`);
    process.exitCode = 1;
    return;
  }
  const failures: string[] = [];
  for (const ref of positional) {
    const c = findContainer(state, ref);
    if (!c) {
      failures.push(`Error response from daemon: No such container: ${ref}`);
      continue;
    }
    // A hung engine ignores SIGTERM: docker waits the whole grace period, then SIGKILLs it (exit 137). Without a
    // restart policy a stopped container stays down, across reboots too.
    applyLifecycle(file, state, c.name, verb, { graceSec: t, persistStop: true });
    out(`${ref}\n`);
  }
  for (const f of failures) err(`${f}\n`);
  if (failures.length > 0) process.exitCode = 1;
}

function cmdLogs(argv: string[]): void {
  const { flags, positional } = parseArgs(argv, new Set(['tail', 'n', 'since', 'until']));
  const { state } = loadState('docker');
  if (daemonDown(state)) return;
  core.applyLoadFailures(state, Date.now());
  if (flags.f || flags.follow) {
    err('docker logs --follow is not supported by the gpuops sandbox shim\n');
    process.exitCode = 1;
    return;
  }
  const ref = positional[0];
  const c = ref === undefined ? undefined : findContainer(state, ref);
  if (!c) {
    err(
      ref === undefined
        ? '"docker logs" requires exactly 1 argument.\n'
        : `Error response from daemon: No such container: ${ref}\n`,
    );
    process.exitCode = 1;
    return;
  }
  const now = Date.now();
  let lines = c.logs;
  try {
    if (flags.since !== undefined) {
      const since = parseSince(String(flags.since), now);
      lines = lines.filter((l) => l.t >= since);
    }
    if (flags.until !== undefined) {
      const until = parseSince(String(flags.until), now);
      lines = lines.filter((l) => l.t <= until);
    }
  } catch (e) {
    err(`${messageOf(e)}\n`);
    process.exitCode = 1;
    return;
  }
  const tail = flags.tail !== undefined ? flags.tail : flags.n;
  if (tail !== undefined && tail !== 'all') {
    const n = Number(tail);
    lines = n >= 0 ? lines.slice(Math.max(0, lines.length - n)) : lines;
  }
  const stamp = flags.t || flags.timestamps;
  for (const l of lines) {
    const text = `${stamp ? `${core.isoNano(l.t)} ` : ''}${l.m}\n`;
    if (l.s === 'stdout') out(text);
    else err(text);
  }
}

// `docker run` flags that take a value, by every name the CLI accepts; the rest are booleans.
const RUN_VALUE_FLAGS = new Set(
  (
    'name e env env-file p publish v volume mount gpus shm-size ipc restart network net l label ' +
    'entrypoint runtime device cap-add cap-drop security-opt group-add dns add-host ulimit log-driver ' +
    'log-opt m memory cpus u user w workdir health-cmd health-interval health-timeout health-start-period ' +
    'health-retries tmpfs h hostname platform pull label-file cidfile stop-signal stop-timeout pid uts'
  ).split(' '),
);

/** Parse `docker run` argv: flags up to the image, then the image, then the command (never parsed as flags). */
function parseRunArgv(argv: string[]): {
  flags: Record<string, FlagValue[]>;
  all: (...names: string[]) => string[];
  last: (...names: string[]) => string | undefined;
  image: string | undefined;
  cmd: string[];
} {
  const flags: Record<string, FlagValue[]> = {};
  const push = (k: string, v: FlagValue): void => void (flags[k] ??= []).push(v);
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-') || a === '-') break;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
      if (eq > 0) push(name, a.slice(eq + 1));
      else if (RUN_VALUE_FLAGS.has(name)) push(name, argv[++i]);
      else push(name, true);
      continue;
    }
    // Short flags: a boolean cluster (-dit) or one value flag (-e K=V, -eK=V, -p=8000:8000).
    for (let k = 1; k < a.length; k++) {
      const ch = a.charAt(k);
      if (RUN_VALUE_FLAGS.has(ch)) {
        const rest = a.slice(k + 1).replace(/^=/, '');
        push(ch, rest !== '' ? rest : argv[++i]);
        break;
      }
      push(ch, true);
    }
  }
  // Value flags carry text; a value flag at the very end of argv has none and is dropped.
  const all = (...names: string[]): string[] =>
    names.flatMap((n) => (flags[n] ?? []).filter((v): v is string => typeof v === 'string'));
  const last = (...names: string[]): string | undefined => all(...names).at(-1);
  return { flags, all, last, image: argv[i], cmd: argv.slice(i + 1) };
}

/** Docker's size strings ("16g", "64m", "17179869184", "1.5GiB") in bytes. */
function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) return NaN;
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 }[
    (m[2] ?? '').toLowerCase() as '' | 'k' | 'm' | 'g' | 't' | 'p'
  ];
  return Math.round(Number(m[1]) * mult);
}

/**
 * `docker run -d --name N [flags] IMAGE [CMD…]` (or `docker create …`, which does not start it): prints the new
 * container's 64-hex id, like docker.
 */
function cmdRun(argv: string[], verb: 'run' | 'create'): void {
  const { all, last, flags, image, cmd } = parseRunArgv(argv);
  const { file, state } = loadState('docker');
  if (daemonDown(state)) return;
  const usage = `\nSee 'docker ${verb} --help'.\n`;
  if (image === undefined) {
    err(`"docker ${verb}" requires at least 1 argument.${usage}`);
    process.exitCode = 1;
    return;
  }
  if (verb === 'run' && !(flags.d || flags.detach)) {
    err(`docker run without -d (attached) is not supported by the gpuops sandbox shim${usage}`);
    process.exitCode = 125;
    return;
  }
  const name = last('name');
  if (!name) {
    err(`docker: the gpuops sandbox shim runs named engine containers only: pass --name${usage}`);
    process.exitCode = 125;
    return;
  }
  const env: string[] = [];
  for (const f of all('env-file')) {
    let text: string;
    try {
      text = fs.readFileSync(f, 'utf8');
    } catch {
      err(`docker: open ${f}: no such file or directory${usage}`);
      process.exitCode = 125;
      return;
    }
    for (const line of text.split(/\r?\n/)) {
      const l = line.replace(/^\s+/, '');
      if (l === '' || l.startsWith('#')) continue;
      env.push(l.includes('=') ? l : `${l}=${process.env[l] || ''}`);
    }
  }
  for (const e of all('e', 'env')) env.push(e.includes('=') ? e : `${e}=${process.env[e] || ''}`);
  const labels: Record<string, string> = {};
  for (const l of all('l', 'label')) {
    const eq = l.indexOf('=');
    labels[eq > 0 ? l.slice(0, eq) : l] = eq > 0 ? l.slice(eq + 1) : '';
  }
  const restart = last('restart') || 'no';
  const [policy = '', retries] = restart.split(':');
  const shm = last('shm-size');
  const ep = last('entrypoint');
  const spec: core.RunContainerSpec = {
    name,
    image,
    cmd,
    env,
    entrypoint: ep === undefined ? null : ep === '' ? [] : [ep],
    publish: all('p', 'publish'),
    binds: all('v', 'volume'),
    gpus: last('gpus') ?? null,
    shmSize: shm === undefined ? null : parseSize(shm),
    ipcMode: last('ipc') || null,
    restartPolicy: { Name: policy, MaximumRetryCount: Number(retries || 0) },
    networkMode: last('network', 'net') || null,
    labels,
    runtime: last('runtime') || null,
  };
  if (spec.shmSize !== null && !(spec.shmSize > 0)) {
    err(`invalid argument "${shm}" for "--shm-size" flag: invalid size: '${shm}'${usage}`);
    process.exitCode = 125;
    return;
  }
  const result = core.updateState(file, (s, now) => core.runContainer(s, spec, now, verb === 'run'));
  if ('error' in result) {
    err(`${result.error}\n`);
    process.exitCode = result.code;
    return;
  }
  out(`${result.id}\n`);
}

/** `docker rm [-f] NAME…`: prints each removed name; with -f a missing name is a warning, not a failure. */
function cmdRm(argv: string[]): void {
  const { flags, positional } = parseArgs(argv, new Set());
  const force = Boolean(flags.f || flags.force);
  const { file, state } = loadState('docker');
  if (daemonDown(state)) return;
  if (positional.length === 0) {
    err(`"docker rm" requires at least 1 argument.\nSee 'docker rm --help'.\n`);
    process.exitCode = 1;
    return;
  }
  let failed = false;
  for (const ref of positional) {
    const c = findContainer(state, ref);
    if (!c) {
      err(`Error response from daemon: No such container: ${ref}\n`);
      if (!force) failed = true;
      continue;
    }
    const problem = core.updateState(file, (s, now) =>
      s.containers[c.name] ? core.removeContainer(s, c.name, now, force) : null,
    );
    if (problem) {
      err(`${problem}\n`);
      failed = true;
      continue;
    }
    out(`${ref}\n`);
  }
  if (failed) process.exitCode = 1;
}

/** The engine type an image belongs to (the sandbox knows its three engine images and the images in use). */
function imageType(state: SandboxState, ref: string): EngineSim['type'] | undefined {
  const c = Object.values(state.containers).find((x) => x.image === ref || x.imageId === ref);
  const engine = c ? state.engines[c.engine] : undefined;
  if (engine) return engine.type;
  if (/^(?:docker\.io\/)?ollama\/ollama(?::|$)/.test(ref)) return 'ollama';
  if (/^(?:docker\.io\/)?vllm\/vllm-openai(?::|$)/.test(ref)) return 'vllm';
  if (/^ghcr\.io\/ggml-org\/llama\.cpp(?::|$)/.test(ref)) return 'llamacpp';
  return undefined;
}

/** `docker image inspect IMAGE…`: the image's own config (entrypoint, cmd, env, labels). */
function cmdImageInspect(argv: string[]): void {
  const { positional } = parseArgs(argv, new Set(['format', 'f']));
  const { state } = loadState('docker');
  if (daemonDown(state)) return;
  const found: Record<string, unknown>[] = [];
  const missing: string[] = [];
  for (const ref of positional) {
    const type = imageType(state, ref);
    if (!type) {
      missing.push(ref);
      continue;
    }
    const d = core.IMAGE_DEFAULTS[type];
    found.push({
      Id: `sha256:${core.hexOf(ref, 64)}`,
      RepoTags: [ref],
      RepoDigests: [`${ref.split(':')[0]}@sha256:${core.hexOf(`${ref}/digest`, 64)}`],
      Created: '2024-11-20T09:14:03.918273001Z',
      Config: {
        Env: [...core.IMAGE_ENV],
        Cmd: d.Cmd,
        Entrypoint: d.Entrypoint,
        WorkingDir: '',
        User: '',
        ExposedPorts: { [`${d.port}/tcp`]: {} },
        Labels: { ...core.IMAGE_LABELS },
      },
      Architecture: 'amd64',
      Os: 'linux',
      Size: 9_663_676_416,
    });
  }
  out(`${JSON.stringify(found, null, 4)}\n`);
  for (const ref of missing) err(`Error response from daemon: No such image: ${ref}\n`);
  if (missing.length > 0) process.exitCode = 1;
}

function humanAgo(ms: number): string {
  const s = Math.max(1, Math.round(ms / 1000));
  if (s < 60) return `${s} seconds`;
  const m = Math.round(s / 60);
  if (m < 60) return m === 1 ? 'About a minute' : `${m} minutes`;
  const h = Math.round(m / 60);
  if (h < 48) return h === 1 ? 'About an hour' : `${h} hours`;
  return `${Math.round(h / 24)} days`;
}

function psRow(state: SandboxState, c: ContainerSim, now: number): Record<string, string> {
  const type = state.engines[c.engine]?.type;
  const cmd =
    type === 'ollama' ? '"/bin/ollama serve"' : type === 'vllm' ? '"python3 -m vllm.en…"' : '"/app/llama-server …"';
  const status =
    c.status === 'running'
      ? `Up ${humanAgo(now - c.startedAt)}`
      : c.status === 'created'
        ? 'Created'
        : `Exited (${c.exitCode}) ${humanAgo(now - c.finishedAt)} ago`;
  return {
    Command: cmd,
    CreatedAt: new Date(c.createdAt)
      .toISOString()
      .replace('T', ' ')
      .replace(/\.\d+Z$/, ' +0000 UTC'),
    ID: c.id.slice(0, 12),
    Image: c.image,
    Labels: '',
    LocalVolumes: '0',
    Mounts: `/srv/${state.node}/${c.name}`,
    Names: c.name,
    Networks: 'bridge',
    Ports:
      c.status === 'running'
        ? `0.0.0.0:${c.ports.host}->${c.ports.container}/tcp, :::${c.ports.host}->${c.ports.container}/tcp`
        : '',
    RunningFor: `${humanAgo(now - c.createdAt)} ago`,
    Size: '0B',
    State: c.status,
    Status: status,
  };
}

function cmdPs(argv: string[]): void {
  const { flags } = parseArgs(argv, new Set(['format', 'filter', 'f']));
  const { state } = loadState('docker');
  if (daemonDown(state)) return;
  const now = Date.now();
  let list = dockerContainers(state);
  if (!(flags.a || flags.all)) list = list.filter((c) => c.status === 'running');
  const filter = str(flags.filter !== undefined ? flags.filter : flags.f);
  if (filter?.startsWith('name=')) {
    const needle = filter.slice(5);
    list = list.filter((c) => c.name.includes(needle));
  }
  const rows = list.map((c) => psRow(state, c, now));
  if (flags.q || flags.quiet) {
    for (const r of rows) out(`${r.ID}\n`);
    return;
  }
  const format = str(flags.format);
  if (format !== undefined) {
    for (const r of rows) out(`${renderTemplate(format, r)}\n`);
    return;
  }
  const cols = ['CONTAINER ID', 'IMAGE', 'COMMAND', 'CREATED', 'STATUS', 'PORTS', 'NAMES'];
  const keys = ['ID', 'Image', 'Command', 'RunningFor', 'Status', 'Ports', 'Names'];
  const table = rows.map((r) => keys.map((k) => r[k] ?? ''));
  const widths = cols.map((h, i) => Math.max(h.length, ...table.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]): string =>
    `${cells.map((v, i) => (i === cells.length - 1 ? v : v.padEnd((widths[i] ?? 0) + 3))).join('')}\n`;
  out(line(cols));
  for (const row of table) out(line(row));
}

function cmdVersion(argv: string[]): void {
  const { flags } = parseArgs(argv, new Set(['format', 'f']));
  const { state } = loadState('docker');
  const v = state.host.dockerVersion;
  const info = {
    Client: { Version: v, ApiVersion: '1.47', GoVersion: 'go1.22.7', Os: 'linux', Arch: 'amd64' },
    Server: {
      Version: v,
      ApiVersion: '1.47',
      MinAPIVersion: '1.24',
      GoVersion: 'go1.22.7',
      Os: 'linux',
      Arch: 'amd64',
    },
  };
  const format = str(flags.format !== undefined ? flags.format : flags.f);
  if (format !== undefined) {
    if (state.vm.phase !== 'up' && format.includes('.Server')) return void daemonDown(state);
    out(`${renderTemplate(format, info)}\n`);
    return;
  }
  out(
    `Client: Docker Engine - Community\n Version:           ${v}\n API version:       1.47\n Go version:        go1.22.7\n OS/Arch:           linux/amd64\n\n`,
  );
  if (daemonDown(state)) return;
  out(
    `Server: Docker Engine - Community\n Engine:\n  Version:          ${v}\n  API version:      1.47 (minimum version 1.24)\n  Go version:       go1.22.7\n  OS/Arch:          linux/amd64\n`,
  );
}

const CONTAINER_VERBS = ['inspect', 'start', 'stop', 'restart', 'logs', 'ls', 'run', 'create', 'rm'];

function main(argv: string[]): void {
  // Global options before the command (e.g. --host) are accepted and ignored.
  let i = 0;
  while (argv[i]?.startsWith('-')) i += ['-H', '--host', '--context'].includes(argv[i] ?? '') ? 2 : 1;
  let cmd = argv[i];
  let rest = argv.slice(i + 1);
  if (cmd === 'container' && rest[0] !== undefined && CONTAINER_VERBS.includes(rest[0])) {
    cmd = rest[0] === 'ls' ? 'ps' : rest[0];
    rest = rest.slice(1);
  }
  switch (cmd) {
    case 'inspect':
      return cmdInspect(rest);
    case 'run':
    case 'create':
      return cmdRun(rest, cmd);
    case 'rm':
      return cmdRm(rest);
    case 'image':
      if (rest[0] === 'inspect') return cmdImageInspect(rest.slice(1));
      err(`docker image ${rest[0] || ''}: not supported by the gpuops sandbox shim\n`);
      process.exitCode = 1;
      return;
    case 'start':
    case 'stop':
    case 'restart':
      return cmdLifecycle(cmd, rest);
    case 'logs':
      return cmdLogs(rest);
    case 'ps':
      return cmdPs(rest);
    case 'version':
      return cmdVersion(rest);
    case undefined:
      out('\nUsage:  docker [OPTIONS] COMMAND\n\nA self-sufficient runtime for containers (gpuops sandbox shim)\n');
      return;
    default:
      err(`docker: '${cmd}' is not a docker command.\nSee 'docker --help'\n`);
      process.exitCode = 1;
  }
}

main(process.argv.slice(2));
