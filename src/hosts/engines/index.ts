/** Engine HTTP clients (Ollama, vLLM, llama.cpp) and the engine health probe. */
export * from './http';
export * from './ollama';
export * from './openai-compat';
export * from './probe';
