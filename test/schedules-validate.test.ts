/**
 * syncSchedules checks every plan before it changes any schedule (no Temporal server: a client that records calls).
 */
import type { Client } from '@temporalio/client';
import { ScheduleNotFoundError } from '@temporalio/client';
import { parseConfig } from '../src/config/load';
import { syncSchedules } from '../src/temporal/schedules';

test('one plan whose runBackup input is refused stops the sync before any schedule is created', async () => {
  const config = parseConfig(
    JSON.stringify({
      nodes: [{ id: 'n1' }],
      backups: ['a', 'b'].map((id) => ({
        id,
        node: 'n1',
        what: 'gpu-config',
        repository: id === 'b' ? 'rest:https://user:secret@backup.example/gpu' : '/srv/restic/gpu',
        passwordFile: '/etc/gpuops/restic-pw',
        rpo: '1d',
        schedule: { every: '6h' },
      })),
    }),
    'test.yaml',
  );
  const created: string[] = [];
  const client = {
    schedule: {
      getHandle: (id: string) => ({ describe: () => Promise.reject(new ScheduleNotFoundError('not found', id)) }),
      create: (o: { scheduleId: string }) => {
        created.push(o.scheduleId);
        return Promise.resolve();
      },
      list: async function* () {},
    },
  } as unknown as Client;
  await expect(syncSchedules(client, config)).rejects.toThrow(/runBackup input for plan b/);
  expect(created).toEqual([]);
});
