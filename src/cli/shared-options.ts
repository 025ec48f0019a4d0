// Flags that several commands take, declared once with their help (see help-format.ts): trust (which signatures
// binary caches must carry), substituters, and the daemons' log and metrics flags.
import {
  defaultLogFormat,
  parseLogFormat,
  parseLogLevel,
  type LogFormat,
  type LogLevel,
} from "../util/logger.js";
import { isLayerTarFormatName, LAYER_TAR_FORMATS, type LayerTarFormatName } from "../image/tar-header.js";
import { UsageError } from "./args.js";
import type { FlagTable } from "./help-format.js";

/** `--trusted-public-key K` (repeatable) and `--no-check-sigs`. */
export const TRUST_FLAGS = {
  "trusted-public-key": {
    type: "string",
    multiple: true,
    value: "K",
    help: "trust signatures by this key (NAME:BASE64), besides nix.conf's trusted-public-keys",
  },
  "no-check-sigs": {
    type: "boolean",
    help: "accept unsigned paths from binary caches (hashes are still checked)",
  },
} as const satisfies FlagTable;

/** `--substituter URL` (repeatable) with the trust flags its caches are checked against. */
export const SUBSTITUTER_FLAGS = {
  substituter: {
    type: "string",
    multiple: true,
    value: "URL",
    help: "a binary cache to fetch store paths missing from the store",
  },
  ...TRUST_FLAGS,
} as const satisfies FlagTable;

/** A daemon's `--log-level`, `--log-format` and `--metrics-address` (health and metrics over HTTP). */
export const DAEMON_FLAGS = {
  "metrics-address": {
    type: "string",
    value: "HOST:PORT",
    help: "serve GET /healthz and Prometheus GET /metrics here",
  },
  "log-level": {
    type: "string",
    value: "debug|info|warn|error|silent",
    help: "the least important log lines written to stderr",
    byDefault: "info",
  },
  "log-format": {
    type: "string",
    value: "text|json",
    help: "log lines for people (time, level, message, key=value) or one JSON object a line",
    byDefault: "text on a terminal, else json",
  },
} as const satisfies FlagTable;

/** `--log-level` (default info), a usage error when it is not a level. */
export function logLevelOption(value: string | undefined): LogLevel | "silent" {
  const level = parseLogLevel(value ?? "info");
  if (!level)
    throw new UsageError(
      `--log-level: unknown level ${JSON.stringify(value)} (debug, info, warn, error or silent)`,
    );
  return level;
}

/** `--log-format` (default text when stderr is a terminal, else json), a usage error when it is not a format. */
export function logFormatOption(value: string | undefined): LogFormat {
  if (value === undefined) return defaultLogFormat(process.stderr);
  const format = parseLogFormat(value);
  if (!format) throw new UsageError(`--log-format: unknown format ${JSON.stringify(value)} (text or json)`);
  return format;
}

/**
 * A layer tar format's name (default standard); a usage error naming `where` (the flag, or the spec file and key
 * it came from) when it is not one.
 */
export function tarFormatOption(value: string | undefined, where = "--tar-format"): LayerTarFormatName {
  const name = value ?? "standard";
  if (!isLayerTarFormatName(name))
    throw new UsageError(
      `${where} ${JSON.stringify(name)} is not one of ${Object.keys(LAYER_TAR_FORMATS).join(", ")}`,
    );
  return name;
}
