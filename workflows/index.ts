/** Every gpuops workflow type, registered on the control worker (queue gpuops-control). */
export { inspectNode } from './inspect-node';
export { runBackup, restoreBackup, backupReport } from './backup';
export { recoverNode, watchNode } from './recovery';
export { deployModel } from './deploy';
