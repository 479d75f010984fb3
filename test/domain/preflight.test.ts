import { checkDiskSpace, checkGpuMemory, estimateVramBytes } from '../../src/domain/preflight';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const a4000 = (usedMiB: number) => [{ index: 0, totalMiB: 16376, usedMiB }];

test('a model whose estimated need plus what is in use stays under the cap fits', () => {
  const r = checkGpuMemory({ model: 'm', gpus: a4000(1450), modelBytes: 4 * GiB, loadedVramBytes: null, capPct: 90 });
  expect(r.fits).toBe(true);
  expect(r.neededMiB).toBe(Math.ceil(estimateVramBytes(4 * GiB) / MiB));
  expect(r.capMiB).toBe(Math.floor(16376 * 0.9));
  expect(r.detail).toMatch(/≤ the 90% cap/);
});

test('a model that would push the GPUs over the cap is refused, naming the numbers', () => {
  const r = checkGpuMemory({
    model: 'mistral-small:22b',
    gpus: a4000(1450),
    modelBytes: 12_569_170_041,
    loadedVramBytes: null,
    capPct: 90,
  });
  expect(r.fits).toBe(false);
  expect(r.afterPct).toBeGreaterThan(90);
  expect(r.detail).toMatch(/^mistral-small:22b needs about 14\.0 GiB .* > the 90% cap \(14\.4 GiB\)$/);
});

test('a model already loaded is not counted twice', () => {
  const loaded = estimateVramBytes(10 * GiB);
  const used = 1450 + Math.ceil(loaded / MiB);
  const r = checkGpuMemory({
    model: 'm',
    gpus: a4000(used),
    modelBytes: 10 * GiB,
    loadedVramBytes: loaded,
    capPct: 90,
  });
  expect(r.usedMiB).toBe(1450);
  expect(r.fits).toBe(true);
});

test('an unknown size or unreadable GPUs fail rather than pass silently', () => {
  expect(checkGpuMemory({ model: 'm', gpus: a4000(0), modelBytes: null, loadedVramBytes: null, capPct: 90 }).fits).toBe(
    false,
  );
  const blind = checkGpuMemory({
    model: 'm',
    gpus: [{ index: 0, totalMiB: null, usedMiB: null }],
    modelBytes: GiB,
    loadedVramBytes: null,
    capPct: 90,
  });
  expect(blind.fits).toBe(false);
  expect(blind.detail).toMatch(/no memory figures/);
});

test('disk: every store must keep the reserve after the download', () => {
  const stores = [
    { path: '/a', totalBytes: 100 * GiB, freeBytes: 20 * GiB },
    { path: '/b', totalBytes: 100 * GiB, freeBytes: 8 * GiB },
  ];
  expect(checkDiskSpace(stores, 0, 5).ok).toBe(true);
  const r = checkDiskSpace(stores, 4 * GiB, 5);
  expect(r.ok).toBe(false);
  expect(r.detail).toBe(
    '/b has 8.0 GiB free; 4.0 GiB more to download and the policy keeps 5.0 GiB free (minFreeGiB 5)',
  );
  expect(checkDiskSpace([], GiB, 5)).toEqual({ ok: true, detail: expect.stringMatching(/nothing to check/) });
});
