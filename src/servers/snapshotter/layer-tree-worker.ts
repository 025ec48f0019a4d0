// The worker thread behind layer-tree.ts buildTrees: a long-lived thread that builds the trees each message
// names and answers with the result (or the error) under the message's id.
import { parentPort } from "node:worker_threads";
import { buildTreesSync, type TreeJob } from "./layer-tree.js";

parentPort?.on("message", (m: { id: number; fsRoot: string; jobs: TreeJob[] }) => {
  try {
    parentPort?.postMessage({ id: m.id, result: buildTreesSync(m.fsRoot, m.jobs) });
  } catch (err) {
    parentPort?.postMessage({ id: m.id, error: (err as Error).message ?? String(err) });
  }
});
