// The production test target: the same jest setup as jest.config.js, with test/global-setup.ts starting the
// PostgreSQL-backed temporal-server that docker-compose.yaml runs (scripts/test-temporal-server.ts,
// TEMPORAL_TARGET=production) instead of the dev server, and a representative set of the end-to-end test files
// (unchanged: the same files run on both targets) plus the production-only tests under test/production/.
//
//   npm run test:production        (CI: .ci/run, after npm test)
import base from './jest.config.js';

process.env.TEMPORAL_TARGET = 'production';

export default {
  ...base,
  testMatch: [
    '<rootDir>/test/temporal-server.test.ts',
    '<rootDir>/test/inspect-node.test.ts',
    '<rootDir>/test/deploy.test.ts',
    '<rootDir>/test/recovery.test.ts',
    '<rootDir>/test/backup.test.ts',
    '<rootDir>/test/hooks/receiver.test.ts',
    '<rootDir>/test/production/**/*.prod.ts',
  ],
};
