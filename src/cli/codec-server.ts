/** `gpuops codec-server`: serve the payload codec to the Temporal UI and CLI until SIGINT/SIGTERM. */
import { z } from 'zod';
import { loadConfig } from '../config/load';
import { startConfiguredCodecServer } from '../temporal/codec-server';
import { parseOptions, type GlobalOptions, type Program } from './context';
import { untilSignal } from './hooks';
import { emit } from './output';

const origin = z
  .string()
  .refine((s) => URL.canParse(s) && /^https?:$/.test(new URL(s).protocol) && new URL(s).origin === s, {
    message: 'must be an origin, scheme://host[:port] (e.g. http://localhost:8233)',
  });
const CodecServerArgs = z.strictObject({
  listen: z
    .string()
    .regex(/^[^:\s]+:\d+$/, { message: 'must be host:port' })
    .optional(),
  corsOrigin: z.array(origin).optional(),
  tokenFile: z.string().min(1).optional(),
});

export function registerCodecServerCommand(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  program
    .command('codec-server')
    .description('serve POST /encode and /decode (Temporal codec server protocol) for the Web UI and temporal CLI')
    .option('--listen <host:port>', 'listen address (default: temporal.encryption.codecServer.listen, 127.0.0.1:8888)')
    .option(
      '--cors-origin <origin...>',
      'Web UI origin(s) allowed to call it (default: codecServer.corsOrigins, http://localhost:8233)',
    )
    .option('--token-file <file>', 'file holding the bearer token callers must send (default: codecServer.tokenFile)')
    .action(async (opts) => {
      const args = parseOptions(CodecServerArgs, opts);
      const loaded = loadConfig(globals().config);
      const server = await startConfiguredCodecServer(
        loaded,
        { listen: args.listen, corsOrigins: args.corsOrigin, tokenFile: args.tokenFile },
        (line) => console.error(line),
      );
      await emit(
        globals(),
        { url: server.url, corsOrigins: server.corsOrigins },
        (r) =>
          `gpuops codec-server: listening on ${r.url} (UI origins: ${r.corsOrigins.join(', ')}; browsers log in at ${r.url}/login)`,
      );
      await untilSignal();
      await server.close();
    });
}
