/**
 * Each workflow implements its contract (checked by the compiler through the assignments below) and is registered
 * under the contract's name (checked at run time): a client starting a contract reaches the function it names.
 */
import * as contracts from '../src/contracts';
import type { WorkflowContract, WorkflowOf } from '../src/contracts';
import * as workflows from '../workflows';

const implementations: {
  [K in keyof typeof workflows]: WorkflowOf<(typeof byName)[K]>;
} = workflows;

const byName = {
  inspectNode: contracts.inspectNodeWorkflow,
  deployModel: contracts.deployModelWorkflow,
  recoverNode: contracts.recoverNodeWorkflow,
  watchNode: contracts.watchNodeWorkflow,
  runBackup: contracts.runBackupWorkflow,
  restoreBackup: contracts.restoreBackupWorkflow,
  backupReport: contracts.backupReportWorkflow,
} satisfies Record<keyof typeof workflows, WorkflowContract<never, unknown>>;

test('every exported workflow has a contract whose type name is its export name', () => {
  for (const [name, contract] of Object.entries(byName)) expect(contract.workflowType).toBe(name);
  expect(Object.keys(implementations).sort()).toEqual(Object.keys(byName).sort());
});

test('every contract in src/contracts belongs to an exported workflow', () => {
  const declared = (Object.values(contracts) as unknown[])
    .flatMap((v) => (typeof v === 'object' && v !== null && 'workflowType' in v ? [String(v.workflowType)] : []))
    .sort();
  expect(declared).toEqual(Object.keys(workflows).sort());
});
