// What nixoci's daemons (snapshotter, image service) share: their socket and metrics flags, and how they end: on SIGTERM or SIGINT they stop accepting calls and let
// running ones finish (`stop`, bounded by the caller), release what they hold (`release`), log, and exit 0.
import { resolve } from "node:path";
import type { Logger } from "../util/logger.js";
import { parseListenAddress } from "../util/ops-http.js";
import { helpHint, UsageError } from "./args.js";
import type { CommandHelp } from "./help-format.js";

/** A required unix socket path flag, resolved and checked against the 107-byte limit of socket paths. */
export function socketPathOption(flag: string, value: string | undefined, help: CommandHelp): string {
  if (!value) throw new UsageError(`--${flag} is required; ${helpHint(help)}`);
  const p = resolve(value);
  if (Buffer.byteLength(p) > 107)
    throw new UsageError(`--${flag} ${JSON.stringify(value)}: a unix socket path must be at most 107 bytes`);
  return p;
}

/** --metrics-address HOST:PORT, checked (a usage error when malformed). */
export function metricsAddressOption(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  try {
    parseListenAddress(value);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  return value;
}

export function runUntilSignal(
  log: Logger,
  stop: () => Promise<unknown>,
  release: () => void,
): Promise<number> {
  return new Promise<number>((done) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      log.info("stopping", { signal });
      void stop()
        .catch((err: unknown) => log.error("stop", { error: err }))
        .finally(() => {
          release();
          process.off("SIGTERM", onSignal);
          process.off("SIGINT", onSignal);
          log.info("stopped");
          done(0);
        });
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
}
