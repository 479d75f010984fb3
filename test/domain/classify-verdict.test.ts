/**
 * The driver's verdict (NVML's GPU recovery action) in classification: its own problem with the rung it calls for,
 * and precedence over the Xid table for Xids on the same GPU, except the kernel-only Xids 79, 119 and 120.
 */
import { classifyNode } from '../../src/domain/classify';
import { parseRecoveryAction, RECOVERY_ACTION_RUNGS } from '../../src/domain/driver-verdict';
import type { GpuRecoveryAction, GpuStatus, NodeObservation, XidEvent } from '../../src/domain/health';
import { pciBusKey } from '../../src/domain/xid';
import { gpuStatus } from '../helpers/hosts';

const gpu = gpuStatus;
const xid = (n: number, pciBusId = '0000:01:00', message = 'pid=4242, name=ollama_llama_se, fault'): XidEvent => ({
  xid: n,
  pciBusId,
  time: '2026-11-22T00:00:00Z',
  pid: 4242,
  processName: 'ollama_llama_se',
  message,
});
const obs = (over: Partial<NodeObservation> = {}): NodeObservation => ({
  node: 'n1',
  observedAt: '2026-11-22T00:00:00Z',
  reachable: true,
  containers: [],
  gpus: [gpu()],
  gpuError: null,
  xids: [],
  engines: [],
  disks: [],
  ...over,
});
const verdict = (action: GpuRecoveryAction | null | undefined): Partial<GpuStatus> =>
  action === undefined ? {} : { recoveryAction: action };

describe('the driver verdict on its own', () => {
  test.each([
    ['Reset', 'reset', 'reset-gpu'],
    // The reset rung stops the GPU's engines before the reset: that is the drain.
    ['Drain and Reset', 'drain-and-reset', 'reset-gpu'],
    ['Reboot', 'reboot', 'restart-vm'],
    ['Drain P2P', 'drain-p2p', 'restart-container'],
  ] as const)('"%s" is a critical problem on gpu0 calling for %s', (words, action, rung) => {
    expect(RECOVERY_ACTION_RUNGS[action]).toBe(rung);
    const r = classifyNode(obs({ gpus: [gpu({ recoveryAction: action })] }));
    expect(r.healthy).toBe(false);
    expect(r.recommendedRung).toBe(rung);
    expect(r.problems).toEqual([
      {
        kind: 'gpu-recovery-action',
        subject: 'gpu0',
        detail: `the driver's recovery action for NVIDIA RTX A4000 (00000000:01:00.0) is "${words}"`,
        rung,
        severity: 'critical',
      },
    ]);
  });

  test.each([
    ['None', 'none'],
    ['null (a driver before R565, [N/A])', null],
    ['absent (an observation recorded before gpuops read it)', undefined],
  ] as const)('%s is no problem', (_what, action) => {
    const r = classifyNode(obs({ gpus: [gpu(verdict(action))] }));
    expect(r).toMatchObject({ healthy: true, recommendedRung: 'none', problems: [] });
  });

  test('words gpuops does not know are a warning for a human that acts on nothing', () => {
    const r = classifyNode(obs({ gpus: [gpu({ recoveryAction: null, recoveryActionRaw: 'Replace Board' })] }));
    expect(r.healthy).toBe(true);
    expect(r.recommendedRung).toBe('none');
    expect(r.problems).toEqual([
      expect.objectContaining({ kind: 'gpu-recovery-action', severity: 'warning', rung: 'none' }),
    ]);
    expect(r.problems[0]?.detail).toContain('"Replace Board", which gpuops does not know');
  });

  test('the driver words parse case- and space-insensitively; unknown words are kept raw', () => {
    expect(parseRecoveryAction(' drain  and reset ')).toEqual({ action: 'drain-and-reset' });
    expect(parseRecoveryAction('Replace Board')).toEqual({ action: null, raw: 'Replace Board' });
    expect(parseRecoveryAction(null)).toEqual({ action: null });
  });
});

describe('the driver verdict before the Xid table', () => {
  test.each([
    // xid, verdict on the Xid's GPU, the Xid problem's rung, whether the detail notes the driver
    [13, 'reset', 'reset-gpu', 'driver says Reset: reset-gpu (the Xid table would say restart-container)'],
    [31, 'reboot', 'restart-vm', 'driver says Reboot: restart-vm (the Xid table would say restart-container)'],
    [
      48,
      'drain-p2p',
      'restart-container',
      'driver says Drain P2P: restart-container (the Xid table would say reset-gpu)',
    ],
    [63, 'drain-and-reset', 'reset-gpu', 'driver says Drain and Reset: reset-gpu (the Xid table would say none)'],
    // None after an application-level Xid is normal; null is an older driver; absent is an old history.
    [13, 'none', 'restart-container', null],
    [13, null, 'restart-container', null],
    [13, undefined, 'restart-container', null],
    [48, 'none', 'reset-gpu', null],
    // Kernel-only Xids keep the table's rung: NVML cannot see a GPU off the bus or with a dead GSP.
    [79, 'none', 'restart-vm', null],
    [79, 'reset', 'restart-vm', null],
    [119, 'reboot', 'reset-gpu', null],
    [120, 'drain-p2p', 'reset-gpu', null],
  ] as const)('Xid %i with verdict %s → %s', (n, action, rung, note) => {
    const r = classifyNode(obs({ gpus: [gpu(verdict(action))], xids: [xid(n)] }));
    const p = r.problems.find((x) => x.kind === 'gpu-xid');
    expect(p?.rung).toBe(rung);
    if (note === null) expect(p?.detail).not.toContain('driver says');
    else expect(p?.detail).toContain(note);
  });

  test('an informational Xid stays no problem while the driver says None', () => {
    expect(classifyNode(obs({ gpus: [gpu({ recoveryAction: 'none' })], xids: [xid(63)] })).problems).toEqual([]);
  });

  test('Xid 13 with the driver saying Reset on its GPU: the node needs a GPU reset, not a container restart', () => {
    const r = classifyNode(obs({ gpus: [gpu({ recoveryAction: 'reset' })], xids: [xid(13)] }));
    expect(r.recommendedRung).toBe('reset-gpu');
    expect(r.problems.map((p) => [p.kind, p.rung])).toEqual([
      ['gpu-recovery-action', 'reset-gpu'],
      ['gpu-xid', 'reset-gpu'],
    ]);
  });

  test("an Xid on another GPU, or on one nvidia-smi does not list, keeps the table's rung", () => {
    const two = [gpu({ recoveryAction: 'reset' }), gpu({ index: 1, pciBusId: '00000000:02:00.0' })];
    const r = classifyNode(obs({ gpus: two, xids: [xid(13, '0000:02:00'), xid(31, '0000:03:00')] }));
    expect(r.problems.filter((p) => p.kind === 'gpu-xid').map((p) => [p.subject, p.rung])).toEqual([
      ['0000:02:00', 'restart-container'],
      ['0000:03:00', 'restart-container'],
    ]);
  });

  test('Xids match their GPU across the kernel and nvidia-smi spellings of a PCI address', () => {
    expect(pciBusKey('0000:01:00')).toBe('0000:01:00');
    expect(pciBusKey('00000000:01:00.0')).toBe('0000:01:00');
    expect(pciBusKey('00000001:0A:00.0')).toBe(pciBusKey('0001:0a:00'));
    expect(pciBusKey('00000001:0a:00.0')).not.toBe(pciBusKey('0000:0a:00'));
    const r = classifyNode(
      obs({ gpus: [gpu({ pciBusId: '00000000:0A:00.0', recoveryAction: 'reboot' })], xids: [xid(43, '0000:0a:00')] }),
    );
    expect(r.problems.find((p) => p.kind === 'gpu-xid')?.rung).toBe('restart-vm');
  });
});

describe('replay safety: observations recorded before the verdict was read', () => {
  /** Observations of the shapes older histories hold: Xids of every kind, lost GPUs, ECC, a failed nvidia-smi. */
  const recorded: NodeObservation[] = [
    obs(),
    obs({
      xids: [
        xid(13),
        xid(48),
        xid(63),
        xid(79),
        xid(119),
        xid(154, '0000:01:00', 'GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)'),
      ],
    }),
    obs({ gpus: [gpu({ eccUncorrectedVolatile: 2, remappedRowsPending: true })], xids: [xid(48)] }),
    obs({ gpus: [gpu({ lost: true })], xids: [xid(79)] }),
    obs({ gpus: [], gpuError: 'No devices were found', xids: [xid(79)] }),
  ];

  test.each(recorded.map((o, i) => [i, o] as const))(
    'observation %i classifies the same without the field as with null',
    (_i, o) => {
      expect(o.gpus.every((g) => !('recoveryAction' in g))).toBe(true);
      const withNull = { ...o, gpus: o.gpus.map((g) => ({ ...g, recoveryAction: null })) };
      const { observation: _a, ...before } = classifyNode(o, { expectedGpus: 1 });
      const { observation: _b, ...after } = classifyNode(withNull, { expectedGpus: 1 });
      expect(after).toEqual(before);
      expect(before.problems.some((p) => p.kind === 'gpu-recovery-action' || p.detail.includes('driver says'))).toBe(
        false,
      );
    },
  );

  test('an old observation keeps the rungs the Xid table gave it', () => {
    const r = classifyNode(recorded[1]!);
    expect(r.problems.map((p) => [p.kind, p.rung])).toEqual([
      ['gpu-xid', 'restart-container'],
      ['gpu-xid', 'reset-gpu'],
      ['gpu-xid', 'restart-vm'],
      ['gpu-xid', 'reset-gpu'],
      ['gpu-xid', 'reset-gpu'],
    ]);
  });
});
