// The worker thread behind bcrypt-pool.ts: compares one password with one bcrypt hash per message, off the
// main thread (bcryptjs is pure JavaScript: a cost-12 check is ~250 ms of CPU that would otherwise stall
// every other request), and answers under the message's id.
import { parentPort } from "node:worker_threads";
import bcrypt from "bcryptjs";

parentPort?.on("message", (m: { id: number; password: string; hash: string }) => {
  let ok = false;
  try {
    ok = bcrypt.compareSync(m.password, m.hash);
  } catch {
    // a malformed hash never matches
  }
  parentPort?.postMessage({ id: m.id, ok });
});
