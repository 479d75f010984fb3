/**
 * Stopping and starting an engine's process, shared by the `docker` and `systemctl` shims so that a container and a
 * systemd unit run the same simulation: SIGTERM and a grace period (a hung engine ignores SIGTERM and is SIGKILLed
 * when the grace runs out, exit 137), then a fresh process without the old one's faults (engine-hang, cuda-oom).
 */
import type { ContainerSim, SandboxState } from '../../state';
import * as core from './core';

/** The longest stop grace actually waited out (before timeScale): a hung engine costs at most this much. */
const MAX_HUNG_WAIT_MS = 30_000;
/** How long a healthy engine takes to exit after SIGTERM (before timeScale). */
const CLEAN_EXIT_MS = 150;

export interface LifecycleOptions {
  /** docker's `-t`, or the unit's TimeoutStopSec=; 0 kills at once. */
  graceSec: number;
  /**
   * A stop keeps the record down across VM reboots (a container without restart policy). False for an enabled
   * systemd unit, which its WantedBy= target starts again at every boot.
   */
  persistStop: boolean;
  /** Runs under the lock just before a new process starts (a unit applies the ExecStart= its last daemon-reload loaded). */
  beforeStart?: (state: SandboxState, record: ContainerSim, now: number) => void;
}

/**
 * Apply `verb` to the record `name` of `state` (read from `file`): the stop grace is waited out before the state
 * lock is taken, then the transition is applied under it. Returns whether the stop had to SIGKILL the engine, and
 * whether it was running.
 */
export function applyLifecycle(
  file: string,
  state: SandboxState,
  name: string,
  verb: 'start' | 'stop' | 'restart',
  opts: LifecycleOptions,
): { killed: boolean; wasRunning: boolean } {
  const c = state.containers[name];
  const grace = opts.graceSec;
  const hung = c?.faults.hang === true && c.status === 'running';
  if (verb !== 'start' && c?.status === 'running') {
    const waitMs = hung ? Math.min(grace * 1000, MAX_HUNG_WAIT_MS) : Math.min(grace * 1000, CLEAN_EXIT_MS);
    core.sleepSync(Math.max(1, waitMs * state.sim.timeScale));
  }
  return core.updateState(file, (s, now) => {
    const sc = s.containers[name];
    if (!sc) throw new Error(`sandbox: no container ${name} on node ${s.node}`);
    const wasRunning = sc.status === 'running';
    let killed = false;
    if (verb === 'stop' || verb === 'restart') {
      if (sc.status === 'running') {
        killed = hung || grace === 0;
        core.stopContainer(s, name, now, killed ? 137 : 0, verb === 'stop' && opts.persistStop);
        core.appendLog(sc, now, 'stderr', killed ? [] : ['Received SIGTERM, shutting down']);
      } else if (verb === 'stop' && opts.persistStop) {
        sc.manuallyStopped = true;
      }
    }
    if ((verb === 'start' || verb === 'restart') && sc.status !== 'running') {
      opts.beforeStart?.(s, sc, now);
      core.startContainer(s, name, now + 1);
    }
    return { killed, wasRunning };
  });
}
