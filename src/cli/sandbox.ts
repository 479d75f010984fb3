/** `gpuops sandbox fault|clear|show`: drive the simulated node that `gpuops up` runs. */
import { existsSync } from 'node:fs';
import { z } from 'zod';
import { loadConfig, resolveFrom, type LoadedConfig } from '../config/load';
import { ValidationError } from '../domain/validation';
import {
  FAULT_DESCRIPTIONS,
  FAULT_KINDS,
  clearFaults,
  injectFault,
  listFaults,
  type SandboxFaultKind,
} from '../sandbox/faults';
import { REAL_FAULT_DESCRIPTIONS, RealEngines, type RealFaultKind } from '../sandbox/real-engines';
import { SandboxStore } from '../sandbox/state';
import { parseOptions, type GlobalOptions, type Program } from './context';
import { emit, table } from './output';

const FaultArgs = z.strictObject({
  // The simulated faults, then the real-engine-only one.
  kind: z.enum([...FAULT_KINDS, 'oom-kill'] as unknown as [
    SandboxFaultKind | 'oom-kill',
    ...(SandboxFaultKind | 'oom-kill')[],
  ]),
  engine: z.string().min(1).optional(),
  gpu: z.coerce.number().int().min(0).optional(),
});

/** The real engines of a sandbox node (their state is the real runtime's, not the simulated state file). */
function realEnginesOf(loaded: LoadedConfig, node: string): RealEngines | undefined {
  const n = loaded.config.nodes.find((x) => x.id === node && x.sandbox);
  if (!n) return undefined;
  return new RealEngines(n, {
    dockerBin: n.tools.docker,
    resolve: (p) => resolveFrom(loaded.path, p),
  });
}

const REAL_FAULTS = Object.keys(REAL_FAULT_DESCRIPTIONS) as RealFaultKind[];

function sandboxStore(loaded: LoadedConfig, node: string): SandboxStore {
  const n = loaded.config.nodes.find((x) => x.id === node);
  if (!n || !n.sandbox) {
    const sims = loaded.config.nodes.filter((x) => x.sandbox).map((x) => x.id);
    throw new ValidationError('argument', [
      `node: must be a sandbox node (${sims.join(', ') || 'none configured'}; got "${node}")`,
    ]);
  }
  const store = SandboxStore.forNode(resolveFrom(loaded.path, loaded.config.sandbox.stateDir), node);
  if (!existsSync(store.file))
    throw new Error(`sandbox node ${node} has no state yet (${store.file}): start gpuops first (npm start)`);
  return store;
}

/** Width of the kind column of `sandbox fault --help`: the longest kind. */
const KIND_WIDTH = Math.max(...[...FAULT_KINDS, ...REAL_FAULTS].map((k) => k.length));

export function registerSandboxCommands(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  const sandbox = program.command('sandbox').description('drive the simulated GPU node(s)');
  sandbox
    .command('fault <node> <kind>')
    .description(`inject a fault: ${[...FAULT_KINDS, 'oom-kill'].join(' | ')}`)
    .option('--engine <name>', 'engine to affect (engine-hang, container-exit, cuda-oom, oom-kill); default the first')
    .option('--gpu <index>', "GPU to affect (xid-79, ecc, gpu-recovery-*); default the engine's first GPU")
    .addHelpText(
      'after',
      `\nFault kinds:\n${FAULT_KINDS.map((k) => `  ${k.padEnd(KIND_WIDTH)} ${FAULT_DESCRIPTIONS[k]}`).join('\n')}` +
        `\n\nOn a real engine (engines[].real):\n${REAL_FAULTS.map((k) => `  ${k.padEnd(KIND_WIDTH)} ${REAL_FAULT_DESCRIPTIONS[k]}`).join('\n')}`,
    )
    .action(async (node, kind, opts) => {
      const args = parseOptions(FaultArgs, { kind, ...opts });
      const loaded = loadConfig(globals().config);
      // A real engine gets a real fault: frozen (docker pause / SIGSTOP) or killed (docker kill / SIGKILL).
      const real = realEnginesOf(loaded, node);
      if (real?.has(args.engine)) {
        if (!(REAL_FAULTS as string[]).includes(args.kind)) {
          throw new ValidationError('argument', [
            `kind: a real engine takes ${REAL_FAULTS.join(' or ')} (GPU faults go to the simulated GPUs; got "${args.kind}")`,
          ]);
        }
        const done = await real.inject(args.kind as RealFaultKind, args.engine);
        await emit(
          globals(),
          { kind: args.kind, node, engine: args.engine ?? null, real: true, action: done },
          (r) => `injected ${r.kind} on ${node} (real engine): ${r.action}`,
        );
        return;
      }
      const simulated = args.kind;
      if (simulated === 'oom-kill') {
        throw new ValidationError('argument', ['kind: oom-kill is a fault of a real docker engine (engines[].real)']);
      }
      const fault = injectFault(sandboxStore(loaded, node), simulated, {
        ...(args.engine ? { engine: args.engine } : {}),
        ...(args.gpu !== undefined ? { gpu: args.gpu } : {}),
      });
      await emit(globals(), fault, () => `injected ${simulated} on ${node}: ${FAULT_DESCRIPTIONS[simulated]}`);
    });
  sandbox
    .command('clear <node>')
    .description('clear every injected fault (as if an operator fixed the node by hand)')
    .action(async (node) => {
      const loaded = loadConfig(globals().config);
      const real = realEnginesOf(loaded, node);
      const thawed = (await real?.clearAll()) ?? [];
      const restored = (await real?.restoreDefinitions()) ?? [];
      const cleared = [
        ...clearFaults(sandboxStore(loaded, node)),
        ...thawed.map((engine) => ({ kind: 'engine-hang' as const, engine, real: true })),
        ...restored.map((engine) => ({ kind: 'oom-kill' as const, engine, real: true })),
      ];
      await emit(globals(), cleared, (c) =>
        c.length ? `cleared on ${node}: ${c.map((f) => f.kind).join(', ')}` : `no faults on ${node}`,
      );
    });
  sandbox
    .command('show <node>')
    .description('print the simulated node: VM, containers, GPUs, active faults')
    .action(async (node) => {
      const store = sandboxStore(loadConfig(globals().config), node);
      await emit(globals(), store.read(), (state) => {
        const faults = listFaults(store);
        return [
          `node ${state.node}: VM ${state.vm.vmid ?? '-'} ${state.vm.status} (${state.vm.phase})`,
          table(
            ['CONTAINER', 'STATUS', 'EXIT', 'RESTARTS'],
            Object.values(state.containers).map((c) => [c.name, c.status, c.exitCode, c.restartCount]),
          ),
          faults.length ? `faults: ${faults.map((f) => f.kind).join(', ')}` : 'faults: none',
        ].join('\n');
      });
    });
}
