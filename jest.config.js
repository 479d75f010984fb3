// Jest on Node 20 cannot require() ES modules, and execa (with its dependency tree) ships only ESM.
// Every package in node_modules that declares "type": "module" is therefore transformed to CommonJS by swc.
const fs = require('node:fs');
const path = require('node:path');

function esmPackages(dir = path.join(__dirname, 'node_modules')) {
  const names = [];
  for (const entry of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    if (entry.startsWith('.')) continue;
    const candidates = entry.startsWith('@')
      ? fs.readdirSync(path.join(dir, entry)).map((n) => `${entry}/${n}`)
      : [entry];
    for (const name of candidates) {
      try {
        const pkg = JSON.parse(fs.readFileSync(path.join(dir, name, 'package.json'), 'utf8'));
        if (pkg.type === 'module') names.push(name);
        names.push(...esmPackages(path.join(dir, name, 'node_modules')));
      } catch {
        // not a package
      }
    }
  }
  return names;
}

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

module.exports = {
  testEnvironment: 'node',
  transform: { '^.+\\.(t|j|mj)sx?$': ['@swc/jest', { jsc: { target: 'es2022' }, module: { type: 'commonjs' } }] },
  transformIgnorePatterns: [`node_modules/(?!(${[...new Set(esmPackages())].map(escape).join('|')})/)`],
  // unicorn-magic's export map has only an 'import' condition, which jest's CommonJS resolver skips.
  moduleNameMapper: { '^unicorn-magic$': '<rootDir>/node_modules/unicorn-magic/node.js' },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  globalSetup: '<rootDir>/test/global-setup.ts',
  globalTeardown: '<rootDir>/test/global-teardown.ts',
  // Workflow tests start workers and a sandbox node; two cores are shared with the Temporal server.
  maxWorkers: 2,
  testTimeout: 60_000,
};
