/** `gpuops hooks`: run the Alertmanager webhook receiver until SIGINT/SIGTERM. */
import { z } from 'zod';
import { loadConfig } from '../config/load';
import { ValidationError } from '../domain/validation';
import { ALERTMANAGER_PATH, startHooksServer } from '../hooks/server';
import { parseOptions, withClient, type GlobalOptions, type Program } from './context';
import { emit } from './output';

const HooksArgs = z.strictObject({
  listen: z
    .string()
    .regex(/^[^:\s]+:\d+$/, { message: 'must be host:port' })
    .optional(),
});

/** Resolves on the first SIGINT or SIGTERM, and stops listening for both. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals): void => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

export function registerHooksCommand(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  program
    .command('hooks')
    .description(`run the Alertmanager webhook receiver (POST ${ALERTMANAGER_PATH}) that starts recoverNode runs`)
    .option('--listen <host:port>', 'listen address (default: hooks.listen, 127.0.0.1:9095)')
    .action(async (opts) => {
      const args = parseOptions(HooksArgs, opts);
      // Checked before connecting to Temporal: a receiver without its section has no credentials to demand.
      const checked = loadConfig(globals().config);
      if (!checked.config.hooks)
        throw new ValidationError(`config ${checked.path}`, [
          'hooks: is required to run `gpuops hooks` (set hooks.tokenFile and/or hooks.hmacSecretFile)',
        ]);
      await withClient(globals(), async (client, loaded) => {
        const hooks = loaded.config.hooks ?? checked.config.hooks;
        const server = await startHooksServer({
          loaded,
          client,
          ...(args.listen ? { listen: args.listen } : {}),
          log: (line) => console.error(line),
        });
        const auth = [hooks?.tokenFile && 'bearer', hooks?.hmacSecretFile && 'hmac'];
        await emit(
          globals(),
          { url: server.url, path: ALERTMANAGER_PATH },
          (r) => `gpuops hooks: listening on ${r.url}${r.path} (auth: ${auth.filter(Boolean).join(', ')})`,
        );
        await untilSignal();
        await server.close();
      });
    });
}
