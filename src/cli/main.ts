// Entry point of the nixoci CLI: one module per command; errors from bad input print as one line.
import { UsageError } from "./args.js";
import { cacheCommand } from "./cmd-cache.js";
import { closureCommand } from "./cmd-closure.js";
import { narCommand } from "./cmd-nar.js";
import { pathInfoCommand } from "./cmd-path-info.js";
import { substituteCommand } from "./cmd-substitute.js";
import { NixociError } from "../util/errors.js";

const COMMANDS: Record<string, (argv: string[]) => Promise<number>> = {
  "path-info": pathInfoCommand,
  closure: closureCommand,
  nar: narCommand,
  cache: cacheCommand,
  substitute: substituteCommand,
};

const HELP = `nixoci: Nix closures for the container ecosystem

usage: nixoci COMMAND [OPTIONS] [ARGS]

commands:
  path-info   metadata of store paths (local store or binary cache)
  closure     the closure of store paths, one per line, sorted
  nar         dump, restore and list NAR archives
  cache       push store paths into a binary cache
  substitute  realise store paths from binary caches into a store directory

Run \`nixoci COMMAND --help\` for a command's options.
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    process.stdout.write(HELP);
    return command === undefined ? 2 : 0;
  }
  if (command === "--version") {
    process.stdout.write("nixoci 0.1.0\n");
    return 0;
  }
  const run = COMMANDS[command];
  if (!run) {
    process.stderr.write(`nixoci: unknown command ${JSON.stringify(command)}\n${HELP}`);
    return 2;
  }
  // A closed stdout (e.g. `nixoci closure ... | head`) is not an error worth a message.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(0);
  });
  try {
    return await run(rest);
  } catch (err) {
    process.stderr.write(`nixoci: ${describe(err)}\n`);
    return err instanceof UsageError ? 2 : 1;
  }
}

function describe(err: unknown): string {
  if (err instanceof NixociError || err instanceof UsageError) return err.message;
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === "string" && e.path)
    return `${e.path}: ${e.code === "ENOENT" ? "no such file or directory" : e.message}`;
  if (process.env.NIXOCI_DEBUG && e?.stack) return e.stack;
  return e?.message ?? String(err);
}
