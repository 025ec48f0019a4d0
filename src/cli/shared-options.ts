// Flags that several commands take, declared once with their usage text: trust (which signatures binary caches
// must carry), substituters, and the daemons' log and metrics flags. A command spreads the declarations into its
// parse() options and puts the usage fragment into its USAGE line, so the flags and their help cannot drift.
import { readFileSync } from "node:fs";
import { parseLogLevel, type LogLevel } from "../util/logger.js";
import { UsageError } from "./args.js";

/** `--trusted-public-key K` (repeatable) and `--no-check-sigs`. */
export const TRUST_FLAGS = {
  "trusted-public-key": { type: "string", multiple: true },
  "no-check-sigs": { type: "boolean" },
} as const;
export const TRUST_USAGE = "[--trusted-public-key K]... [--no-check-sigs]";

/** `--substituter URL` (repeatable) with the trust flags its caches are checked against. */
export const SUBSTITUTER_FLAGS = {
  substituter: { type: "string", multiple: true },
  ...TRUST_FLAGS,
} as const;
export const SUBSTITUTER_USAGE = `[--substituter URL]... ${TRUST_USAGE}`;

/** A daemon's `--log-level` and `--metrics-address` (health and metrics over HTTP). */
export const DAEMON_FLAGS = {
  "log-level": { type: "string" },
  "metrics-address": { type: "string" },
} as const;
export const DAEMON_USAGE = "[--metrics-address HOST:PORT] [--log-level debug|info|warn|error|silent]";

/** `--log-level` (default info), a usage error when it is not a level. */
export function logLevelOption(value: string | undefined): LogLevel | "silent" {
  const level = parseLogLevel(value ?? "info");
  if (!level)
    throw new UsageError(
      `--log-level: unknown level ${JSON.stringify(value)} (debug, info, warn, error or silent)`,
    );
  return level;
}

/** The version in the package's package.json (two directories above dist/src/cli, and above src/cli). */
export function packageVersion(): string {
  for (const rel of ["../../../package.json", "../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === "nixoci" && pkg.version) return pkg.version;
    } catch {
      // not here: try the next candidate
    }
  }
  return "unknown";
}
