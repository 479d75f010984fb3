/**
 * The keep policy: pure cases, then the same policy run by the real restic over snapshots with crafted times
 * (restic backup --time), which must keep exactly what keep-daily/weekly/monthly say.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { applyRetention, isoWeek } from '../../src/domain/retention';
import { ResticCli } from '../../src/hosts/restic';

const snap = (time: string): { id: string; time: string } => ({ id: time, time });

test('ISO weeks follow Go time.ISOWeek across year boundaries', () => {
  expect(isoWeek(2021, 1, 3)).toBe(202053); // a Sunday that belongs to 2020's week 53
  expect(isoWeek(2021, 1, 4)).toBe(202101);
  expect(isoWeek(2024, 12, 30)).toBe(202501);
  expect(isoWeek(2024, 3, 11)).toBe(202411);
});

test('keep-last keeps the newest n whatever their times', () => {
  const v = applyRetention(['2024-01-01T00:00:00Z', '2024-01-03T00:00:00Z', '2024-01-02T00:00:00Z'].map(snap), {
    keepLast: 2,
  });
  expect(v.keep.map((k) => k.id)).toEqual(['2024-01-03T00:00:00Z', '2024-01-02T00:00:00Z']);
  expect(v.remove.map((k) => k.id)).toEqual(['2024-01-01T00:00:00Z']);
});

test('buckets use the wall-clock time the snapshot shows, not UTC', () => {
  // 23:30 at -05:00 is the next day in UTC, but restic buckets by the snapshot's own zone: two different days.
  const v = applyRetention([snap('2024-05-01T23:30:00-05:00'), snap('2024-05-01T08:00:00-05:00')], { keepDaily: 5 });
  expect(v.keep).toHaveLength(1);
});

test('an empty policy keeps everything', () => {
  expect(applyRetention([snap('2024-01-01T00:00:00Z')], {}).remove).toEqual([]);
});

// Ten snapshots over three months; keep-daily 3, keep-weekly 2, keep-monthly 2 must keep exactly these five.
const CRAFTED = [
  '2024-01-10 12:00:00',
  '2024-01-25 12:00:00',
  '2024-02-05 12:00:00',
  '2024-02-20 12:00:00',
  '2024-03-04 12:00:00',
  '2024-03-06 12:00:00',
  '2024-03-11 12:00:00',
  '2024-03-12 12:00:00',
  '2024-03-13 12:00:00',
  '2024-03-13 18:00:00',
];
const EXPECTED_KEPT = [
  '2024-03-13 18:00:00', // newest: daily, weekly (W11), monthly (March)
  '2024-03-12 12:00:00', // daily
  '2024-03-11 12:00:00', // daily
  '2024-03-06 12:00:00', // weekly (W10)
  '2024-02-20 12:00:00', // monthly (February)
];
const POLICY = { keepDaily: 3, keepWeekly: 2, keepMonthly: 2 };

test('the pure policy keeps exactly what keep-daily/weekly/monthly say', () => {
  const v = applyRetention(
    CRAFTED.map((t) => snap(`${t.replace(' ', 'T')}Z`)),
    POLICY,
  );
  expect(v.keep.map((k) => k.id.replace('T', ' ').replace('Z', ''))).toEqual(EXPECTED_KEPT);
  expect(v.keep[0]?.reasons).toEqual(['daily', 'weekly', 'monthly']);
});

test('real restic forget keeps exactly the snapshots the policy names, and agrees with the pure model', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-retention-'));
  writeFileSync(path.join(dir, 'pw'), 'retention-test-password\n');
  const data = path.join(dir, 'data');
  mkdirSync(data);
  writeFileSync(path.join(data, 'file'), 'x');
  const restic = new ResticCli({
    repository: path.join(dir, 'repo'),
    passwordFile: path.join(dir, 'pw'),
    env: { TZ: 'UTC' },
  });
  await restic.init();
  for (const t of CRAFTED) await restic.backup([data], { time: t, tags: ['plan:r'], host: 'n' });
  const before = await restic.snapshots({ tags: ['plan:r'] });
  expect(before).toHaveLength(10);
  const predicted = applyRetention(before, POLICY);

  const groups = await restic.forget(POLICY, { tags: ['plan:r'], prune: true });
  const after = await restic.snapshots({ tags: ['plan:r'] });
  const wall = (t: string): string => t.slice(0, 19).replace('T', ' ');
  expect(
    after
      .map((s) => wall(s.time))
      .sort()
      .reverse(),
  ).toEqual(EXPECTED_KEPT);
  expect(
    groups
      .flatMap((g) => g.keep ?? [])
      .map((s) => s.id)
      .sort(),
  ).toEqual(predicted.keep.map((k) => k.id).sort());
}, 30_000);
