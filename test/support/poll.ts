// Bounded polling for tests: wait for a condition instead of sleeping a fixed time and then asserting.
import { setTimeout as sleep } from "node:timers/promises";

/** Thrown by an `until` condition when waiting longer cannot help (e.g. the process it waits for exited). */
export class GiveUp extends Error {
  override name = "GiveUp";
}

/**
 * Retries fn until it returns (or resolves) without throwing, at most timeoutMs (every intervalMs); then throws
 * its last error with `what`. An assertion inside fn is the usual condition:
 * `await until("no child left", 10_000, () => assert.deepEqual(children(), []))`. A GiveUp thrown by fn ends
 * the wait at once.
 */
export async function until<T>(
  what: string,
  timeoutMs: number,
  fn: () => Promise<T> | T,
  intervalMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof GiveUp) throw new Error(`${what}: ${err.message}`, { cause: err });
      if (Date.now() > deadline)
        throw new Error(`${what}: not done after ${timeoutMs / 1000} s: ${String(err)}`, { cause: err });
      await sleep(intervalMs);
    }
  }
}
