/**
 * The gpuops command. Every subcommand validates its input (zod) and exits 2 on bad input with field-named
 * errors, 1 on a runtime failure, without stack traces.
 */
import { writeFileSync } from 'node:fs';
import { Command } from 'commander';
import { loadConfig } from '../config/load';
import { configJsonSchema } from '../config/json-schema';
import { ValidationError } from '../domain/validation';
import { withClient, type GlobalOptions } from './context';
import { printJson } from './output';
import { statusCommand } from './status';
import { registerHooksCommand } from './hooks';
import { registerSandboxCommands } from './sandbox';
import { registerBackupCommands } from './backup';
import { registerRouterCommand } from './router';
import { registerRecoveryCommands } from './recovery';
import { registerDeployCommands } from './deploy';
import { upCommand } from './up';
import { writeRealEnginesConfig } from '../sandbox/real-config';

export function buildProgram(): Command {
  const program = new Command('gpuops')
    .description('Durable day-2 operations for self-hosted GPU inference nodes, on Temporal')
    .option('-c, --config <file>', 'gpuops.yaml (default: $GPUOPS_CONFIG, ./gpuops.yaml, examples/sandbox.yaml)')
    .option('--json', 'machine-readable output')
    .showHelpAfterError();
  const globals = (): GlobalOptions => program.opts<GlobalOptions>();

  program
    .command('up')
    .description('run gpuops: embedded Temporal dev server (unless TEMPORAL_ADDRESS), workers, sandbox nodes')
    .option('--local-node-workers', 'also run node/hypervisor workers here for non-sandbox nodes (single-box setups)')
    .option('--no-sandbox', 'do not start simulated nodes')
    .option(
      '--real-engines',
      'add sandbox-3, whose llama-server and Ollama are real (built by `npm run engines`), to the sandbox config',
    )
    .action(async (opts: { localNodeWorkers?: boolean; sandbox: boolean; realEngines?: boolean }) => {
      const g = globals();
      if (opts.realEngines && g.config) {
        throw new ValidationError('argument', ['--real-engines: uses the sandbox config; do not combine it with -c']);
      }
      const config = opts.realEngines ? writeRealEnginesConfig() : g.config;
      await upCommand({
        ...g,
        ...(config ? { config } : {}),
        localNodeWorkers: opts.localNodeWorkers ?? false,
        sandbox: opts.sandbox,
      });
    });

  program
    .command('status [node]')
    .description('probe nodes (inspectNode workflow) and print their health')
    .option('--no-generate', 'skip the test generation on each engine')
    .action(async (node: string | undefined, opts: { generate: boolean }) => {
      await withClient(globals(), async (client, loaded) => {
        await statusCommand(client, loaded.config, {
          json: globals().json ?? false,
          generate: opts.generate,
          ...(node ? { node } : {}),
        });
      });
    });

  const config = program.command('config').description('validate gpuops.yaml or export its JSON Schema');
  config
    .command('validate [file]')
    .description('validate a config file; exit 2 with field-named errors when it is invalid')
    .action((file: string | undefined) => {
      const loaded = loadConfig(file ?? globals().config);
      if (globals().json) printJson({ path: loaded.path, valid: true, nodes: loaded.config.nodes.map((n) => n.id) });
      else
        console.log(
          `${loaded.path}: valid (${loaded.config.nodes.length} node(s), ${loaded.config.hypervisors.length} hypervisor(s), ${loaded.config.backups.length} backup plan(s))`,
        );
    });
  config
    .command('schema')
    .description('print the JSON Schema of gpuops.yaml (for editors)')
    .option('--out <file>', 'write it to a file instead')
    .action((opts: { out?: string }) => {
      const text = `${JSON.stringify(configJsonSchema(), null, 2)}\n`;
      if (opts.out) writeFileSync(opts.out, text);
      else process.stdout.write(text);
    });

  registerSandboxCommands(program, globals);
  registerRecoveryCommands(program, globals);
  registerDeployCommands(program, globals);
  registerBackupCommands(program, globals);
  registerRouterCommand(program, globals);
  registerHooksCommand(program, globals);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof ValidationError) {
      console.error(`gpuops: ${err.message}`);
      return 2;
    }
    console.error(`gpuops: ${(err as Error).message ?? String(err)}`);
    if (process.env.GPUOPS_DEBUG) console.error(err);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv).then((code) => {
    process.exitCode = code;
  });
}
