/**
 * The gpuops.yaml schema. Every field is documented here: the docs flow into the exported JSON Schema, so
 * operators see them in their editor. Secrets are never values in this file, only file paths or env var names.
 */
import path from 'node:path';
import { z } from 'zod';
import { DeployPolicySchema } from '../domain/deploy-policy';
import {
  DockerContainerNameSchema,
  GenerateTimeoutSchema,
  ID_PATTERN,
  ProcessNameSchema,
  ReadDataSubsetSchema,
  ByteSizeSchema,
  SystemdServiceUnitSchema,
  commandArg,
  hasControlChars,
} from '../domain/schemas';
import { ENGINE_RUNTIMES } from '../hosts/runtime';
import { cronProblems } from './cron';

const id = z.string().regex(ID_PATTERN, {
  message: 'must be lowercase letters, digits and dashes (max 63), starting with a letter or digit',
});
const httpUrl = z
  .string()
  .refine((s) => /^https?:\/\/[^\s/]+/.test(s) && URL.canParse(s), { message: 'must be an http(s) URL' });
const filePath = z
  .string()
  .min(1, { message: 'must be a file path' })
  .refine((s) => !s.includes('\u0000'), { message: 'must not contain NUL' });
/** A path, binary or name that is passed to a command (see commandArg). */
const arg = (what = 'must not be empty') => commandArg(z.string().min(1, { message: what }));
/** A binary gpuops runs, by name (looked up on PATH) or path. */
const binary = (name: string) => arg('must be a binary name or path').default(name);
const envName = z
  .string()
  .regex(/^[A-Z_][A-Z0-9_]*$/, { message: 'must be an environment variable name (A-Z, 0-9, _)' });
const duration = z
  .string()
  .regex(/^\d+(ms|s|m|h|d)$/, { message: 'must be a duration such as 500ms, 30s, 5m, 1h or 7d' })
  .describe('Duration: a number and a unit (ms, s, m, h, d).');

/**
 * An IP address and port to bind, `127.0.0.1:9464` or `[::]:9464`: the SDK's exporter binds a socket address, so a
 * host name is refused here rather than when the worker starts.
 */
export const SocketAddressSchema = z.string().refine(
  (s) => {
    const m = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(s);
    if (!m) return false;
    const host = m[1] ?? m[2] ?? '';
    const port = Number(m[3]);
    const ip = m[1] !== undefined ? z.ipv6() : z.ipv4();
    return ip.safeParse(host).success && port >= 1 && port <= 65535;
  },
  { message: 'must be an IP address and a port 1-65535, e.g. 127.0.0.1:9464 or [::]:9464 (not a host name)' },
);

/** What each runtime accepts as the engine's `container`: its own naming rule. */
const CONTAINER_NAME: Record<(typeof ENGINE_RUNTIMES)[number], z.ZodType<string>> = {
  docker: DockerContainerNameSchema,
  systemd: SystemdServiceUnitSchema,
  process: ProcessNameSchema,
};

/**
 * Whether a value passed its own rule, so a cross-check may quote it. A value that broke its rule is already reported
 * on its field, and is never echoed: it may be anything, a pasted secret included.
 */
const isId = (s: string): boolean => ID_PATTERN.test(s);
const isContainerName = (e: { runtime: (typeof ENGINE_RUNTIMES)[number]; container: string }): boolean =>
  CONTAINER_NAME[e.runtime].safeParse(e.container).success;

export const GpuSchema = z
  .strictObject({
    index: z.int().min(0).describe('nvidia-smi index of the GPU inside the node.'),
    model: z.string().optional().describe('Expected product name, e.g. "NVIDIA RTX A4000".'),
    memoryMiB: z.int().positive().optional().describe('Expected total memory in MiB.'),
  })
  .describe('A GPU passed through to the node.');

export const EngineSchema = z
  .strictObject({
    name: id.describe('Engine name, unique within the node (e.g. "ollama", "vllm-fast").'),
    type: z.enum(['ollama', 'vllm', 'llamacpp']).describe('Engine kind: ollama, vllm or llamacpp (llama-server).'),
    url: httpUrl.describe('Base URL of the engine HTTP API as seen from the node, e.g. http://127.0.0.1:11434.'),
    runtime: z
      .enum(ENGINE_RUNTIMES)
      .default('docker')
      .describe(
        "What runs the engine: docker (a container), systemd (a unit, e.g. Ollama's official ollama.service) or " +
          "process (a plain process kept by gpuops's keeper, from `process`). Recovery's restart rung, standby " +
          'halves and canary slots work for each.',
      ),
    container: arg().describe(
      'What the runtime calls the engine: the Docker container name (docker), the unit name such as ' +
        'ollama.service (systemd), or the process name (process).',
    ),
    process: z
      .strictObject({
        command: z
          .string()
          .regex(/^\//, { message: 'must be an absolute path to the engine binary' })
          .refine((s) => !hasControlChars(s), { message: 'must not contain control characters' })
          .describe('Engine binary, e.g. /usr/local/bin/llama-server.'),
        args: z.array(z.string()).default([]).describe('Its arguments (the model flags a canary slot rewrites).'),
        env: z.record(z.string(), z.string()).optional().describe('Extra environment (no secrets: use files).'),
        cwd: arg().optional().describe('Working directory (default: the process state directory).'),
      })
      .optional()
      .describe('How to run the engine when runtime is process.'),
    real: z
      .strictObject({
        image: commandArg(
          z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/:@-]*$/, { message: 'must be a docker image reference' }),
        )
          .optional()
          .describe('runtime docker: image the sandbox creates the container from (with --network host) when missing.'),
        args: z.array(z.string()).default([]).describe('runtime docker: the container command (engine arguments).'),
        env: z.record(z.string(), z.string()).optional().describe('runtime docker: container environment.'),
        memory: z
          .string()
          .regex(/^\d+[bkmg]?$/i, { message: 'must be a docker memory size such as 512m' })
          .optional()
          .describe('runtime docker: memory limit (docker run --memory), e.g. to provoke a real OOM kill.'),
        seedModels: z
          .array(z.strictObject({ name: z.string().min(1), gguf: filePath }))
          .default([])
          .describe('Ollama: models created from GGUF files (POST /api/blobs, /api/create) when it lacks them.'),
      })
      .optional()
      .describe(
        'Sandbox nodes only: run the real engine (llama-server, Ollama) under its runtime instead of simulating it. ' +
          'GPUs, Xid, ECC and Proxmox stay simulated.',
      ),
    gpus: z.array(z.int().min(0)).default([]).describe('GPU indices the engine uses (none listed: all of the node’s).'),
    cpuOnly: z
      .boolean()
      .default(false)
      .describe(
        'The engine runs on the CPU by design (e.g. a llama-cpu container): the GPU-memory pre-flight does not ' +
          'apply and Ollama reporting size_vram 0 is not an offload.',
      ),
    apiKeyFile: filePath.optional().describe('File holding the engine API key (vLLM --api-key), read on the node.'),
    insecureRegistries: z
      .array(z.string().regex(/^[A-Za-z0-9.-]+(:\d+)?$/, { message: 'must be host or host:port' }))
      .default([])
      .describe(
        'Ollama: registries (host[:port]) reached over plain HTTP or with an unverified certificate; a pull of a ' +
          'model under one passes insecure: true, as `ollama pull --insecure` does. For a private registry only.',
      ),
    probeModel: z
      .string()
      .optional()
      .describe("Model for the health probe's tiny test generation; the first loaded model when unset."),
    canarySlot: id
      .optional()
      .describe(
        'Another engine on this node, of the same type (vllm or llamacpp only), that forms a blue/green slot pair ' +
          'with this one: a second container, typically on its own GPU, where deployModel loads a new model as the ' +
          "canary. Whichever half the router's stable variant points at is serving, the other is the slot. A " +
          'stopped half whose partner runs is "standby", not a fault. Ollama needs none: its canary is a second ' +
          'tag on the same engine. Both halves leave probeModel unset: their model changes with each deployment.',
      ),
  })
  .describe('An inference engine container on the node.');

export const NodeSchema = z
  .strictObject({
    id: id.describe('Node id; the node worker polls task queue gpuops-node-<id>.'),
    description: z.string().optional(),
    gpus: z.array(GpuSchema).default([]).describe('GPUs the node should see.'),
    engines: z.array(EngineSchema).default([]).describe('Engines served on the node.'),
    vm: z
      .strictObject({
        hypervisor: id.describe('Id of the hypervisor (in hypervisors[]) that hosts this VM.'),
        vmid: z.int().min(100).max(999999999).describe('Proxmox VM id.'),
      })
      .optional()
      .describe('The VM this node runs in; required for the restart-vm recovery rung.'),
    modelStores: z.array(arg()).default([]).describe('Model store paths on the node (Ollama models dir, HF cache).'),
    tools: z
      .strictObject({
        docker: binary('docker').describe('docker binary.'),
        nvidiaSmi: binary('nvidia-smi').describe('nvidia-smi binary.'),
        dmesg: binary('dmesg').describe('dmesg binary (Xid events are read from the kernel log).'),
        systemctl: binary('systemctl').describe('systemctl binary (engines with runtime systemd).'),
        journalctl: binary('journalctl').describe('journalctl binary (logs of runtime systemd engines).'),
        systemdUnitDir: arg()
          .default('/etc/systemd/system')
          .describe("Where a canary slot writes a systemd engine's drop-in (<dir>/<unit>.d/gpuops-model.conf)."),
        processDir: arg()
          .default('/var/lib/gpuops/processes')
          .describe('State, specs and logs of runtime process engines (relative: from the config file).'),
      })
      .default({
        docker: 'docker',
        nvidiaSmi: 'nvidia-smi',
        dmesg: 'dmesg',
        systemctl: 'systemctl',
        journalctl: 'journalctl',
        systemdUnitDir: '/etc/systemd/system',
        processDir: '/var/lib/gpuops/processes',
      })
      .describe('Paths of the host tools the node worker runs.'),
    sandbox: z
      .boolean()
      .default(false)
      .describe('Simulate this node (shims, engine and Proxmox API) instead of driving real hardware.'),
  })
  .describe('A GPU inference node.');

export const HypervisorSchema = z
  .discriminatedUnion('type', [
    z.strictObject({
      id,
      type: z.literal('proxmox-api').describe('The control worker calls the Proxmox VE API.'),
      url: httpUrl.describe('Proxmox API base, e.g. https://pve1.lan:8006.'),
      pveNode: z.string().min(1).describe('Proxmox node name that owns the VMs (as in /nodes/<name>/qemu).'),
      tokenId: z
        .string()
        .regex(/^[^@\s]+@[^!\s]+![^\s]+$/, { message: 'must be USER@REALM!TOKENID' })
        .describe('API token id, USER@REALM!TOKENID.'),
      tokenSecretFile: filePath.describe('File holding the API token secret (UUID). Read inside activities only.'),
      caFile: filePath.optional().describe('CA bundle for the Proxmox TLS certificate.'),
      insecureSkipVerify: z
        .boolean()
        .default(false)
        .describe('Accept a self-signed Proxmox certificate (not recommended).'),
    }),
    z.strictObject({
      id,
      type: z.literal('qm').describe('A gpuops hypervisor worker on the Proxmox host runs qm.'),
      qm: binary('qm').describe('qm binary on the host.'),
    }),
  ])
  .describe('A Proxmox host.');

/** A key id: visible in every encrypted payload's metadata (encryption-key-id), so never a secret. */
const keyId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, { message: 'must be 1-64 letters, digits, ".", "_" or "-"' });

export const EncryptionSchema = z
  .strictObject({
    keys: z
      .array(
        z.strictObject({
          id: keyId.describe('Key id, stored in clear in each payload it encrypts (metadata encryption-key-id).'),
          file: filePath.describe(
            'File holding the AES-256 key: 32 random bytes, base64 (`openssl rand -base64 32`); relative to this file. Read by each process, never logged.',
          ),
        }),
      )
      .min(1, { message: 'must list at least one key' })
      .describe('Every key that may decode; keep a retired key here until no history needs it.'),
    encryptWith: keyId.describe('Id of the key new payloads are encrypted with (one of keys).'),
    codecServer: z
      .strictObject({
        listen: z
          .string()
          .regex(/^[^:\s]+:\d+$/, { message: 'must be host:port' })
          .default('127.0.0.1:8888')
          .describe('Where `gpuops codec-server` (and `gpuops up`) serves /encode and /decode.'),
        corsOrigins: z
          .array(httpUrl.refine((u) => new URL(u).origin === u, { message: 'must be an origin (scheme://host:port)' }))
          .default(['http://localhost:8233'])
          .describe('Web UI origins allowed to call it from a browser (exact scheme://host:port).'),
        tokenFile: filePath.describe('File holding the bearer token callers must present; relative to this file.'),
      })
      .optional()
      .describe('The codec server for the Temporal UI and CLI; `gpuops up` starts it when set.'),
  })
  .superRefine((e, ctx) => {
    const seen = new Set<string>();
    e.keys.forEach((k, i) => {
      if (seen.has(k.id))
        ctx.addIssue({ code: 'custom', path: ['keys', i, 'id'], message: `duplicate key id "${k.id}"` });
      seen.add(k.id);
    });
    if (!seen.has(e.encryptWith))
      ctx.addIssue({
        code: 'custom',
        path: ['encryptWith'],
        message: `must be the id of one of keys (${[...seen].join(', ')}); got "${e.encryptWith}"`,
      });
  })
  .describe(
    'Payload encryption (AES-256-GCM) of every workflow input, result, signal, update, query, memo and failure message gpuops stores in Temporal. Search attributes stay plaintext.',
  );

export const TemporalSchema = z
  .strictObject({
    address: z
      .string()
      .optional()
      .describe('host:port of a Temporal frontend; TEMPORAL_ADDRESS overrides. Unset: embedded dev server.'),
    namespace: z.string().default('default').describe('Temporal namespace; TEMPORAL_NAMESPACE overrides.'),
    tls: z
      .strictObject({
        certFile: filePath.optional().describe('Client certificate (mTLS).'),
        keyFile: filePath.optional().describe('Client private key (mTLS).'),
        caFile: filePath.optional().describe('Server CA bundle.'),
        serverName: z.string().optional().describe('TLS server name override.'),
      })
      .optional(),
    apiKeyEnv: envName.optional().describe('Env var holding a Temporal Cloud API key.'),
    apiKeyFile: filePath.optional().describe('File holding a Temporal Cloud API key.'),
    encryption: EncryptionSchema.optional(),
    dev: z
      .strictObject({
        port: z.int().min(1).max(65535).default(7233).describe('Embedded dev server frontend port.'),
        uiPort: z.int().min(1).max(65535).default(8233).describe('Embedded dev server Web UI port.'),
        dbFile: z
          .string()
          .default('.gpuops/temporal.db')
          .describe('SQLite file of the embedded dev server (history survives restarts).'),
      })
      .default({ port: 7233, uiPort: 8233, dbFile: '.gpuops/temporal.db' }),
  })
  .default({ namespace: 'default', dev: { port: 7233, uiPort: 8233, dbFile: '.gpuops/temporal.db' } });

export const RouterSchema = z
  .strictObject({
    listen: z
      .string()
      .regex(/^[^:\s]+:\d+$/, { message: 'must be host:port' })
      .default('127.0.0.1:8080')
      .describe('Address the router listens on.'),
    adminTokenFile: filePath.optional().describe('File holding the admin API bearer token.'),
    stateFile: z.string().default('.gpuops/routes.json').describe('Route table persisted across restarts.'),
    autoDrain: z
      .strictObject({
        refusals: z
          .int()
          .min(1)
          .max(1000)
          .default(3)
          .describe('Consecutive refused connections before an engine counts as refusing.'),
        after: duration
          .default('5s')
          .describe("How long an engine's refusals must last before they count (a restart blip does not)."),
        recheck: duration
          .default('30s')
          .describe(
            'Fallback when no watcher releases a drain: the router itself tries a TCP connect to an auto-drained ' +
              'engine this long after the drain, and again as often; one that accepts is released. 0s: never.',
          ),
      })
      .default({ refusals: 3, after: '5s', recheck: '30s' })
      .describe(
        "The router drains a node by itself when every routed engine of it refuses connections; the node's " +
          'watcher releases it when it sees the node healthy again.',
      ),
  })
  .default({
    listen: '127.0.0.1:8080',
    stateFile: '.gpuops/routes.json',
    autoDrain: { refusals: 3, after: '5s', recheck: '30s' },
  });

export const HooksSchema = z
  .strictObject({
    listen: z
      .string()
      .regex(/^[^:\s]+:\d+$/, { message: 'must be host:port' })
      .default('127.0.0.1:9095')
      .describe('Address `gpuops hooks` listens on (POST /hooks/alertmanager, GET /healthz).'),
    tokenFile: filePath
      .optional()
      .describe('File holding the bearer token Alertmanager sends (http_config.authorization.credentials_file).'),
    hmacSecretFile: filePath
      .optional()
      .describe('File holding the secret for X-Gpuops-Signature: sha256=<hex HMAC-SHA256 of the raw body>.'),
    stateFile: z
      .string()
      .default('.gpuops/hooks-seen.json')
      .describe('Alert keys (fingerprint@startsAt) already acted on: a redelivery or a restart starts nothing.'),
    dedupeTtl: duration.default('24h').describe('How long an alert key is remembered after it started a recovery.'),
    nodeLabel: z
      .string()
      .regex(/^[a-zA-Z_][a-zA-Z0-9_]*$/, { message: 'must be a Prometheus label name' })
      .default('gpuops_node')
      .describe('Alert label that names the node; without it the "node" label, then the host part of "instance".'),
  })
  // A receiver that starts recoveries (VM restarts included) must never be open to anyone who can reach its port.
  .refine((h) => h.tokenFile !== undefined || h.hmacSecretFile !== undefined, {
    message: 'must set tokenFile or hmacSecretFile (or both): the webhook receiver never runs unauthenticated',
    path: ['tokenFile'],
  })
  .describe('The Alertmanager webhook receiver (`gpuops hooks`), which turns firing alerts into recoverNode runs.');

/** A golden or safety set kept in a file beside gpuops.yaml, loaded and validated with the config. */
const setFile = (what: string) =>
  filePath
    .optional()
    .describe(`${what} from a YAML or JSON file (a list), relative to this file; instead of the inline list.`);

/** Exactly one of the inline list and its file. */
function oneSetSource(
  p: { golden?: unknown; goldenFile?: string; safety?: unknown; safetyFile?: string },
  ctx: z.RefinementCtx,
): void {
  for (const key of ['golden', 'safety'] as const) {
    if (p[key] !== undefined && p[`${key}File`] !== undefined) {
      ctx.addIssue({ code: 'custom', path: [`${key}File`], message: `must not be set together with ${key}` });
    }
  }
}

const PolicyFields = DeployPolicySchema.omit({ sources: true }).extend({
  goldenFile: setFile('Golden prompts'),
  safetyFile: setFile('Safety probes'),
});

export const PolicySchema = PolicyFields.superRefine(oneSetSource);

/**
 * Per router alias: which policy its deployments take and its own golden set, safety set and risk rules over it.
 * Precedence: the deployment input (`--policy`, a started workflow's policy) > the alias > the named policy > defaults.
 */
export const AliasSchema = PolicyFields.pick({
  golden: true,
  goldenFile: true,
  safety: true,
  safetyFile: true,
  risk: true,
})
  .extend({
    policy: id
      .optional()
      .describe('Policy (in policies) deployments to this alias take when --policy names none; else "default".'),
  })
  .superRefine(oneSetSource)
  .describe('Deployment settings of one router alias.');

export const RecoverySchema = z
  .strictObject({
    probeInterval: duration.default('5s').describe('Time between health probes.'),
    failureThreshold: z.int().min(1).default(3).describe('Consecutive failed probes before recovery starts.'),
    maxRecoveriesPerHour: z.int().min(0).default(3).describe('Recoveries per node per hour; beyond it, escalate only.'),
    verifyTimeout: duration.default('120s').describe('How long to wait for health after each rung.'),
    generateTimeout: GenerateTimeoutSchema.optional().describe(
      "How long each engine's 2-token test generation may take before the engine counts as hung for that probe " +
        '(at least 50ms). Default: the probe timeout less 2 s (13 s); a shorter one reads a busy engine as hung.',
    ),
    blindAlertAfter: z
      .int()
      .min(0)
      .default(12)
      .describe(
        'Blind probe rounds in a row (a probe failed and nothing actionable was seen) after which the notifiers ' +
          'get a warning, once per streak, and an all-clear when probes answer again; 0: never.',
      ),
  })
  .default({
    probeInterval: '5s',
    failureThreshold: 3,
    maxRecoveriesPerHour: 3,
    verifyTimeout: '120s',
    blindAlertAfter: 12,
  });

const retention = z.strictObject({
  keepLast: z.int().min(0).optional(),
  keepHourly: z.int().min(0).optional(),
  keepDaily: z.int().min(0).optional(),
  keepWeekly: z.int().min(0).optional(),
  keepMonthly: z.int().min(0).optional(),
  keepYearly: z.int().min(0).optional(),
});

export const BackupPlanSchema = z
  .strictObject({
    id: id.describe('Plan id; its Temporal Schedule is backup:<id>.'),
    node: id.describe('Node whose worker runs the backup.'),
    what: z.enum(['model-store', 'vm-config', 'gpu-config', 'gpuops-config']).describe('What the plan backs up.'),
    paths: z.array(arg()).default([]).describe('Paths for model-store plans.'),
    repository: arg().describe('restic repository: a path, sftp:, s3: or rest: URL.'),
    passwordFile: arg('must be a file path').describe('File holding the restic repository password.'),
    schedule: z
      .strictObject({
        cron: z
          .string()
          .superRefine((expr, ctx) => {
            for (const message of cronProblems(expr)) ctx.addIssue({ code: 'custom', message });
          })
          .optional()
          .describe(
            'Cron expression in `timezone`: five fields (minute hour day-of-month month day-of-week), e.g. ' +
              '"0 3 * * *" for 03:00 daily, or @hourly, @daily, @weekly, @monthly, @yearly. Not accepted: seconds or ' +
              'year fields, day-of-month together with day-of-week, L, W, ?, # (Temporal reads them differently).',
          ),
        every: duration.optional().describe('Interval, instead of cron.'),
        timezone: z.string().default('UTC'),
        jitter: duration.optional(),
        catchupWindow: duration
          .default('1h')
          .describe('How late a missed run (server or worker down) may still start; older ones are skipped.'),
        pauseOnFailure: z
          .boolean()
          .default(false)
          .describe('Pause the schedule when a run fails, until an operator resumes it.'),
      })
      .refine((s) => (s.cron === undefined) !== (s.every === undefined), {
        message: 'must set exactly one of cron or every',
      }),
    retention: retention.default({}),
    rpo: duration.describe('Recovery point objective: the newest good backup must be younger than this.'),
    rto: duration.optional().describe('Recovery time objective for restores.'),
    minFree: ByteSizeSchema.optional().describe(
      'Local repositories: refuse the backup (failed at precheck) when the repository filesystem has less free ' +
        'space than this, e.g. 20GiB. Not checked for remote repositories.',
    ),
    verify: z
      .strictObject({
        readDataSubset: ReadDataSubsetSchema.default('5%').describe('restic check --read-data-subset value.'),
        testRestore: z.boolean().default(false),
      })
      .default({ readDataSubset: '5%', testRestore: false }),
  })
  .describe('A backup plan.');

export const NotifierSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('webhook'), name: id, urlFile: filePath.describe('File holding the webhook URL.') }),
  z.strictObject({
    type: z.literal('slack'),
    name: id,
    urlFile: filePath.describe('File holding the Slack incoming-webhook URL.'),
  }),
  z.strictObject({
    type: z.literal('discord'),
    name: id,
    urlFile: filePath.describe('File holding the Discord webhook URL.'),
  }),
]);

/**
 * Canary slot pairs of one node: each `canarySlot` names another engine of the same type (vllm or llamacpp) with a
 * container of its own; pairs are disjoint (an engine belongs to at most one); neither half sets probeModel.
 */
function checkCanarySlots(
  n: z.infer<typeof NodeSchema>,
  i: number,
  issue: (path: (string | number)[], message: string) => void,
): void {
  const byName = new Map(n.engines.map((e) => [e.name, e]));
  const pairedWith = new Map<string, string>();
  n.engines.forEach((e, j) => {
    if (e.canarySlot === undefined || !isId(e.canarySlot)) return;
    const path = ['nodes', i, 'engines', j, 'canarySlot'];
    if (e.type === 'ollama') {
      issue(path, 'Ollama canaries are a second tag on the same engine: canarySlot is for vllm and llamacpp engines');
      return;
    }
    const slot = byName.get(e.canarySlot);
    if (!slot || slot.name === e.name || slot.type !== e.type) {
      issue(path, `must name another ${e.type} engine on node ${n.id} (got "${e.canarySlot}")`);
      return;
    }
    if (slot.container === e.container && isContainerName(e)) {
      issue(path, `must name an engine with a container of its own ("${slot.name}" also runs in "${e.container}")`);
      return;
    }
    for (const [a, b] of [
      [e.name, slot.name],
      [slot.name, e.name],
    ] as const) {
      const other = pairedWith.get(a);
      if (other !== undefined && other !== b) {
        issue(path, `"${a}" is already paired with "${other}": an engine belongs to at most one slot pair`);
        return;
      }
    }
    pairedWith.set(e.name, slot.name);
    pairedWith.set(slot.name, e.name);
  });
  n.engines.forEach((e, j) => {
    if (pairedWith.has(e.name) && e.probeModel !== undefined) {
      issue(
        ['nodes', i, 'engines', j, 'probeModel'],
        'must be unset on an engine of a canary slot pair: its model changes with each deployment',
      );
    }
  });
}

export const ConfigSchema = z
  .strictObject({
    temporal: TemporalSchema,
    nodes: z
      .array(NodeSchema)
      .min(1, { message: 'must list at least one node' })
      .describe('GPU nodes gpuops operates.'),
    hypervisors: z.array(HypervisorSchema).default([]).describe('Proxmox hosts.'),
    router: RouterSchema,
    hooks: HooksSchema.optional(),
    policies: z
      .record(id, PolicySchema)
      .default({})
      .describe('Deployment policies by name; "default" is used when none is named.'),
    aliases: z
      .record(
        z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/, { message: 'must be a router alias name' }),
        AliasSchema,
      )
      .default({})
      .describe("Per router alias: its policy and its own golden / safety sets and risk rules over the policy's."),
    recovery: RecoverySchema,
    reportsDir: z
      .string()
      .min(1)
      .default('gpuops-reports')
      .describe('Where deployModel writes its risk reports (JSON + Markdown), relative to this file.'),
    backups: z.array(BackupPlanSchema).default([]).describe('Backup plans; each becomes a Temporal Schedule.'),
    notifications: z.array(NotifierSchema).default([]).describe('Where escalations and failures are sent.'),
    metrics: z
      .strictObject({
        control: SocketAddressSchema.optional().describe('Where the control worker serves /metrics.'),
        node: SocketAddressSchema.optional().describe(
          'Where each node worker serves /metrics, on its node (one node worker per host; a second one on the same host takes --metrics-listen).',
        ),
        hypervisor: SocketAddressSchema.optional().describe('Where each hypervisor worker serves /metrics.'),
      })
      .default({})
      .describe(
        "Prometheus /metrics of the worker processes (the Temporal SDK's metrics and gpuops's), per worker kind; a worker's --metrics-listen <ip:port|off> overrides. Off when unset.",
      ),
    sandbox: z
      .strictObject({
        stateDir: z.string().default('.gpuops/sandbox').describe('Where the simulated nodes keep their state.'),
        proxmoxPort: z.int().min(1).max(65535).default(18006).describe('Port of the simulated Proxmox API.'),
        bootSeconds: z.number().min(0).default(8).describe('How long a simulated VM reboot keeps the node down.'),
      })
      .default({ stateDir: '.gpuops/sandbox', proxmoxPort: 18006, bootSeconds: 8 }),
  })
  .superRefine((cfg, ctx) => {
    const dup = <T>(
      items: T[],
      key: (t: T) => string,
      path: (i: number) => (string | number)[],
      what: string,
    ): void => {
      const seen = new Set<string>();
      items.forEach((it, i) => {
        const k = key(it);
        if (seen.has(k) && isId(k))
          ctx.addIssue({ code: 'custom', path: path(i), message: `duplicate ${what} "${k}"` });
        seen.add(k);
      });
    };
    dup(
      cfg.nodes,
      (n) => n.id,
      (i) => ['nodes', i, 'id'],
      'node id',
    );
    dup(
      cfg.hypervisors,
      (h) => h.id,
      (i) => ['hypervisors', i, 'id'],
      'hypervisor id',
    );
    dup(
      cfg.backups,
      (b) => b.id,
      (i) => ['backups', i, 'id'],
      'backup plan id',
    );
    for (const [alias, a] of Object.entries(cfg.aliases)) {
      if (a.policy !== undefined && isId(a.policy) && !cfg.policies[a.policy]) {
        ctx.addIssue({
          code: 'custom',
          path: ['aliases', alias, 'policy'],
          message: `must name a policy in policies (${Object.keys(cfg.policies).join(', ') || 'none defined'}; got "${a.policy}")`,
        });
      }
    }
    const hv = new Set(cfg.hypervisors.map((h) => h.id));
    const nodes = new Set(cfg.nodes.map((n) => n.id));
    cfg.nodes.forEach((n, i) => {
      dup(
        n.engines,
        (e) => e.name,
        (j) => ['nodes', i, 'engines', j, 'name'],
        'engine name',
      );
      // Lifecycle calls find an engine's runtime by its container name: one name, one runtime.
      n.engines.forEach((e, j) => {
        const other = n.engines.find((x, k) => k < j && x.container === e.container && x.runtime !== e.runtime);
        if (other && isContainerName(other)) {
          ctx.addIssue({
            code: 'custom',
            path: ['nodes', i, 'engines', j, 'container'],
            message: `"${e.container}" already runs ${other.name} under ${other.runtime}: one name cannot be a ${e.runtime} engine too`,
          });
        }
      });
      if (n.vm && isId(n.vm.hypervisor) && !hv.has(n.vm.hypervisor)) {
        ctx.addIssue({
          code: 'custom',
          path: ['nodes', i, 'vm', 'hypervisor'],
          message: `must name a hypervisor in hypervisors[] (got "${n.vm.hypervisor}")`,
        });
      }
      const gpuIdx = new Set(n.gpus.map((g) => g.index));
      n.engines.forEach((e, j) => {
        const at = (...rest: (string | number)[]): (string | number)[] => ['nodes', i, 'engines', j, ...rest];
        if (e.runtime === 'process' && !e.process) {
          ctx.addIssue({
            code: 'custom',
            path: at('process'),
            message: 'must say how to run the engine (runtime is process)',
          });
        }
        if (e.runtime !== 'process' && e.process) {
          ctx.addIssue({
            code: 'custom',
            path: at('process'),
            message: `is only for runtime process (runtime is ${e.runtime})`,
          });
        }
        if (e.real && !n.sandbox) {
          ctx.addIssue({ code: 'custom', path: at('real'), message: 'is only for sandbox nodes (sandbox: true)' });
        }
        if (e.real && e.runtime === 'systemd') {
          ctx.addIssue({
            code: 'custom',
            path: at('real'),
            message: 'real sandbox engines run under docker or process',
          });
        }
        if (e.real && e.runtime === 'docker' && !path.isAbsolute(n.tools.docker)) {
          ctx.addIssue({
            code: 'custom',
            path: ['nodes', i, 'tools', 'docker'],
            message: 'must be the absolute path of the real docker CLI on a sandbox node with real docker engines',
          });
        }
        if (!e.real && e.runtime === 'docker' && n.sandbox && n.engines.some((x) => x.real && x.runtime === 'docker')) {
          ctx.addIssue({
            code: 'custom',
            path: at('real'),
            message: 'must be set: on a sandbox node either every docker engine is real or none is (one docker CLI)',
          });
        }
        if (e.real && e.runtime === 'docker' && !e.real.image) {
          ctx.addIssue({
            code: 'custom',
            path: at('real', 'image'),
            message: 'must name the image (runtime is docker)',
          });
        }
        // The container field names what the runtime knows the engine by, by that runtime's own naming rules.
        for (const issue of CONTAINER_NAME[e.runtime].safeParse(e.container).error?.issues ?? []) {
          ctx.addIssue({
            code: 'custom',
            path: at('container'),
            message: `${issue.message} (runtime is ${e.runtime})`,
          });
        }
        if (e.cpuOnly && e.gpus.length > 0) {
          ctx.addIssue({ code: 'custom', path: at('gpus'), message: 'must be empty for a cpuOnly engine' });
        }
        e.gpus.forEach((g, k) => {
          if (n.gpus.length > 0 && !gpuIdx.has(g)) {
            ctx.addIssue({
              code: 'custom',
              path: ['nodes', i, 'engines', j, 'gpus', k],
              message: `must be the index of a GPU in nodes[${i}].gpus (got ${g})`,
            });
          }
        });
      });
      checkCanarySlots(n, i, (path, message) => ctx.addIssue({ code: 'custom', path, message }));
    });
    cfg.backups.forEach((b, i) => {
      if (isId(b.node) && !nodes.has(b.node))
        ctx.addIssue({
          code: 'custom',
          path: ['backups', i, 'node'],
          message: `must name a node in nodes[] (got "${b.node}")`,
        });
      if (b.what === 'model-store' && b.paths.length === 0) {
        ctx.addIssue({
          code: 'custom',
          path: ['backups', i, 'paths'],
          message: 'must list at least one path for a model-store plan',
        });
      }
    });
  });

export type Config = z.infer<typeof ConfigSchema>;
export type NodeConfig = z.infer<typeof NodeSchema>;
export type EngineConfig = z.infer<typeof EngineSchema>;
export type HypervisorConfig = z.infer<typeof HypervisorSchema>;
export type PolicyConfig = z.infer<typeof PolicySchema>;
export type AliasConfig = z.infer<typeof AliasSchema>;
export type BackupPlanConfig = z.infer<typeof BackupPlanSchema>;
export type HooksConfig = z.infer<typeof HooksSchema>;

/**
 * The other half of an engine's canary slot pair (declared on either side), or undefined when the engine has none.
 * Assumes a validated config (pairs are disjoint).
 */
export function slotPartnerOf(node: Pick<NodeConfig, 'engines'>, engine: string): EngineConfig | undefined {
  const self = node.engines.find((e) => e.name === engine);
  if (!self || self.type === 'ollama') return undefined;
  const partner =
    self.canarySlot !== undefined
      ? node.engines.find((e) => e.name === self.canarySlot)
      : node.engines.find((e) => e.canarySlot === engine);
  return partner && partner.name !== engine && partner.type === self.type ? partner : undefined;
}
