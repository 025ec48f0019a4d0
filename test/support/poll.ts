// Bounded polling for tests: wait for a condition instead of sleeping a fixed time and then asserting.
import { setTimeout as sleep } from "node:timers/promises";

/**
 * Retries fn until it returns (or resolves) without throwing, at most timeoutMs (every intervalMs); then throws
 * its last error with `what`. An assertion inside fn is the usual condition:
 * `await until("no child left", 10_000, () => assert.deepEqual(children(), []))`.
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
      if (Date.now() > deadline)
        throw new Error(`${what}: not done after ${timeoutMs / 1000} s: ${String(err)}`, { cause: err });
      await sleep(intervalMs);
    }
  }
}
