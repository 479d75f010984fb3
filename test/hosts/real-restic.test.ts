/**
 * restic JSON output from real runs (see test/fixtures/restic/real/SOURCES.md): the backup summary of 0.9.6 and the
 * snapshot list of 0.17.3, which carries a per-snapshot summary.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseResticBackupLine, ResticCli } from '../../src/hosts/restic';
import { fakeTool, fixture } from './fakes';

describe('restic backup --json lines', () => {
  it('reads the summary of restic 0.9.6 (one line as restic prints it)', () => {
    const line = JSON.stringify(JSON.parse(fixture('restic/real/backup-summary-0.9.6.json')));
    expect(parseResticBackupLine(line)).toEqual({
      type: 'summary',
      summary: expect.objectContaining({
        snapshot_id: '43deae25',
        files_new: 60,
        files_changed: 74,
        data_added: 25131953,
        total_files_processed: 11357,
        total_duration: 1.816399114,
      }),
    });
  });

  it('tells status, error and other messages apart and ignores non-JSON noise', () => {
    expect(parseResticBackupLine('{"message_type":"status","percent_done":0.5,"total_files":10}')).toEqual({
      type: 'status',
      status: { message_type: 'status', percent_done: 0.5, total_files: 10 },
    });
    expect(
      parseResticBackupLine('{"message_type":"error","error":{"message":"permission denied"},"during":"archival"}'),
    ).toMatchObject({ type: 'error', error: expect.stringContaining('permission denied') });
    expect(parseResticBackupLine('{"message_type":"verbose_status","action":"new"}')).toEqual({
      type: 'other',
      messageType: 'verbose_status',
    });
    expect(parseResticBackupLine('repository 1234abcd opened (version 2)')).toBeNull();
    expect(parseResticBackupLine('{"message_type":"summ')).toBeNull();
  });
});

describe('restic snapshots --json', () => {
  it('lists the snapshots of restic 0.17.3 with their ids, tags and paths', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-restic-'));
    const passwordFile = path.join(dir, 'pw');
    writeFileSync(passwordFile, 'x\n');
    const restic = fakeTool('restic', [{ args: ['snapshots'], stdout: fixture('restic/real/snapshots-0.17.3.json') }]);
    const snaps = await new ResticCli({ repository: dir, passwordFile, bin: restic.bin }).snapshots({
      tags: ['example_tag'],
    });
    expect(snaps).toEqual([
      expect.objectContaining({
        id: '490d199082e4f10f4760871be98d026c6bd6da7edde374c5fb381087af2bd469',
        short_id: '490d1990',
        time: '2025-03-11T08:00:01.664908291+01:00',
        paths: ['/etc/hosts'],
        hostname: 'host1.example.com',
        tags: ['example_tag'],
      }),
    ]);
    expect(restic.calls()).toEqual([['snapshots', '--json', '--no-lock', '--tag', 'example_tag']]);
  });
});
