/**
 * Start and address gpuops workflows by their typed contract (src/contracts), never by a bare name string: a changed
 * input or result type fails to compile in every client (CLI, hooks, activities, tests) at once.
 */
import type { Client, WorkflowHandle, WorkflowHandleWithStartDetails, WorkflowOptions } from '@temporalio/client';
import { CONTROL_TASK_QUEUE, type WorkflowContract } from '../contracts';

/** Start options of a contract's workflow: everything but the type and args; the queue defaults to gpuops-control. */
export type ContractStartOptions = Omit<WorkflowOptions, 'taskQueue'> & { taskQueue?: string };

type Fn<I, R> = (input: I) => Promise<R>;

/** Start a workflow of `contract` with `input` (queue gpuops-control unless given). */
export function startWorkflow<I, R>(
  client: Client,
  contract: WorkflowContract<I, R>,
  input: I,
  options: ContractStartOptions,
): Promise<WorkflowHandleWithStartDetails<Fn<I, R>>> {
  return client.workflow.start<Fn<I, R>>(contract.workflowType, {
    ...options,
    taskQueue: options.taskQueue ?? CONTROL_TASK_QUEUE,
    args: [input],
  });
}

/** Start a workflow of `contract` and wait for its result. */
export function executeWorkflow<I, R>(
  client: Client,
  contract: WorkflowContract<I, R>,
  input: I,
  options: ContractStartOptions,
): Promise<R> {
  return client.workflow.execute<Fn<I, R>>(contract.workflowType, {
    ...options,
    taskQueue: options.taskQueue ?? CONTROL_TASK_QUEUE,
    args: [input],
  });
}

/** A typed handle on a running (or finished) workflow of `contract`. */
export function workflowHandle<I, R>(
  client: Client,
  _contract: WorkflowContract<I, R>,
  workflowId: string,
  runId?: string,
): WorkflowHandle<Fn<I, R>> {
  return client.workflow.getHandle<Fn<I, R>>(workflowId, runId);
}
