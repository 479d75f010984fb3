/** Sizes in gpuops.yaml (a backup plan's minFree): bytes, SI and IEC units, and what they come to. */
import { ByteSizeSchema, byteSize } from '../../src/domain/schemas';
import { backupInputFor } from '../../src/temporal/schedules';
import { parseConfig } from '../../src/config/load';

test.each([
  [0, 0],
  ['1024', 1024],
  ['500MB', 500_000_000],
  ['20GiB', 20 * 2 ** 30],
  ['1.5TB', 1_500_000_000_000],
  ['64 KiB', 65_536],
  ['2tib', 2 * 2 ** 40],
])('%j is %d bytes', (text, bytes) => {
  expect(ByteSizeSchema.safeParse(text).success).toBe(true);
  expect(byteSize(ByteSizeSchema.parse(text))).toBe(bytes);
});

test('a plan with minFree sends runBackup the floor in bytes; one without sends none', () => {
  const yaml = `
nodes: [{ id: n1 }]
backups:
  - { id: p1, node: n1, what: gpuops-config, repository: /srv/r1, passwordFile: /etc/pw, schedule: { every: 1h }, rpo: 2h, minFree: 20GiB }
  - { id: p2, node: n1, what: gpuops-config, repository: /srv/r2, passwordFile: /etc/pw, schedule: { every: 1h }, rpo: 2h }
`;
  const config = parseConfig(yaml, '/etc/gpuops/gpuops.yaml');
  const [p1, p2] = config.backups;
  expect(backupInputFor(config, p1!).plan).toMatchObject({ id: 'p1', minFreeBytes: 20 * 2 ** 30 });
  expect(backupInputFor(config, p1!).plan).not.toHaveProperty('minFree');
  expect(backupInputFor(config, p2!).plan).not.toHaveProperty('minFreeBytes');
});
