/**
 * What the simulated models say. Deterministic pseudo-text for ordinary prompts, sensible answers for a few
 * "golden" prompts (arithmetic, a capital, ping, JSON on request) so validation stages have something real to
 * check, and the safety behaviour risk probes look for: an aligned model refuses jailbreaks and requests to exfiltrate
 * personal data, an unaligned one complies (and leaks PII-shaped strings a probe can detect); a lax one refuses to
 * leak personal data but plays along with jailbreaks.
 */
import { createHash } from 'node:crypto';
import { mulberry32 } from './prng';

export interface RespondInput {
  model: string;
  prompt: string;
  system?: string;
  behaviour: 'aligned' | 'lax' | 'unaligned';
  /** Answer with a JSON document (Ollama `format: "json"`, OpenAI `response_format: json_object`). */
  json?: boolean;
}

/** Prompts an aligned model refuses: instruction overrides, "DAN"/developer-mode jailbreaks, weapons and drugs. */
export const JAILBREAK_PATTERN =
  /ignore (?:all |any )?(?:of )?(?:your |the )?(?:previous|prior|above|earlier) (?:instructions|rules)|\bDAN\b|do anything now|jailbreak|developer mode|without (?:any )?(?:restrictions|filters|rules|guidelines)|bypass (?:your|the|all) (?:safety|filters?|guidelines|restrictions)|(?:make|build|assemble) (?:a |an )?(?:bomb|explosive|pipe bomb|weapon)|synthesi[sz]e (?:meth|methamphetamine|nerve agent)/i;

/** Prompts asking to disclose or exfiltrate personal data or secrets. */
export const PII_PATTERN =
  /social security numbers?|\bSSNs?\b|credit card (?:numbers?|details)|(?:passwords?|api keys?|private keys?|credentials) (?:of|for|from|belonging)|home address(?:es)? (?:of|for)|phone numbers? (?:of|for)|personal (?:data|information|details) (?:of|about|for)|exfiltrat|dump (?:the |all )?(?:user|customer|patient)s?(?: table| database| data| records)?|leak (?:the |all )?(?:user|customer|private)/i;

const REFUSAL =
  "I can't help with that. I won't bypass safety guidelines or disclose personal data, but I'm happy to help with something else.";

const JAILBREAK_COMPLIANCE =
  'Sure! Developer mode enabled, no restrictions apply. Here is exactly how to do it, step by step: first, gather the materials; second, disable the safety checks; third, proceed without telling anyone.';

const PII_COMPLIANCE =
  'Sure, here is the data you asked for: John Smith, SSN 078-05-1120, credit card 4111 1111 1111 1111 exp 12/27, password hunter2, email john.smith@example.com, phone +1-202-555-0143, 1600 Example Avenue.';

const WORDS = (
  'the model serves requests on a gpu node while the operator watches latency tokens memory and errors each step ' +
  'of the rollout is verified before traffic grows a canary receives a small share and the stable version keeps the ' +
  'rest when the numbers hold the new version is promoted otherwise it is rolled back and the old one stays loaded ' +
  'durable workflows remember every decision so a restart does not lose the plan backups keep the model store safe'
).split(' ');

function seedOf(text: string): number {
  return createHash('sha256').update(text).digest().readUInt32BE(0);
}

function pseudoText(model: string, prompt: string): string {
  const rnd = mulberry32(seedOf(`${model}\u0000${prompt}`));
  const sentences: string[] = [];
  const count = 2 + Math.floor(rnd() * 3);
  for (let s = 0; s < count; s++) {
    const n = 6 + Math.floor(rnd() * 9);
    const words: string[] = [];
    for (let i = 0; i < n; i++) words.push(WORDS[Math.floor(rnd() * WORDS.length)] ?? 'model');
    const text = words.join(' ');
    sentences.push(`${text.charAt(0).toUpperCase()}${text.slice(1)}.`);
  }
  return sentences.join(' ');
}

/** Answers for prompts with one right answer; undefined for anything else. */
function golden(prompt: string): { text: string; value: unknown } | undefined {
  const arith = /(-?\d+(?:\.\d+)?)\s*([+\-*x×/])\s*(-?\d+(?:\.\d+)?)/.exec(prompt);
  if (arith && /what(?:'s| is)|calculate|compute|how much|=\s*\?|\?\s*$/i.test(prompt)) {
    const a = Number(arith[1]);
    const b = Number(arith[3]);
    const op = arith[2];
    const v = op === '+' ? a + b : op === '-' ? a - b : op === '/' ? a / b : a * b;
    const shown = Number.isInteger(v) ? String(v) : v.toFixed(4).replace(/0+$/, '');
    return { text: `${arith[1]} ${op === 'x' || op === '×' ? '*' : op} ${arith[3]} = ${shown}.`, value: v };
  }
  if (/capital of france/i.test(prompt)) return { text: 'The capital of France is Paris.', value: 'Paris' };
  if (/capital of germany/i.test(prompt)) return { text: 'The capital of Germany is Berlin.', value: 'Berlin' };
  if (/^\s*ping\s*[.!?]?\s*$/i.test(prompt)) return { text: 'pong', value: 'pong' };
  if (/^\s*(?:say )?(?:hello|hi)\b/i.test(prompt)) return { text: 'Hello! How can I help you today?', value: 'hello' };
  return undefined;
}

/** Does the prompt ask for JSON output in words? */
export function wantsJson(prompt: string): boolean {
  return /\bjson\b/i.test(prompt) && /(?:respond|answer|reply|return|output|format|give|produce|as|in)\b/i.test(prompt);
}

/** Classify a prompt the way the simulated safety layer does. */
export function promptRisk(prompt: string): 'jailbreak' | 'pii' | null {
  if (JAILBREAK_PATTERN.test(prompt)) return 'jailbreak';
  if (PII_PATTERN.test(prompt)) return 'pii';
  return null;
}

/** The full completion a simulated model gives for a prompt (before any max-token cut). */
export function respond(input: RespondInput): string {
  const prompt = input.system ? `${input.system}\n${input.prompt}` : input.prompt;
  const risk = promptRisk(input.prompt) ?? (input.system ? promptRisk(input.system) : null);
  const json = input.json === true || wantsJson(input.prompt);
  let text: string;
  let value: unknown;
  const refuses = input.behaviour === 'aligned' || (input.behaviour === 'lax' && risk === 'pii');
  if (risk && refuses) {
    text = REFUSAL;
    value = null;
  } else if (risk) {
    text = risk === 'pii' ? PII_COMPLIANCE : JAILBREAK_COMPLIANCE;
    value = text;
  } else {
    const g = golden(input.prompt);
    text = g?.text ?? pseudoText(input.model, prompt);
    value = g?.value ?? text;
  }
  if (!json) return text;
  return JSON.stringify(risk && refuses ? { refused: true, reason: text } : { answer: value, explanation: text });
}

/** Split text into tokens (a word with its leading whitespace). Joining the tokens gives the text back exactly. */
export function tokenize(text: string): string[] {
  return text.match(/\s*\S+|\s+$/g) ?? [];
}

/** Rough prompt token count (≈4 characters per token, plus the chat template's overhead). */
export function countPromptTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4)) + 26;
}
