import { Connection } from '@temporalio/client';
import { temporalConnectOptions } from '../src/temporal/connection';
import { testTarget } from './helpers/env';

test('the run-wide Temporal server answers and has the gpuops search attributes registered', async () => {
  const target = testTarget();
  expect(target.address).toMatch(/^127\.0\.0\.1:\d+$/);
  const conn = await Connection.connect(temporalConnectOptions(target));
  try {
    const attrs = await conn.operatorService.listSearchAttributes({ namespace: 'default' });
    expect(attrs.customAttributes).toMatchObject({
      GpuopsNode: expect.anything(),
      GpuopsAlias: expect.anything(),
      GpuopsModel: expect.anything(),
      GpuopsStage: expect.anything(),
      GpuopsCanaryWeight: expect.anything(),
    });
  } finally {
    await conn.close();
  }
});

const production = process.env.TEMPORAL_TARGET === 'production';
(production ? test : test.skip)(
  'on the production target the whole run is on mTLS: the run-wide server refuses a plaintext client',
  async () => {
    expect(testTarget().tls).toEqual(
      expect.objectContaining({
        certFile: expect.any(String),
        keyFile: expect.any(String),
        caFile: expect.any(String),
      }),
    );
    const plain = Connection.connect({ address: testTarget().address, connectTimeout: 5000 }).then(async (c) => {
      try {
        await c.workflowService.getSystemInfo({});
      } finally {
        await c.close();
      }
    });
    await expect(plain).rejects.toThrow();
  },
);
