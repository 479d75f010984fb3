/**
 * Classification of faults read from real outputs: a GPU the driver reports lost without an Xid line, and a podman
 * container that was created but never started.
 */
import { classifyNode } from '../../src/domain/classify';
import type { NodeObservation } from '../../src/domain/health';
import { XID_FALLEN_OFF_BUS, xidName } from '../../src/domain/xid';
import { parseInspectEntry } from '../../src/hosts/docker';
import { parseXidEvents } from '../../src/hosts/kernel-log';
import { fixture } from '../hosts/fakes';

const obs = (over: Partial<NodeObservation> = {}): NodeObservation => ({
  node: 'n1',
  observedAt: '2026-12-01T08:00:00Z',
  reachable: true,
  containers: [],
  gpus: [],
  gpuError: null,
  xids: [],
  engines: [],
  disks: [],
  ...over,
});

describe('faults from real outputs', () => {
  test('a GPU that fell off the bus with no Xid line calls for a VM restart, as Xid 79 does', () => {
    const xids = parseXidEvents(fixture('dmesg/real/dmesg-fallen-off-bus-open-570.158.01.log'));
    expect(xids.map((x) => x.xid)).toEqual([XID_FALLEN_OFF_BUS]);
    const r = classifyNode(obs({ xids }));
    expect(r.recommendedRung).toBe('restart-vm');
    expect(r.problems).toEqual([
      expect.objectContaining({
        kind: 'gpu-xid',
        subject: '0000:b3:00.0',
        rung: 'restart-vm',
        detail: expect.stringContaining(`Xid 79 (${xidName(79)}): The NVIDIA GPU 0000:b3:00.0`),
      }),
    ]);
  });

  test('a never-started podman 1.x container ("configured") is reported as created, not as exited', () => {
    const configured = parseInspectEntry({
      Name: '/vllm-b',
      State: { Status: 'configured', Running: false, ExitCode: 0 },
    });
    expect(classifyNode(obs({ containers: [configured] })).problems).toEqual([
      expect.objectContaining({
        kind: 'container-exited',
        subject: 'vllm-b',
        detail: 'container is created (exit code 0)',
      }),
    ]);
    // As a canary slot half beside its running partner it is standby.
    const partner = parseInspectEntry({ Name: '/vllm-a', State: { Status: 'running', Running: true } });
    const r = classifyNode(obs({ containers: [{ ...configured, slotPartner: 'vllm-a' }, partner] }));
    expect(r.problems).toEqual([]);
    expect(r.standby).toEqual([{ engine: null, container: 'vllm-b', partner: 'vllm-a' }]);
  });
});
