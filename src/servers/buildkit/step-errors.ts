// The line a failed frontend build ends with. BuildKit words a failed step as `process "<its whole command line>" did
// not complete successfully: exit code: N` (v0.8: `executor failed running [<command>]: exit code: N`), behind the
// gateway method that met it (`/moby.buildkit.v1.frontend.LLBBridge/ReadFile: ...`). The command of a plan or fetch
// step carries every store path and cache option, a Nix file's step a whole shell script: hundreds of characters
// that hide the point. The step's own output, which the client prints just above, says why it failed; this line
// names the step.
import { oneLine } from "../../util/errors.js";

const GATEWAY_METHOD = /^\/moby\.buildkit\.v1\.frontend\.LLBBridge\/\w+: /;
const FAILED_PROCESS = /process "((?:[^"\\]|\\.)*)" did not complete successfully: exit code: (\d+)/s;
const FAILED_EXECUTOR = /executor failed running \[(.*)\]: exit code: (\d+)/s;

/** A build's error for the user: one line, a failed step named by what it does rather than its command line. */
export function buildErrorLine(message: string): string {
  const text = message.replace(GATEWAY_METHOD, "");
  const failed = FAILED_PROCESS.exec(text) ?? FAILED_EXECUTOR.exec(text);
  if (!failed) return oneLine(text);
  return `${stepOfCommand(failed[1])} failed with exit code ${failed[2]}; its output above says why`;
}

/** Which of the frontend's steps a command line is. */
function stepOfCommand(command: string): string {
  const sub = / frontend (plan|fetch|copy|custom)\b/.exec(command)?.[1];
  switch (sub) {
    case "plan":
      return "the plan step (nixoci frontend plan)";
    case "fetch":
      return "a fetch step (nixoci frontend fetch)";
    case "copy":
      return "a copy step (nixoci frontend copy)";
    case "custom":
      return "the customisation step (nixoci frontend custom)";
  }
  if (/^\/bin\/sh -c /.test(command) && /\bnix(-build)?\b/.test(command)) return "the nix-build step";
  const shown = oneLine(command);
  return `the step "${shown.length > 80 ? `${shown.slice(0, 77)}...` : shown}"`;
}
