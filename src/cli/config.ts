/**
 * `gpuops config validate|schema|policy`: check gpuops.yaml, export the JSON Schema editors validate it with, or
 * print the deployment policy an alias's deployments take (for a workflow started without gpuops, e.g. by CI).
 */
import { writeFileSync } from 'node:fs';
import { loadConfig } from '../config/load';
import { deployPolicyForArgs } from '../config/policy';
import { DeployModelInput } from '../contracts';
import { configJsonSchema } from '../config/json-schema';
import { workflowInput, type GlobalOptions, type Program } from './context';
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
  config
    .command('policy <alias>')
    .description(
      "print, as one line of JSON, the policy gpuops deploy sends for an alias (the alias's over its named policy)",
    )
    .option('--policy <name>', 'a policy of gpuops.yaml instead of the alias’s own')
    // Always JSON: it is the deployModel input's `policy`, e.g. POLICY for deploy/ci/deploy-and-promote.sh.
    .action((alias: string, opts: { policy?: string }) => {
      const loaded = loadConfig(globals().config);
      const policy = deployPolicyForArgs(loaded.config, alias, opts.policy) ?? {};
      // Checked as the workflow will check it: what this prints is always a valid input.
      const input = { node: 'n', alias, engine: 'e', model: 'm', policy };
      workflowInput(DeployModelInput, input, 'deployModel');
      process.stdout.write(`${JSON.stringify(policy)}\n`);
    });
}
