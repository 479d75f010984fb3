import { Connection } from '@temporalio/client';

test('the run-wide Temporal dev server answers and has the gpuops search attributes registered', async () => {
  const address = process.env.TEMPORAL_TEST_ADDRESS;
  expect(address).toMatch(/^127\.0\.0\.1:\d+$/);
  const conn = await Connection.connect({ address: address ?? '' });
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
