import {
  filterXidSince,
  KernelLog,
  KernelLogError,
  kernelTimeMs,
  parseXidEvents,
  parseXidLine,
  pciBusKey,
} from '../../src/hosts/kernel-log';
import { fakeTool, fixture } from './fakes';

describe('parseXidEvents', () => {
  it('reads Xid lines from `dmesg --time-format iso`, with pid and process name', () => {
    const events = parseXidEvents(fixture('dmesg/xid-iso.txt'));
    expect(events.map((e) => e.xid)).toEqual([13, 13, 31, 79]);
    expect(events[0]).toEqual({
      xid: 13,
      pciBusId: '0000:01:00',
      time: '2025-02-03T08:15:44,203117+00:00',
      pid: 48213,
      processName: 'python3',
      message: 'Graphics SM Warp Exception on (GPC 1, TPC 2, SM 0): Out Of Range Address',
    });
    expect(events[3]).toEqual({
      xid: 79,
      pciBusId: '0000:02:00',
      time: '2025-02-03T10:02:03,514399+00:00',
      pid: null,
      processName: null,
      message: 'GPU has fallen off the bus.',
    });
  });

  it('reads the classic "[ seconds]" form and Xid lines without pid/name', () => {
    const events = parseXidEvents(fixture('dmesg/xid-classic.txt'));
    expect(events).toEqual([
      {
        xid: 79,
        pciBusId: '0000:01:00',
        time: '8811.409731',
        pid: null,
        processName: null,
        message: 'GPU has fallen off the bus.',
      },
      {
        xid: 48,
        pciBusId: '0000:01:00',
        time: '9020.177021',
        pid: 3391,
        processName: 'ollama_llama_se',
        message:
          'An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.',
      },
    ]);
  });

  it('ignores other NVRM lines and reads a journalctl-style line', () => {
    expect(parseXidLine('[ 8811.409745] NVRM: GPU at PCI:0000:01:00: GPU-9a8b7c6d')).toBeNull();
    expect(
      parseXidLine(
        'Feb 03 10:02:03 gpu-node kernel: NVRM: Xid (PCI:0000:02:00): 119, pid=913, name=nvidia-smi, Timeout after 6s of waiting for RPC response from GPU0 GSP!',
      ),
    ).toMatchObject({
      xid: 119,
      time: 'Feb 03 10:02:03',
      pid: 913,
      processName: 'nvidia-smi',
    });
  });
});

describe('filterXidSince', () => {
  it('keeps only events after the given ISO time (comma microseconds handled)', () => {
    const events = parseXidEvents(fixture('dmesg/xid-iso.txt'));
    expect(filterXidSince(events, '2025-02-03T09:00:00Z').map((e) => e.xid)).toEqual([31, 79]);
    expect(filterXidSince(events, '2025-02-03T10:02:03.514Z').map((e) => e.xid)).toEqual([79]);
    expect(filterXidSince(events, '2025-02-03T10:02:04Z')).toEqual([]);
  });

  it('keeps events with uptime timestamps, which cannot be compared', () => {
    const events = parseXidEvents(fixture('dmesg/xid-classic.txt'));
    expect(filterXidSince(events, '2030-01-01T00:00:00Z')).toHaveLength(2);
  });

  it('parses kernel ISO times to epoch milliseconds', () => {
    expect(kernelTimeMs('2025-02-03T10:02:03,514399+00:00')).toBeCloseTo(
      Date.UTC(2025, 1, 3, 10, 2, 3, 514) + 0.399,
      3,
    );
    expect(kernelTimeMs('2025-02-03T12:02:03,000000+0200')).toBe(Date.UTC(2025, 1, 3, 10, 2, 3, 0));
    expect(kernelTimeMs('8811.409731')).toBeNull();
  });
});

describe('pciBusKey', () => {
  it('matches the kernel and nvidia-smi spellings of one GPU', () => {
    expect(pciBusKey('0000:01:00')).toBe(pciBusKey('00000000:01:00.0'));
    expect(pciBusKey('0000:01:00')).not.toBe(pciBusKey('00000000:02:00.0'));
  });
});

describe('KernelLog against a fake dmesg', () => {
  it('runs `dmesg --time-format iso` and filters by since', async () => {
    const dmesg = fakeTool('dmesg', [{ args: ['--time-format', 'iso'], stdout: fixture('dmesg/xid-iso.txt') }]);
    const events = await new KernelLog({ bin: dmesg.bin }).xidEvents({ since: '2025-02-03T10:00:00Z' });
    expect(events.map((e) => [e.xid, e.pciBusId])).toEqual([[79, '0000:02:00']]);
    expect(dmesg.calls()).toEqual([['--time-format', 'iso']]);
  });

  it('flags a restricted kernel log as permission denied', async () => {
    const dmesg = fakeTool('dmesg', [
      { stderr: 'dmesg: read kernel buffer failed: Operation not permitted\n', exit: 1 },
    ]);
    const err = await new KernelLog({ bin: dmesg.bin }).xidEvents().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KernelLogError);
    expect((err as KernelLogError).permissionDenied).toBe(true);
    expect((err as Error).message).toContain('Operation not permitted');
  });
});
