/**
 * The failure converter of encrypting workers and clients (src/temporal/codec.ts): messages and stack traces go into
 * the failure's encoded attributes, which the payload codec encrypts. Loaded by path (the SDK requires a module with a
 * `failureConverter` export), also inside the workflow sandbox: it imports only @temporalio/common.
 */
import { DefaultFailureConverter } from '@temporalio/common';

export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
