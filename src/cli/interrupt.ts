// A command stopped by Ctrl-C (SIGINT), SIGTERM or SIGHUP leaves nothing half-written: every temporary this process
// named (util/temporaries.ts: half-written layers in the layer cache, an archive or layout being written, a store
// path being added, a --no-cache build's work directory) is removed before it exits 128 + the signal's number, as a
// shell reports a process the signal ended. What a SIGKILL leaves goes with the next run's sweep instead.
import { constants as osConstants } from "node:os";
import { removeTemporariesSync, trackTemporaries } from "../util/temporaries.js";

const STOP_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/**
 * From now on, a stop signal removes this process's temporaries and exits (after `onStop`, e.g. clearing a status
 * line). The exit is immediate: work in flight (a layer being compressed, an upload) is abandoned, not finished.
 * Returns the function that uninstalls the handlers.
 */
export function removeTemporariesOnSignals(onStop?: () => void): () => void {
  trackTemporaries();
  const handler = (signal: NodeJS.Signals): void => {
    try {
      onStop?.();
    } finally {
      removeTemporariesSync();
      process.exit(128 + osConstants.signals[signal]);
    }
  };
  for (const s of STOP_SIGNALS) process.on(s, handler);
  return () => {
    for (const s of STOP_SIGNALS) process.off(s, handler);
  };
}
