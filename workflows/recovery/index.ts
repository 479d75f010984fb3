/**
 * Failure recovery. `watchNode` probes a node forever (continue-as-new keeps its history bounded) and starts
 * `recoverNode` when a fault persists; `recoverNode` climbs the ladder, verifying health after each rung, within a
 * per-node budget so it never loops. Both are plain workflow code: every action is an activity on the right queue.
 */
export { recoverNode } from './recover-node';
export { watchNode } from './watch-node';
