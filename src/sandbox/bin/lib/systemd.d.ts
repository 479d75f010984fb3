/** Types of the sandbox's systemd helpers (systemd.js), for the TypeScript side and tests. */
import type { ContainerSim, EngineSim, SandboxState } from '../../state';

/** One ExecStart= command as systemd loads it. */
export interface UnitExec {
  path: string;
  argv: string[];
  ignoreErrors: boolean;
}

/** A record that is a unit, and its unit name. */
export interface SandboxUnit {
  c: ContainerSim;
  engine: EngineSim;
  id: string;
}

export declare const TIMEOUT_STOP_SEC: number;
export declare function unitName(name: string): string;
/** The sandbox's /etc/systemd/system for a node's state file (`systemd/` beside it). */
export declare function defaultUnitDir(stateFile: string): string;
/** $GPUOPS_SANDBOX_SYSTEMD_DIR, else {@link defaultUnitDir}. */
export declare function unitDir(stateFile: string): string;
export declare function allUnits(state: SandboxState): SandboxUnit[];
export declare function findUnit(state: SandboxState, name: string): SandboxUnit | undefined;
/** Split an ExecStart= value by systemd's quoting rules: one word list per `;`-separated command, null if broken. */
export declare function splitCommands(value: string): string[][] | null;
/** One ExecStart= value as systemd loads it (specifiers resolved, prefixes read), or null when it does not parse. */
export declare function parseExecStart(value: string, unitId: string): UnitExec[] | null;
export declare function loadedExec(engine: EngineSim, container: ContainerSim): UnitExec[];
export declare function invocationId(container: ContainerSim): string;
