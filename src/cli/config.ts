/** `gpuops config validate|schema`: check gpuops.yaml, or export the JSON Schema editors validate it with. */
import { writeFileSync } from 'node:fs';
import { loadConfig } from '../config/load';
import { configJsonSchema } from '../config/json-schema';
import type { GlobalOptions, Program } from './context';
import { emit } from './output';

export function registerConfigCommands(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  const config = program.command('config').description('validate gpuops.yaml or export its JSON Schema');
  config
    .command('validate [file]')
    .description('validate a config file; exit 2 with field-named errors when it is invalid')
    .action(async (file) => {
      const loaded = loadConfig(file ?? globals().config);
      const c = loaded.config;
      await emit(
        globals(),
        { path: loaded.path, valid: true, nodes: c.nodes.map((n) => n.id) },
        (r) =>
          `${r.path}: valid (${c.nodes.length} node(s), ${c.hypervisors.length} hypervisor(s), ${c.backups.length} backup plan(s))`,
      );
    });
  config
    .command('schema')
    .description('print the JSON Schema of gpuops.yaml (for editors)')
    .option('--out <file>', 'write it to a file instead')
    // The schema is JSON whether or not --json is given.
    .action((opts) => {
      const text = `${JSON.stringify(configJsonSchema(), null, 2)}\n`;
      if (opts.out) writeFileSync(opts.out, text);
      else process.stdout.write(text);
    });
}
