// Entry point of the nixoci CLI: one module per command; errors from bad input print as one line.
import { didYouMean, UsageError } from "./args.js";
import { packageVersion } from "./shared-options.js";
import { NixociError } from "../util/errors.js";
import { describeSystemError } from "../util/fs-errors.js";

type Command = (argv: string[]) => Promise<number>;

// Loaded on demand: a command pays only for its own modules (start-up time matters for `nar dump` in scripts).
const COMMANDS: Record<string, () => Promise<Command>> = {
  build: async () => (await import("./cmd-build.js")).buildCommand,
  "path-info": async () => (await import("./cmd-path-info.js")).pathInfoCommand,
  closure: async () => (await import("./cmd-closure.js")).closureCommand,
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
  ["build", "build a layered OCI image from Nix store paths and write it to outputs"],
  ["path-info", "metadata of store paths (local store or binary cache)"],
  ["closure", "the closure of store paths, one per line, sorted"],
  ["nar", "dump, restore and list NAR archives"],
  ["cache", "push store paths into a binary cache; garbage-collect the layer cache"],
  ["substitute", "realise store paths from binary caches into a store directory"],
  ["serve", "an on-demand registry of Nix package images that is also a Nix binary cache"],
  [
    "snapshotter",
    "a containerd proxy snapshotter that composes Nix layers from the store instead of downloading them",
  ],
  [
    "image-service",
    "a CRI image service: nix:0/nix/store/... images from the store, the rest proxied to containerd",
  ],
  ["k8s", "k8s pod: a Pod manifest whose image is a nix:0 reference (no registry)"],
  ["frontend", "the BuildKit frontend (run by BuildKit; `# syntax=` its image) and its build steps"],
];
const WIDTH = Math.max(...SUMMARIES.map(([c]) => c.length)) + 2;

const HELP = `nixoci: Nix closures for the container ecosystem

usage: nixoci COMMAND [OPTIONS] [ARGS]

commands:
${SUMMARIES.map(([c, summary]) => `  ${c.padEnd(WIDTH)}${summary}`).join("\n")}

Run \`nixoci help COMMAND\` (or \`nixoci COMMAND --help\`) for a command's options; \`nixoci --version\` for the version.
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
  // A closed stdout (e.g. `nixoci closure ... | head`) is not an error worth a message.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(0);
  });
  try {
    const run = await load();
    return await run(rest);
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
