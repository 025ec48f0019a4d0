// How nixoci's daemons (snapshotter, image service) end: on SIGTERM or SIGINT they stop accepting calls and let
// running ones finish (`stop`, bounded by the caller), release what they hold (`release`), log, and exit 0.
import type { Logger } from "../registry/logging.js";

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
