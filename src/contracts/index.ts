/**
 * Every name and shape clients and workflows share, one module per workflow family: task queues, search attributes,
 * workflow IDs and types, inputs, Updates, Queries, records. Workflow-safe.
 */
export * from './common';
export * from './inspect';
export * from './deploy';
export * from './recovery';
export * from './backup';
