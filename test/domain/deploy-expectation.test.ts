import { formatIssues } from '../../src/domain/validation';
import { expectationRefusal, type RunningDeployment } from '../../src/domain/deploy-expectation';
import { PromoteCanaryInput, RollbackDeploymentInput } from '../../src/contracts';

const RUN = '0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b';
const FIRST = '0190a1b2-0000-7e5f-8a9b-0c1d2e3f4a5b';
const DIGEST = 'a'.repeat(64);
const running: RunningDeployment = {
  workflowId: 'deploy:sandbox-1:chat',
  stage: 'awaiting-promotion',
  model: 'qwen2:0.5b',
  digest: `sha256:${DIGEST}`,
  expectedDigest: null,
  revision: null,
  runId: RUN,
  firstExecutionRunId: RUN,
};

test('no expectation, or one that matches in every field it names, lets the Update through', () => {
  expect(expectationRefusal(undefined, running)).toBeNull();
  expect(expectationRefusal({ model: 'qwen2:0.5b' }, running)).toBeNull();
  // The digest with or without its sha256: prefix, in either case; the run ID in either case.
  expect(expectationRefusal({ model: 'qwen2:0.5b', digest: DIGEST, runId: RUN.toUpperCase() }, running)).toBeNull();
});

test('another model is refused, naming the running deployment, its digest and run, and what was expected', () => {
  expect(expectationRefusal({ model: 'qwen2:1.5b' }, running)).toBe(
    `the running deployment deploy:sandbox-1:chat is qwen2:0.5b (digest sha256:${DIGEST}, run ${RUN}), not the expected qwen2:1.5b`,
  );
});

test('every field that does not match is named: model, digest, revision, run', () => {
  const other = '0190a1b2-ffff-7e5f-8a9b-0c1d2e3f4a5b';
  const why = expectationRefusal(
    { model: 'qwen2:1.5b', digest: 'b'.repeat(64), revision: 'main', runId: other },
    running,
  );
  expect(why).toBe(
    `the running deployment deploy:sandbox-1:chat is qwen2:0.5b (digest sha256:${DIGEST}, run ${RUN}), ` +
      `not the expected qwen2:1.5b, digest ${'b'.repeat(64)}, revision main, run ${other}`,
  );
});

test('the first run ID of a chain is accepted as well as the current one (a continue-as-new changes only the latter)', () => {
  const continued = { ...running, runId: RUN, firstExecutionRunId: FIRST };
  expect(expectationRefusal({ runId: FIRST }, continued)).toBeNull();
  expect(expectationRefusal({ runId: RUN }, continued)).toBeNull();
});

test('a digest expectation before the pull has finished is refused with that reason; a pinned digest stands in for it', () => {
  const pulling = { ...running, stage: 'pulling', digest: null };
  expect(expectationRefusal({ digest: DIGEST }, pulling)).toBe(
    `the running deployment deploy:sandbox-1:chat is qwen2:0.5b (run ${RUN}): its digest is not known yet (stage pulling: the pull has not finished and no digest was pinned), so it cannot be checked against the expected digest ${DIGEST}`,
  );
  const pinned = { ...pulling, expectedDigest: `sha256:${DIGEST}` };
  expect(expectationRefusal({ digest: DIGEST }, pinned)).toBeNull();
  expect(expectationRefusal({ digest: 'c'.repeat(64) }, pinned)).toMatch(
    /is qwen2:0\.5b \(pinned digest sha256:a{64}, run \S+\), not the expected digest c{64}$/,
  );
});

test("the Updates' expect field is a strict object whose fields follow the deployment's own rules", () => {
  const problems = (input: unknown, schema: typeof PromoteCanaryInput | typeof RollbackDeploymentInput) => {
    const r = schema.safeParse(input);
    return r.success ? [] : formatIssues(r.error);
  };
  expect(problems({ by: 'ci', expect: { model: 'qwen2:0.5b', runId: RUN } }, PromoteCanaryInput)).toEqual([]);
  expect(
    problems({ by: 'ci', expect: { model: 'qwen$(id)', digest: 'nope', runId: '12', tag: 'x' } }, PromoteCanaryInput),
  ).toEqual([
    'expect.model: must be a model reference (name:tag, org/repo or a .gguf)',
    'expect.digest: must be a sha256 digest (64 hex)',
    'expect.runId: must be a workflow run ID (a UUID)',
    'expect: unknown field(s): tag',
  ]);
  expect(problems({ by: 'ci', reason: 'x', expect: {} }, RollbackDeploymentInput)).toEqual([
    'expect: must name at least one of model, digest, revision, runId',
  ]);
});
