/**
 * The gpuops command. Every subcommand validates its input (zod) and exits 2 on bad input with field-named
 * errors, 1 on a runtime failure, without stack traces; with --json, results are JSON on stdout and errors a JSON
 * object on stderr (src/cli/output.ts).
 */
import { createProgram, type Program } from './context';
import { registerBackupCommands } from './backup';
import { registerCodecServerCommand } from './codec-server';
import { registerConfigCommands } from './config';
import { registerDeployCommands } from './deploy';
import { registerHooksCommand } from './hooks';
import { commanderErrorStream, reportError } from './output';
import { registerRecoveryCommands } from './recovery';
import { registerRouterCommand } from './router';
import { registerSandboxCommands } from './sandbox';
import { registerStatusCommand } from './status';
import { registerUpCommand } from './up';

export function buildProgram(): Program {
  const program = createProgram().showHelpAfterError();
  // Set before the commands are made, so they inherit it: usage errors reach main() (exit 2), not process.exit.
  program.exitOverride().configureOutput(commanderErrorStream(() => program.opts()));

  registerUpCommand(program);
  registerStatusCommand(program);
  registerConfigCommands(program);
  registerSandboxCommands(program);
  registerRecoveryCommands(program);
  registerDeployCommands(program);
  registerBackupCommands(program);
  registerRouterCommand(program);
  registerHooksCommand(program);
  registerCodecServerCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    return reportError(program.opts(), err);
  }
}

if (require.main === module) {
  void main(process.argv).then((code) => {
    process.exitCode = code;
  });
}
