import { HARD_RESETS_PER_RUNG, firstRung, hardResetDue, ladderFrom, rungUnmet } from '../../src/domain/rungs';

test('an incident starts at the rung asked for, else the diagnosed one; nothing to do when neither names one', () => {
  expect(firstRung(undefined, 'restart-container', false)).toBe('restart-container');
  expect(firstRung('restart-vm', 'restart-container', false)).toBe('restart-vm');
  expect(firstRung('reset-gpu', 'none', false)).toBe('reset-gpu');
  expect(firstRung(undefined, 'none', false)).toBe('none');
});

test('a spent budget escalates instead of acting, but a healthy node is still no fault', () => {
  expect(firstRung(undefined, 'restart-vm', true)).toBe('escalate');
  expect(firstRung('restart-container', 'none', true)).toBe('escalate');
  expect(firstRung(undefined, 'none', true)).toBe('none');
});

test('the ladder climbs from the first rung up to escalation, in order', () => {
  expect(ladderFrom('restart-container')).toEqual(['restart-container', 'reset-gpu', 'restart-vm', 'escalate']);
  expect(ladderFrom('restart-vm')).toEqual(['restart-vm', 'escalate']);
  expect(ladderFrom('escalate')).toEqual(['escalate']);
});

test('container and GPU rungs need the node worker; the VM rung needs a VM gpuops can power-cycle', () => {
  const down = { reachable: false, hasVm: true };
  expect(rungUnmet('restart-container', down)).toBe('node unreachable: container actions need its node worker');
  expect(rungUnmet('reset-gpu', down)).toBe('node unreachable: a GPU reset needs its node worker');
  expect(rungUnmet('restart-vm', down)).toBeNull();
  const noVm = { reachable: true, hasVm: false };
  expect(rungUnmet('restart-container', noVm)).toBeNull();
  expect(rungUnmet('restart-vm', noVm)).toMatch(/no vm in gpuops.yaml/);
});

describe('the hung-guest rule', () => {
  const unreachable = { healthy: false, reachable: false };

  test('a refused or timed-out reboot gets a hard reset; a carried-out one does not', () => {
    expect(hardResetDue({ rebootOk: false, hardResets: 0 }, null)).toBe(true);
    expect(hardResetDue({ rebootOk: true, hardResets: 0 }, null)).toBe(false);
  });

  test('a rebooted guest still unreachable after its boot timeout gets a hard reset', () => {
    expect(hardResetDue({ rebootOk: true, hardResets: 0 }, unreachable)).toBe(true);
  });

  test('a guest that answers again, healthy or not, is not reset: the next rung takes over', () => {
    expect(hardResetDue({ rebootOk: true, hardResets: 0 }, { healthy: false, reachable: true })).toBe(false);
    expect(hardResetDue({ rebootOk: true, hardResets: 0 }, { healthy: true, reachable: true })).toBe(false);
  });

  test('one hard reset, never a loop: a guest still unreachable after its reset is not reset again', () => {
    expect(HARD_RESETS_PER_RUNG).toBe(1);
    expect(hardResetDue({ rebootOk: false, hardResets: 1 }, unreachable)).toBe(false);
    expect(hardResetDue({ rebootOk: false, hardResets: 1 }, null)).toBe(false);
  });
});
