/**
 * The runtimes of one node's engines: each engine's `container` is resolved to the runtime its config names, so
 * the node activities act on a container, a unit or a process through one interface.
 */
import type { EngineConfig, NodeConfig } from '../config/schema';
import type { ContainerState } from '../domain/health';
import { missingContainer } from './docker';
import type { EngineRuntime, EngineRuntimeKind } from './runtime';

/** Each engine's runtime, by the engine's container (unit, process) name. */
export class EngineRuntimes {
  private readonly byName = new Map<string, EngineRuntime>();

  constructor(
    readonly node: NodeConfig,
    runtimes: Partial<Record<EngineRuntimeKind, EngineRuntime>>,
  ) {
    for (const e of node.engines) {
      const rt = runtimes[e.runtime];
      if (rt) this.byName.set(e.container, rt);
    }
  }

  /** The runtime of an engine's container; throws for a name no engine of the node runs in. */
  of(container: string): EngineRuntime {
    const rt = this.byName.get(container);
    if (!rt) throw new Error(`no engine of node ${this.node.id} runs in "${container}"`);
    return rt;
  }

  /** The runtime of an engine. */
  forEngine(e: EngineConfig): EngineRuntime {
    return this.of(e.container);
  }

  /**
   * State of the named containers in the order asked, one inspect call per runtime (docker answers many names in
   * one `docker inspect`). Names no engine runs in come back missing.
   */
  async inspect(names: readonly string[], opts: { logSignals?: { tail?: number } | false } = {}) {
    const groups = new Map<EngineRuntime, string[]>();
    for (const n of names) {
      const rt = this.byName.get(n);
      if (rt) groups.set(rt, [...(groups.get(rt) ?? []), n]);
    }
    const found = new Map<string, ContainerState>();
    await Promise.all(
      [...groups].map(async ([rt, ns]) => {
        for (const s of await rt.inspect(ns, opts)) found.set(s.name, s);
      }),
    );
    return names.map((n) => found.get(n) ?? missingContainer(n));
  }
}
