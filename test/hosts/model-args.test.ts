/**
 * The model arguments of vLLM and llama.cpp command lines, as a canary slot rewrites them: only the model changes,
 * every other argument stays where it was, and the name /v1/models will list is the model asked for.
 */
import { ModelArgsError, modelOfCmd, redactArgs, servesModel, withModel } from '../../src/hosts/engines/model-args';

const VLLM_ENTRYPOINT = ['python3', '-m', 'vllm.entrypoints.openai.api_server'];

describe('vLLM', () => {
  const cmd = ['--model', 'Qwen/Qwen2.5-7B-Instruct', '--gpu-memory-utilization', '0.9', '--port', '8000'];

  test('replaces --model in place and adds --revision after it', () => {
    const r = withModel('vllm', cmd, { model: 'Qwen/Qwen2.5-7B-Instruct-1M', revision: 'a1b2c3d' }, VLLM_ENTRYPOINT);
    expect(r.cmd).toEqual([
      '--model',
      'Qwen/Qwen2.5-7B-Instruct-1M',
      '--revision',
      'a1b2c3d',
      '--gpu-memory-utilization',
      '0.9',
      '--port',
      '8000',
    ]);
    expect(r.servedModel).toBe('Qwen/Qwen2.5-7B-Instruct-1M');
    expect(modelOfCmd('vllm', r.cmd)).toEqual({
      model: 'Qwen/Qwen2.5-7B-Instruct-1M',
      revision: 'a1b2c3d',
      servedName: null,
    });
  });

  test('reads --model=X, drops a stale --revision and renames --served-model-name to the new model', () => {
    const old = ['--model=Qwen/Qwen2.5-7B-Instruct', '--revision', 'main', '--served-model-name', 'chat', 'chat-v1'];
    expect(modelOfCmd('vllm', old)).toEqual({
      model: 'Qwen/Qwen2.5-7B-Instruct',
      revision: 'main',
      servedName: 'chat',
    });
    const r = withModel('vllm', old, { model: 'gpuops-sandbox/Qwen2.5-0.5B-Instruct-good' });
    // The router names the canary by the model; a served name that stayed "chat" would not match it.
    expect(r.cmd).toEqual([
      '--model',
      'gpuops-sandbox/Qwen2.5-0.5B-Instruct-good',
      '--served-model-name',
      'gpuops-sandbox/Qwen2.5-0.5B-Instruct-good',
    ]);
  });

  test('replaces the positional model of `vllm serve MODEL`, whether serve ends the entrypoint or not', () => {
    const serveCmd = ['Qwen/Qwen2.5-7B-Instruct', '--max-model-len', '8192'];
    expect(withModel('vllm', serveCmd, { model: 'org/new' }, ['vllm', 'serve']).cmd).toEqual([
      'org/new',
      '--max-model-len',
      '8192',
    ]);
    const full = ['vllm', 'serve', 'Qwen/Qwen2.5-7B-Instruct', '--port', '8000'];
    expect(modelOfCmd('vllm', full).model).toBe('Qwen/Qwen2.5-7B-Instruct');
    expect(withModel('vllm', full, { model: 'org/new', revision: 'v2' }).cmd).toEqual([
      'vllm',
      'serve',
      'org/new',
      '--revision',
      'v2',
      '--port',
      '8000',
    ]);
  });

  test('adds --model when the command names none, and knows a command that already serves the spec', () => {
    const r = withModel('vllm', ['--port', '8000'], { model: 'org/m' });
    expect(r.cmd).toEqual(['--model', 'org/m', '--port', '8000']);
    expect(servesModel('vllm', r.cmd, { model: 'org/m' })).toBe(true);
    expect(servesModel('vllm', r.cmd, { model: 'org/m', revision: 'v2' })).toBe(false);
    expect(servesModel('vllm', cmd, { model: 'org/m' })).toBe(false);
  });
});

describe('llama.cpp', () => {
  const cmd = ['-m', '/models/qwen2.5-0.5b-instruct-q4_k_m.gguf', '--host', '0.0.0.0', '--port', '8080', '-ngl', '99'];

  test('a bare .gguf name is a file beside the current model; --alias makes /v1/models list the model', () => {
    const good = 'qwen2.5-0.5b-instruct-good-q4_k_m.gguf';
    const r = withModel('llamacpp', cmd, { model: good });
    // `-m PATH` is replaced in place and `--alias` follows it; every other argument stays as it was.
    expect(r.cmd).toEqual(['-m', `/models/${good}`, '--alias', good, ...cmd.slice(2)]);
    expect(r.servedModel).toBe(good);
    expect(servesModel('llamacpp', r.cmd, { model: good })).toBe(true);
  });

  test('a Hugging Face repo[:quant] replaces -m, or -hf with its --hf-file, and an old alias', () => {
    const hf = ['-hf', 'bartowski/Qwen2.5-7B-Instruct-GGUF', '-hff', 'Qwen2.5-7B-Instruct-Q5_K_M.gguf', '-a', 'chat'];
    expect(modelOfCmd('llamacpp', hf)).toEqual({
      model: 'bartowski/Qwen2.5-7B-Instruct-GGUF/Qwen2.5-7B-Instruct-Q5_K_M.gguf',
      revision: null,
      servedName: 'chat',
    });
    expect(withModel('llamacpp', [...hf, '-c', '8192'], { model: 'Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M' }).cmd).toEqual(
      ['-hf', 'Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M', '--alias', 'Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M', '-c', '8192'],
    );
    expect(withModel('llamacpp', cmd, { model: '/srv/gguf/other.gguf' }).cmd.slice(0, 2)).toEqual([
      '-m',
      '/srv/gguf/other.gguf',
    ]);
  });

  test('refuses a revision and a name that is neither a .gguf file nor a repo', () => {
    expect(() => withModel('llamacpp', cmd, { model: 'x.gguf', revision: 'main' })).toThrow(ModelArgsError);
    expect(() => withModel('llamacpp', cmd, { model: 'not a model' })).toThrow(/\.gguf file or a Hugging Face/);
    expect(() => withModel('vllm', cmd, { model: '--model' })).toThrow(ModelArgsError);
  });
});

test('redacts the values of secret-bearing flags, in both spellings', () => {
  expect(
    redactArgs(['--model', 'm', '--api-key', 'sk-1', '--hf-token=hf_2', '-hft', 'hf_3', '--api-key-file', '/k']),
  ).toEqual([
    '--model',
    'm',
    '--api-key',
    '<redacted>',
    '--hf-token=<redacted>',
    '-hft',
    '<redacted>',
    '--api-key-file',
    '/k',
  ]);
});
