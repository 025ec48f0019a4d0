// Entry point of the nixoci CLI: one module per command; errors from bad input print as one line.
import { didYouMean, UsageError } from "./args.js";
import {
  BUILD,
  DIFF,
  CACHE,
  CLOSURE,
  FRONTEND,
  IMAGE_SERVICE,
  K8S_POD,
  NAR,
  PATH_INFO,
  SBOM,
  SERVE,
  SNAPSHOTTER,
  SUBSTITUTE,
} from "./help-texts.js";
import { packageVersion } from "../util/package-files.js";
import { closedStdoutIsQuiet } from "./stdout-product.js";
import { NixociError } from "../util/errors.js";
import { describeSystemError, fsError } from "../util/fs-errors.js";

type Command = (argv: string[]) => Promise<number>;

// Loaded on demand: a command pays only for its own modules (start-up time matters for `nar dump` in scripts).
const COMMANDS: Record<string, () => Promise<Command>> = {
  build: async () => (await import("./cmd-build.js")).buildCommand,
  diff: async () => (await import("./cmd-diff.js")).diffCommand,
  "path-info": async () => (await import("./cmd-path-info.js")).pathInfoCommand,
  closure: async () => (await import("./cmd-closure.js")).closureCommand,
  sbom: async () => (await import("./cmd-sbom.js")).sbomCommand,
  nar: async () => (await import("./cmd-nar.js")).narCommand,
  cache: async () => (await import("./cmd-cache.js")).cacheCommand,
  substitute: async () => (await import("./cmd-substitute.js")).substituteCommand,
  serve: async () => (await import("./cmd-serve.js")).serveCommand,
  snapshotter: async () => (await import("./cmd-snapshotter.js")).snapshotterCommand,
  "image-service": async () => (await import("./cmd-image-service.js")).imageServiceCommand,
  k8s: async () => (await import("./cmd-k8s.js")).k8sCommand,
  frontend: async () => (await import("./cmd-frontend.js")).frontendCommand,
};

/** The commands with their one-line summaries, in the order the help lists them. */
const SUMMARIES: Array<[string, string]> = [
  BUILD,
  DIFF,
  PATH_INFO,
  CLOSURE,
  SBOM,
  NAR,
  CACHE,
  SUBSTITUTE,
  SERVE,
  SNAPSHOTTER,
  IMAGE_SERVICE,
  K8S_POD,
  FRONTEND,
].map((h) => [h.name.split(" ")[0], h.summary]);
const WIDTH = Math.max(...SUMMARIES.map(([c]) => c.length)) + 2;

const HELP = `nixoci: Nix closures for the container ecosystem

usage: nixoci COMMAND [OPTIONS] [ARGS]

commands:
${SUMMARIES.map(([c, summary]) => `  ${c.padEnd(WIDTH)}${summary}`).join("\n")}

examples:
  nixoci build ./result -o oci:./image:latest         # an OCI layout of ./result's closure
  nixoci build ./result -o - | docker load            # straight into docker
  nixoci serve --nix-file examples/packages.nix       # a registry that builds images of package names

Run \`nixoci help COMMAND\` (or \`nixoci COMMAND --help\`) for a command's options and examples;
\`nixoci --version\` for the version.
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  // `nixoci help build` is `nixoci build --help`.
  if (command === "help" && rest.length > 0)
    return Object.hasOwn(COMMANDS, rest[0]) ? main([rest[0], "--help"]) : main([rest[0]]);
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    process.stdout.write(HELP);
    return command === undefined ? 2 : 0;
  }
  if (command === "--version" || command === "-V" || command === "version") {
    process.stdout.write(`nixoci ${packageVersion()}\n`);
    return 0;
  }
  const load = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!load) {
    const guess = didYouMean(command, Object.keys(COMMANDS));
    process.stderr.write(
      `nixoci: unknown command ${JSON.stringify(command)}${guess ? ` (did you mean ${guess}?)` : ""}\n${HELP}`,
    );
    return 2;
  }
  // A closed stdout (e.g. `nixoci closure ... | head`) is not an error worth a message — unless stdout carries the
  // product: then the write that failed rejects and the command reports it (the handler only keeps the error from
  // being unhandled).
  let stdoutFailed: NodeJS.ErrnoException | undefined;
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE" && closedStdoutIsQuiet()) process.exit(0);
    stdoutFailed ??= err;
  });
  // Progress and logs on a closed stderr (`nixoci build ... 2>&1 | head`) must not stop the work: there is nowhere
  // left to report the failure to, and the product does not depend on it.
  process.stderr.on("error", () => {});
  try {
    const run = await load();
    const status = await run(rest);
    // A write to stdout that failed (a full disk, `> /dev/full`) is reported as the stream's 'error' event, a
    // turn later: the command's output is incomplete, so it fails, whatever it returned.
    await new Promise((resolve) => setImmediate(resolve));
    if (stdoutFailed && status === 0) {
      process.stderr.write(`nixoci: ${describe(fsError("stdout", stdoutFailed, "cannot write"))}\n`);
      return 1;
    }
    return status;
  } catch (err) {
    process.stderr.write(`nixoci: ${describe(err)}\n`);
    return err instanceof UsageError ? 2 : 1;
  }
}

/**
 * One line for any error: ours are worded already; a failed system call nobody worded names its path (never a
 * temporary's) and the problem in words; anything else is a bug, its message (NIXOCI_DEBUG=1: its stack).
 */
function describe(err: unknown): string {
  if (err instanceof NixociError || err instanceof UsageError) return err.message;
  const system = describeSystemError(err);
  if (system) return system;
  const e = err as Error | undefined;
  if (process.env.NIXOCI_DEBUG && e?.stack) return e.stack;
  return e?.message ?? String(err);
}
