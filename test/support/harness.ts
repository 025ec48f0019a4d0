// Loaded into every test process before its test file (`node --test --import .../harness.js`, see
// scripts/node-test-args.mjs): an uncaught exception, an unhandled rejection or an unhandled 'error' event
// anywhere in the process fails the file.
//
// node:test fails the running test with such an error, but one that comes after its test ended (a stream
// that fails once the test has passed) is only a diagnostic plus process.exitCode = 1, which anything
// setting the exit code later undoes (`process.exitCode = 0` in an exit hook): the file then passes. Here
// each such error is recorded; at exit they are printed and the exit code is made non-zero, whatever it was.

const errors: unknown[] = [];

function record(err: unknown): void {
  if (errors.includes(err)) return; // a rejection rethrown below arrives twice
  // Registered at the first error, so it runs after the exit hooks registered before (at import time).
  if (errors.push(err) === 1) process.on("exit", failExit);
}

function failExit(): void {
  const text = errors.map((e) => (e instanceof Error ? (e.stack ?? e.message) : String(e))).join("\n");
  process.stderr.write(`\ntest harness: ${errors.length} uncaught error(s) in this test process:\n${text}\n`);
  process.exitCode = 1;
}

// A monitor observes without handling: the runner still fails the current test, or Node still crashes.
process.on("uncaughtExceptionMonitor", (err) => record(err));
// node:test handles rejections itself once a test exists; before that, keep Node's default (a crash).
process.on("unhandledRejection", (reason) => {
  record(reason);
  if (process.listenerCount("unhandledRejection") === 1) throw reason;
});
