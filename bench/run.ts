// Benchmark entry point (`npm run bench`): runs every benchmark in turn.
import { benchNar } from "./nar.js";

await benchNar();
await (await import("./build.js")).benchBuild();
await (await import("./serve.js")).benchServe();
await (await import("./cri.js")).benchCri();
await (await import("./frontend.js")).benchFrontend();
await (await import("./layers.js")).benchLayers();
await (await import("./limits.js")).benchLimits();
await (await import("./auth.js")).benchAuth();
await (await import("./load.js")).benchLoad();
await (await import("./mounts.js")).benchMounts();
