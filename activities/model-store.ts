/**
 * Model store activities for one node: free space of the model directories (Ollama models dir, HF cache). They run
 * on the node's queue because the paths are the node's.
 */
import { statfs } from 'node:fs/promises';
import type { NodeConfig } from '../src/config/schema';
import type { DiskStatus } from '../src/domain/health';

/** What createModelStoreActivities needs. */
export interface ModelStoreActivityDeps {
  node: NodeConfig;
  /** Resolves a configured path (e.g. relative to the config file); default: as written. */
  resolvePath?: (p: string) => string;
}

/** Model store activities. */
export function createModelStoreActivities({ node, resolvePath = (p) => p }: ModelStoreActivityDeps) {
  return {
    /**
     * Total and free bytes of each configured model store that exists. A store that does not exist yet (nothing
     * pulled) is skipped rather than reported as full.
     */
    async checkDisks(): Promise<DiskStatus[]> {
      const out: DiskStatus[] = [];
      for (const store of node.modelStores) {
        const path = resolvePath(store);
        try {
          const s = await statfs(path);
          // bavail, not bfree: blocks reserved for root are not available to the engine.
          out.push({ path, totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize });
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
          throw err;
        }
      }
      return out;
    },
  };
}

/** The model store activity object. */
export type ModelStoreActivities = ReturnType<typeof createModelStoreActivities>;
