// The worker thread behind layer-tree.ts buildTrees: builds the trees its workerData names and posts the
// result back (an exception ends the thread with an "error" event instead).
import { parentPort, workerData } from "node:worker_threads";
import { buildTreesSync, type TreeJob } from "./layer-tree.js";

const { fsRoot, jobs } = workerData as { fsRoot: string; jobs: TreeJob[] };
parentPort?.postMessage(buildTreesSync(fsRoot, jobs));
