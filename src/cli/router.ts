/**
 * `gpuops router`: run the inference router from gpuops.yaml (router.listen, router.stateFile,
 * router.adminTokenFile) until SIGINT/SIGTERM.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { loadConfig, resolveFrom } from '../config/load';
import { ValidationError } from '../domain/validation';
import type { RouteTableInput } from '../router/routes';
import { autoDrainFromConfig } from '../router/failover';
import { startRouter } from '../router/server';
import { parseOptions, type GlobalOptions, type Program } from './context';
import { emit } from './output';

const RouterArgs = z.strictObject({
  listen: z
    .string()
    .regex(/^[^:\s]+:\d+$/, { message: 'must be host:port' })
    .optional(),
  routes: z.string().min(1).optional(),
  headersTimeout: z.coerce.number().int().positive().optional(),
  bodyTimeout: z.coerce.number().int().positive().optional(),
});

/** Register `gpuops router` on the program. */
export function registerRouterCommand(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  program
    .command('router')
    .description('run the inference router (OpenAI/Ollama endpoint, admin API, /metrics) from gpuops.yaml')
    .option('--listen <host:port>', 'override router.listen')
    .option('--routes <file>', 'JSON route table to start with when router.stateFile does not exist yet')
    .option('--headers-timeout <ms>', "longest wait for an engine's first byte (default 300000)")
    .option('--body-timeout <ms>', 'longest silence inside a stream (default 60000)')
    .action(async (opts) => {
      const args = parseOptions(RouterArgs, opts);
      const loaded = loadConfig(globals().config);
      const cfg = loaded.config.router;
      const [host, port] = (args.listen ?? cfg.listen).split(':') as [string, string];
      // startRouter validates it like PUT /admin/routes (zod, field-named errors).
      let initialRoutes: unknown;
      if (args.routes) {
        try {
          initialRoutes = JSON.parse(readFileSync(args.routes, 'utf8'));
        } catch (err) {
          throw new ValidationError('arguments', [
            `routes: cannot read JSON from ${args.routes}: ${(err as Error).message}`,
          ]);
        }
      }
      const router = await startRouter({
        host,
        port: Number(port),
        stateFile: resolveFrom(loaded.path, cfg.stateFile),
        ...(cfg.adminTokenFile ? { adminTokenFile: resolveFrom(loaded.path, cfg.adminTokenFile) } : {}),
        ...(initialRoutes !== undefined ? { initialRoutes: initialRoutes as RouteTableInput } : {}),
        ...(args.headersTimeout ? { headersTimeoutMs: args.headersTimeout } : {}),
        ...(args.bodyTimeout ? { bodyTimeoutMs: args.bodyTimeout } : {}),
        ...autoDrainFromConfig(loaded.config),
        log: (line) => console.log(`${new Date().toISOString()} ${line}`),
      });
      const snap = router.table.current;
      await emit(
        globals(),
        { url: router.url, adminUrl: router.adminUrl, routesVersion: snap.version },
        (r) =>
          `gpuops router listening on ${r.url} (admin ${r.adminUrl}, metrics ${r.url}/metrics)\n` +
          `routes version ${r.routesVersion}: ${Object.keys(snap.routes).join(', ') || 'no aliases yet'}` +
          (cfg.adminTokenFile ? '' : '; admin API disabled (router.adminTokenFile not set)'),
      );
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          resolve();
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
      await router.close();
    });
}
