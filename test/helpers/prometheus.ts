/** Scrapes in tests (parsed by src/hosts/engines/openai-compat.ts): lookups by labels, and promtool's linter. */
import { execa } from 'execa';
import type { PromSample } from '../../src/hosts/engines/openai-compat';

/** The samples named `name` whose labels include every one of `labels`. */
export function samplesOf(samples: PromSample[], name: string, labels: Record<string, string> = {}): PromSample[] {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

/** `promtool check metrics` over a scrape: its exit code and what it complained about. */
export async function promtoolLint(text: string): Promise<{ exitCode: number; problems: string }> {
  const r = await execa('promtool', ['check', 'metrics'], { input: text, reject: false });
  return { exitCode: r.exitCode ?? -1, problems: `${r.stdout}${r.stderr}`.trim() };
}
