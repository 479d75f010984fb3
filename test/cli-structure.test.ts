/**
 * The shape of the code, checked on its source with the TypeScript compiler's parser: no import cycles (the CLI's
 * modules none at all, the rest none that survive compilation), the CLI reaching workflows only through typed
 * contracts, and `--json` read in one place (src/cli/output.ts).
 */
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import ts from 'typescript';

const ROOT = path.resolve(__dirname, '..');
const CLI = path.join(ROOT, 'src', 'cli');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.[cm]?ts$/.test(e.name) && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

function parse(file: string): ts.SourceFile {
  return ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
}

interface Import {
  specifier: string;
  /** Erased by the compiler: `import type`, or every named binding marked `type`. */
  typeOnly: boolean;
}

/** Static imports and re-exports, `import()` and `require()` of a file. */
function importsOf(sf: ts.SourceFile): Import[] {
  const out: Import[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      const clause = node.importClause;
      const named = clause?.namedBindings;
      const allNamedTypes =
        named !== undefined && ts.isNamedImports(named) && named.elements.every((e) => e.isTypeOnly);
      out.push({
        specifier: node.moduleSpecifier.text,
        typeOnly: clause !== undefined && (clause.isTypeOnly || (clause.name === undefined && allNamedTypes)),
      });
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      const clause = node.exportClause;
      const allTypes = clause !== undefined && ts.isNamedExports(clause) && clause.elements.every((e) => e.isTypeOnly);
      out.push({ specifier: node.moduleSpecifier.text, typeOnly: node.isTypeOnly || allTypes });
    } else if (
      ts.isCallExpression(node) &&
      (node.expression.kind === ts.SyntaxKind.ImportKeyword ||
        (ts.isIdentifier(node.expression) && node.expression.text === 'require')) &&
      node.arguments[0] !== undefined &&
      ts.isStringLiteral(node.arguments[0])
    ) {
      out.push({ specifier: node.arguments[0].text, typeOnly: false });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** The file a relative specifier names (`./x`, `./x.ts`, `./x/index.ts`), or null for a package or a non-TS file. */
function resolveImport(from: string, specifier: string, known: Set<string>): string | null {
  if (!specifier.startsWith('.')) return null;
  const base = path.resolve(path.dirname(from), specifier);
  const candidates = [base, `${base}.ts`, path.join(base, 'index.ts'), base.replace(/\.js$/, '.ts')];
  return candidates.find((c) => known.has(c)) ?? null;
}

type Graph = Map<string, string[]>;

function importGraph(files: string[], opts: { withTypeImports: boolean }): Graph {
  const known = new Set(files);
  return new Map(
    files.map((f) => [
      f,
      importsOf(parse(f))
        .filter((i) => opts.withTypeImports || !i.typeOnly)
        .flatMap((i) => resolveImport(f, i.specifier, known) ?? []),
    ]),
  );
}

/** Every cycle, as the files of one strongly connected component (Tarjan), paths relative to the repo. */
function cycles(graph: Graph): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const connect = (v: string): void => {
    index.set(v, next);
    low.set(v, next);
    next++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        connect(w);
        low.set(v, Math.min(low.get(v) ?? 0, low.get(w) ?? 0));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v) ?? 0, index.get(w) ?? 0));
    }
    if (low.get(v) !== index.get(v)) return;
    const component: string[] = [];
    for (let w = stack.pop(); w !== undefined; w = w === v ? undefined : stack.pop()) {
      onStack.delete(w);
      component.push(w);
    }
    if (component.length > 1 || (graph.get(v) ?? []).includes(v)) {
      found.push(component.map((f) => path.relative(ROOT, f)).sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) connect(v);
  return found;
}

const cliFiles = sourceFiles(CLI);
const rel = (f: string): string => path.relative(ROOT, f);

test('the cycle finder reports a two-file import cycle and ignores one made only of type imports', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'gpuops-cycles-'));
  writeFileSync(path.join(dir, 'a.ts'), "import { b } from './b';\nexport const a = (): number => b;\n");
  writeFileSync(path.join(dir, 'b.ts'), "import { type A } from './c';\nexport const b = 1;\nexport * from './a';\n");
  writeFileSync(path.join(dir, 'c.ts'), "import type { b } from './b';\nexport type A = typeof b;\n");
  const files = sourceFiles(dir);
  const runtime = cycles(importGraph(files, { withTypeImports: false }));
  expect(runtime.map((c) => c.map((f) => path.basename(f)))).toEqual([['a.ts', 'b.ts']]);
  const all = cycles(importGraph(files, { withTypeImports: true }));
  expect(all.map((c) => c.map((f) => path.basename(f)))).toEqual([['a.ts', 'b.ts', 'c.ts']]);
});

test('no module of src/cli imports itself back, even through type imports (commands share leaf modules)', () => {
  expect(cycles(importGraph(cliFiles, { withTypeImports: true }))).toEqual([]);
});

test('no runtime import cycle in src, workflows, activities or workers', () => {
  const files = ['src', 'workflows', 'activities', 'workers'].flatMap((d) => sourceFiles(path.join(ROOT, d)));
  expect(cycles(importGraph(files, { withTypeImports: false }))).toEqual([]);
});

test('the CLI reaches workflows only through typed contracts: no workflows/ import, no type name as a string', () => {
  const problems: string[] = [];
  const workflowsDir = path.join(ROOT, 'workflows');
  for (const f of cliFiles) {
    const sf = parse(f);
    for (const i of importsOf(sf)) {
      const target = path.resolve(path.dirname(f), i.specifier);
      if (i.specifier.startsWith('.') && (target === workflowsDir || target.startsWith(`${workflowsDir}${path.sep}`))) {
        problems.push(`${rel(f)} imports ${i.specifier}`);
      }
    }
    const visit = (node: ts.Node): void => {
      // client.workflow.start|execute|signalWithStart|getHandle(…): src/temporal/workflows.ts wraps them by contract.
      if (
        ts.isCallExpression(node) &&
        ts.isPropertyAccessExpression(node.expression) &&
        ['start', 'execute', 'signalWithStart', 'getHandle'].includes(node.expression.name.text) &&
        ts.isPropertyAccessExpression(node.expression.expression) &&
        node.expression.expression.name.text === 'workflow'
      ) {
        problems.push(`${rel(f)}:${sf.getLineAndCharacterOfPosition(node.getStart()).line + 1} ${node.getText()}`);
      }
      // A visibility query names the type through its contract (`${deployModelWorkflow.workflowType}`).
      if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node) || ts.isTemplateLiteralToken(node)) {
        if (/WorkflowType\s*=\s*'\w/.test(node.text)) problems.push(`${rel(f)}: ${node.getText()}`);
      }
      ts.forEachChild(node, visit);
    };
    visit(sf);
  }
  expect(problems).toEqual([]);
});

test('only src/cli/output.ts reads the --json option: every command hands its result to emit()', () => {
  const readers: string[] = [];
  for (const f of cliFiles) {
    if (path.basename(f) === 'output.ts') continue;
    const sf = parse(f);
    const visit = (node: ts.Node): void => {
      const read =
        // globals().json, opts.json (a call such as res.json() is something else)
        (ts.isPropertyAccessExpression(node) &&
          node.name.text === 'json' &&
          !(ts.isCallExpression(node.parent) && node.parent.expression === node)) ||
        // const { json } = globals()
        (ts.isBindingElement(node) && (node.propertyName ?? node.name).getText() === 'json') ||
        // opts['json']
        (ts.isElementAccessExpression(node) &&
          ts.isStringLiteral(node.argumentExpression) &&
          node.argumentExpression.text === 'json');
      if (read) readers.push(`${rel(f)}:${sf.getLineAndCharacterOfPosition(node.getStart()).line + 1}`);
      ts.forEachChild(node, visit);
    };
    visit(sf);
  }
  expect(readers).toEqual([]);
});
