/**
 * Control-side activities that talk to the inference router's admin API (bearer token from router.adminTokenFile,
 * read here and never logged). Escalation drains a sick node's engines, so aliases served elsewhere fail over.
 */
import { readFile } from 'node:fs/promises';
import type { Config } from '../src/config/schema';

export interface RouterActivityDeps {
  config: Config;
  resolvePath?: (p: string) => string;
  timeoutMs?: number;
}

export interface DrainResult {
  /** Engine URLs the router now has drained. */
  drained: string[];
  /** Why nothing (or not everything) was drained, for the incident record. */
  note: string | null;
}

export function createRouterActivities({ config, resolvePath = (p) => p, timeoutMs = 10_000 }: RouterActivityDeps) {
  async function setDrained(engines: string[], drain: boolean): Promise<DrainResult> {
    const base = `http://${config.router.listen.replace(/^0\.0\.0\.0:/, '127.0.0.1:')}`;
    if (!config.router.adminTokenFile) {
      return { drained: [], note: 'router admin API not configured (router.adminTokenFile): router left as is' };
    }
    const token = (await readFile(resolvePath(config.router.adminTokenFile), 'utf8')).trim();
    const done: string[] = [];
    const failed: string[] = [];
    for (const engine of engines) {
      try {
        const res = await fetch(`${base}/admin/${drain ? 'drain' : 'undrain'}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ engine }),
          signal: AbortSignal.timeout(timeoutMs),
        });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        done.push(engine);
      } catch (err) {
        failed.push(`${engine}: ${(err as Error).message}`);
      }
    }
    return { drained: done, note: failed.length ? `router ${base} refused: ${failed.join('; ')}` : null };
  }

  return {
    /** Take a node's engines out of the router (idempotent: draining a drained engine changes nothing). */
    async drainEngines(input: { node: string; engines: string[]; reason: string }): Promise<DrainResult> {
      return setDrained(input.engines, true);
    },
    /** Put a recovered node's engines back into the router. */
    async undrainEngines(input: { node: string; engines: string[] }): Promise<DrainResult> {
      return setDrained(input.engines, false);
    },
  };
}
