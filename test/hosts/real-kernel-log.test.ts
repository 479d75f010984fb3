/**
 * Kernel log parsing against Xid reports captured on real hosts (see test/fixtures/dmesg/real/SOURCES.md): every
 * timestamp form dmesg, journald and syslog put in front of the message, and the Xid-less "fallen off the bus"
 * report of a lost GPU.
 */
import {
  filterXidSince,
  kernelTimeMs,
  parseXidEvents,
  parseXidLine,
  splitKernelLine,
} from '../../src/hosts/kernel-log';
import { fixture } from './fakes';

/** Local wall-clock time, as dmesg -T and syslog print it. */
const local = (y: number, mo: number, d: number, h: number, mi: number, s: number): number =>
  new Date(y, mo - 1, d, h, mi, s).getTime();

describe('a lost GPU reported without an Xid line', () => {
  it('reads the open driver one-line form as Xid 79', () => {
    const e = parseXidEvents(
      'NVRM: The NVIDIA GPU 0000:b3:00.0 (PCI ID: 10de:2204) installed in this system has fallen off the bus and is not responding to commands.',
    );
    expect(e).toEqual([
      {
        xid: 79,
        pciBusId: '0000:b3:00.0',
        time: '',
        pid: null,
        processName: null,
        message:
          'The NVIDIA GPU 0000:b3:00.0 (PCI ID: 10de:2204) installed in this system has fallen off the bus and is not responding to commands.',
      },
    ]);
  });

  it('joins dmesg continuation lines (570 open kernel module)', () => {
    const events = parseXidEvents(fixture('dmesg/real/dmesg-fallen-off-bus-open-570.158.01.log'));
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ xid: 79, pciBusId: '0000:b3:00.0', time: '1843.308145' });
    expect(events[0]?.message).toContain('(PCI ID: 10de:26b5)');
  });

  it('joins journalctl -k continuation lines', () => {
    expect(parseXidEvents(fixture('dmesg/real/journalctl-k-fallen-off-bus-resume.log'))).toEqual([
      expect.objectContaining({ xid: 79, pciBusId: '0000:01:00.0', time: 'Mar 07 19:30:42' }),
    ]);
  });

  it("joins rsyslog's repeated-prefix lines, keeping the wall-clock time over the uptime", () => {
    expect(parseXidEvents(fixture('dmesg/real/syslog-fallen-off-bus-525.125.06.log'))).toEqual([
      expect.objectContaining({ xid: 79, pciBusId: '0000:5d:00.0', time: 'Jan  3 07:39:45' }),
    ]);
  });

  it('is not fooled by the "probe routine failed" line that follows', () => {
    expect(parseXidLine('[ 1843.439662] NVRM: The NVIDIA probe routine failed for 1 device(s).')).toBeNull();
    expect(parseXidEvents('[ 1843.439662] NVRM: The NVIDIA probe routine failed for 1 device(s).')).toEqual([]);
  });
});

describe('timestamps behind a prefix', () => {
  it('splits dmesg --decode, dmesg -T, syslog and RFC 3339 syslog prefixes', () => {
    expect(splitKernelLine('kern  :err   : [ 1234.567890] NVRM: Xid (PCI:0000:01:00): 79, x')).toMatchObject({
      time: '1234.567890',
      message: 'NVRM: Xid (PCI:0000:01:00): 79, x',
    });
    expect(splitKernelLine('[Tue Dec  1 07:55:12 2026] NVRM: Xid (PCI:0000:01:00): 79, x').time).toBe(
      'Tue Dec  1 07:55:12 2026',
    );
    expect(splitKernelLine('Dec  1 07:55:12 host kernel: [ 1234.5] NVRM: Xid (PCI:0000:01:00): 79, x')).toMatchObject({
      time: 'Dec  1 07:55:12',
      message: 'NVRM: Xid (PCI:0000:01:00): 79, x',
    });
    expect(
      splitKernelLine('2026-12-01T07:55:12.123456+00:00 host kernel: NVRM: Xid (PCI:0000:01:00): 79, x'),
    ).toMatchObject({ time: '2026-12-01T07:55:12.123456+00:00', message: 'NVRM: Xid (PCI:0000:01:00): 79, x' });
    const decoded = splitKernelLine(fixture('dmesg/real/dmesg-decode-iso-segfault.log').split('\n')[0] ?? '');
    expect(decoded.time).toBe('2025-01-21T04:41:44,285060+00:00');
    expect(decoded.message).toMatch(/^pt_main_thread\[2536443\]: segfault/);
  });

  it('turns each wall-clock form into epoch milliseconds', () => {
    expect(kernelTimeMs('Tue Dec  1 07:55:12 2026')).toBe(local(2026, 12, 1, 7, 55, 12));
    expect(kernelTimeMs('2026-12-01T07:55:12.123456+00:00')).toBeCloseTo(
      Date.UTC(2026, 11, 1, 7, 55, 12, 123) + 0.456,
      3,
    );
    // journalctl -o short-iso: no fraction, a +0000 zone.
    expect(kernelTimeMs('2026-12-01T07:55:12+0000')).toBe(Date.UTC(2026, 11, 1, 7, 55, 12));
    // Syslog carries no year: the one that is not in the future.
    const now = local(2026, 12, 15, 0, 0, 0);
    expect(kernelTimeMs('Dec  1 07:55:12', now)).toBe(local(2026, 12, 1, 7, 55, 12));
    expect(kernelTimeMs('Dec 31 23:00:00', local(2027, 1, 2, 0, 0, 0))).toBe(local(2026, 12, 31, 23, 0, 0));
    expect(kernelTimeMs('1234.567890')).toBeNull();
  });

  it('drops events older than since for dmesg -T (real Xid 119 GSP timeouts)', () => {
    const events = parseXidEvents(fixture('dmesg/real/dmesg-T-xid-119-gsp-timeout.log'));
    expect(events.map((e) => [e.xid, e.pid, e.processName])).toEqual([
      [119, 2024380, 'nvidia-smi'],
      [119, 2024380, 'nvidia-smi'],
      [119, 2024380, 'nvidia-smi'],
      [119, 1263500, 'cache_mgr_main'],
      [119, 1240590, 'gpud'],
    ]);
    expect(events[4]?.time).toBe('Sun Feb 23 16:30:13 2025');
    const since = new Date(local(2025, 2, 23, 16, 25, 0)).toISOString();
    expect(filterXidSince(events, since).map((e) => e.processName)).toEqual(['cache_mgr_main', 'gpud']);
  });

  it('reads dmesg --ctime Xid 13, 109 and 31 with their messages and filters them by day', () => {
    const events = parseXidEvents(fixture('dmesg/real/dmesg-ctime-xid-13-109-31.log'));
    expect(events.map((e) => e.xid)).toEqual([13, 13, 13, 109, 31, 109]);
    expect(events[3]).toEqual({
      xid: 109,
      pciBusId: '0000:cb:00',
      time: 'Fri Aug 30 11:43:14 2024',
      pid: 1797828,
      processName: 'pt_main_thread',
      message: 'Ch 00000008, errorString CTX SWITCH TIMEOUT, Info 0x58005',
    });
    const since = new Date(local(2024, 8, 31, 0, 0, 0)).toISOString();
    expect(filterXidSince(events, since).map((e) => e.xid)).toEqual([31, 109]);
  });

  it('prefers the syslog wall time over the uptime printed after it', () => {
    const [e] = parseXidEvents(fixture('dmesg/real/syslog-uptime-xid-79.log'));
    expect(e).toMatchObject({ xid: 79, time: 'Mar 21 20:18:56', pid: null, message: 'GPU has fallen off the bus.' });
    const now = local(2026, 4, 1, 0, 0, 0);
    expect(filterXidSince([e!], new Date(local(2026, 3, 22, 0, 0, 0)).toISOString(), now)).toEqual([]);
    expect(filterXidSince([e!], new Date(local(2026, 3, 21, 0, 0, 0)).toISOString(), now)).toHaveLength(1);
  });
});

describe('other real Xid reports', () => {
  it('reads a journald GSP exception (Xid 120) without pid or name', () => {
    expect(parseXidEvents(fixture('dmesg/real/journalctl-xid-120-gsp-exception.log'))).toEqual([
      {
        xid: 120,
        pciBusId: '0000:23:00',
        time: 'Aug 19 21:36:23',
        pid: null,
        processName: null,
        message:
          'GSP task exception: load access page fault (cause:0xd) @ pc:0x13636b2, partition:2#0, task:3, gfid: 0',
      },
    ]);
  });

  it('reads grep-ed journal lines that start at "kernel:" and NVLink Xids on non-zero PCI domains', () => {
    const grep = parseXidEvents(fixture('dmesg/real/journal-grep-xid-45-nvlink.log'));
    expect(grep.map((e) => [e.xid, e.pciBusId, e.time])).toEqual([
      [45, '0000:dc:00', ''],
      [45, '0000:ed:00', ''],
      [45, '0000:ba:00', ''],
      [45, '0000:97:00', ''],
    ]);
    expect(grep[0]?.message).toBe('Ch 00000001 caused by previous Xid 149');
    const kmsg = parseXidEvents(fixture('dmesg/real/kmsg-xid-149-145-nvlink.log'));
    expect(kmsg.map((e) => [e.xid, e.pciBusId, e.pid])).toEqual([
      [149, '0019:01:00', null],
      [149, '0000:00:00', null],
      [145, '0018:01:00', null],
      [94, '0000:9b:00', 1234],
    ]);
    expect(kmsg[2]?.message).toMatch(/^RLW_RXPIPE Nonfatal XC0 i0 Link 13/);
  });
});
