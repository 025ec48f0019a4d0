// `nixoci frontend`: a BuildKit gateway frontend (`# syntax=<nixoci frontend image>` as a build file's first line,
// or BUILDKIT_SYNTAX). BuildKit runs the frontend image's entrypoint with its options in the environment and the
// gateway API on stdin/stdout. For a nixoci spec (nixoci.json / .yaml: the fields of `nixoci build --spec`):
//
//   context  <- http://build-context-... (dockerd's tar body; unpacked by a FileOp copy) or local://context
//   plan     =  ExecOp `nixoci frontend plan` (this same image): closure from the caches' narinfos + layer plan
//   layer i  =  ExecOp `nixoci frontend fetch PATHS_i` -> a tree of exactly layer i's store paths, then a FileOp
//               copy of it onto layer i-1: one snapshot, so one image layer, per planned layer, bottom first;
//               a fetch step is cached by its paths alone, so a rebuild after one package changed fetches only
//               the changed layers again
//   custom   =  ExecOp `nixoci frontend custom` over the fetched layers (the symlink farm, /etc/passwd, ...),
//               copied on top
//   result   =  the last copy, with `containerimage.config` from the spec (dockerd fills in rootfs and history).
//
// Errors (a malformed spec, an unreachable cache, a missing path) are returned to BuildKit through the gateway,
// so `docker build` prints them; the process then exits 0, as BuildKit expects after a Return.
import { Duplex } from "node:stream";
import { parse as parseYaml } from "yaml";
import { runtimeConfig } from "../image/config.js";
import { emptySpec, specFromObject, validateSpec, type ImageSpec } from "../image/spec.js";
import { Gateway } from "./gateway.js";
import { copy, exec, source, type NetMode, type Output, type State } from "./llb.js";
import type { Plan } from "./steps.js";

export const DEFAULT_FILENAME = "nixoci.yaml";

/** BUILDKIT_FRONTEND_OPT_<i>=<key>=<value> -> key -> value. */
export function frontendOpts(env: NodeJS.ProcessEnv): Map<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of Object.entries(env)) {
    if (!k.startsWith("BUILDKIT_FRONTEND_OPT_") || v === undefined) continue;
    const eq = v.indexOf("=");
    if (eq > 0) out.set(v.slice(0, eq), v.slice(eq + 1));
  }
  return out;
}

/** A Docker reference as BuildKit's docker-image source wants it (docker.io/library/NAME:latest). */
export function normalizeImageRef(ref: string): string {
  let name = ref;
  const first = name.split("/")[0];
  if (!name.includes("/")) name = `docker.io/library/${name}`;
  else if (!(first.includes(".") || first.includes(":") || first === "localhost")) name = `docker.io/${name}`;
  const last = name.slice(name.lastIndexOf("/") + 1);
  if (!last.includes(":") && !name.includes("@")) name += ":latest";
  return name;
}

/** A spec file's text as an ImageSpec; errors name the file (and the line, for YAML). */
export function parseSpecText(text: string, filename: string): ImageSpec {
  let doc: unknown;
  try {
    doc = filename.endsWith(".json") ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new Error(
      `${filename}: not valid ${filename.endsWith(".json") ? "JSON" : "YAML"}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  const spec = { ...emptySpec(), ...specFromObject(doc, filename) };
  return validateSpec(spec, filename);
}

/** The environment of the frontend's steps: its image's symlink farm has the compressors in /bin. */
const STEP_ENV = ["PATH=/bin:/usr/bin"];

/** The frontend's own command line inside its image (node + nixoci.js), to run its steps as ExecOps. */
function selfCommand(): string[] {
  return [process.execPath, process.argv[1], "frontend"];
}

export interface FrontendRun {
  opts: Map<string, string>;
  gateway: Gateway;
  log: (msg: string) => void;
}

export async function buildWithGateway({ opts, gateway, log }: FrontendRun): Promise<void> {
  await gateway.ping();
  const filename = opts.get("filename") ?? DEFAULT_FILENAME;
  const self = opts.get("source") ?? opts.get("cmdline");
  if (!self) throw new Error("BuildKit did not say which image this frontend runs from (opt source)");
  const image: State = source(`docker-image://${normalizeImageRef(self)}`, {}, `nixoci frontend ${self}`);
  const network: NetMode = (opts.get("force-network-mode") as NetMode | undefined) ?? "default";

  // The build context: dockerd hands the request's tar body over as an http source.
  const ctxUrl = opts.get("context");
  let context: Output;
  if (ctxUrl && /^https?:\/\//.test(ctxUrl)) {
    const http = source(ctxUrl, { "http.filename": "context" }, "[internal] load remote build context");
    context = copy(http, "/context", undefined, "/", { unpack: true }, "unpack the build context");
  } else {
    context = source(
      "local://context",
      { "local.sharedkeyhint": "context", "local.unique": "nixoci" },
      "load build context",
    );
  }
  const ctxRef = await gateway.solve(context);
  let text: string;
  try {
    text = (await gateway.readFile(ctxRef, filename)).toString("utf8");
  } catch (err) {
    throw new Error(`${filename}: not found in the build context (${(err as Error).message})`, {
      cause: err,
    });
  }
  if (filename.endsWith(".nix"))
    throw new Error(
      `${filename}: building Nix files is not supported by this frontend version yet; use a nixoci spec`,
    );
  const spec = parseSpecText(text.replace(/^# syntax=.*\n/, ""), filename);
  log(`nixoci frontend: ${filename}: ${spec.packages.length} packages, ${spec.substituters.length} caches`);

  const cacheArgs = [
    ...spec.substituters.flatMap((u) => ["--from", u]),
    ...spec.trustedPublicKeys.flatMap((k) => ["--trusted-public-key", k]),
  ];
  // nixoci build's defaults, so both make the same layers (and diff_ids) from the same spec.
  const layering = spec.layering ?? "size";
  const maxLayers = spec.maxLayers ?? 100;
  const planned = exec({
    args: [
      ...selfCommand(),
      "plan",
      "--out",
      "/out/plan.json",
      "--layering",
      layering,
      "--max-layers",
      String(maxLayers),
      ...cacheArgs,
      ...spec.packages,
    ],
    env: STEP_ENV,
    mounts: [
      { dest: "/", state: image, readonly: true },
      { dest: "/out", state: undefined },
    ],
    network,
    name: `nixoci: plan the layers of ${spec.packages.length} packages`,
  });
  const planRef = await gateway.solve(planned["/out"]);
  const plan = JSON.parse((await gateway.readFile(planRef, "plan.json")).toString("utf8")) as Plan;

  let chain: State;
  const fetched: Output[] = [];
  for (const [i, layer] of plan.layers.entries()) {
    const names = layer.paths.map((p) => p.slice(p.indexOf("-") + 1));
    const label = `${names.slice(0, 3).join(" ")}${names.length > 3 ? ` +${names.length - 3}` : ""}`;
    const out = exec({
      args: [...selfCommand(), "fetch", "--out", "/out", ...cacheArgs, ...layer.paths],
      env: STEP_ENV,
      mounts: [
        { dest: "/", state: image, readonly: true },
        { dest: "/out", state: undefined },
      ],
      network,
      name: `nixoci: fetch layer ${i + 1}/${plan.layers.length + 1}: ${label}`,
    })["/out"];
    fetched.push(out);
    chain = copy(out, "/", chain, "/", { contents: true }, `nixoci: layer ${i + 1}: ${label}`);
  }
  const custom = exec({
    args: [
      ...selfCommand(),
      "custom",
      "--plan",
      "/plan/plan.json",
      "--layers",
      "/layers",
      "--out",
      "/out",
      "--meta",
      "/meta/custom.json",
      ...(spec.user !== undefined ? ["--user", spec.user] : []),
    ],
    mounts: [
      { dest: "/", state: image, readonly: true },
      { dest: "/plan", state: planned["/out"], readonly: true },
      ...fetched.map((f, i) => ({ dest: `/layers/${i}`, state: f, readonly: true })),
      { dest: "/out", state: undefined },
      { dest: "/meta", state: undefined },
    ],
    network: "none",
    name: "nixoci: customisation layer",
  });
  chain = copy(
    custom["/out"],
    "/",
    chain,
    "/",
    { contents: true },
    `nixoci: layer ${plan.layers.length + 1}: customisation`,
  );
  const metaRef = await gateway.solve(custom["/meta"]);
  const meta = JSON.parse((await gateway.readFile(metaRef, "custom.json")).toString("utf8")) as {
    env: string[];
  };
  const resultRef = await gateway.solve(chain);
  const config = {
    architecture: spec.arch,
    os: spec.os,
    created: spec.created,
    config: runtimeConfig(spec, meta.env),
  };
  await gateway.return({
    ref: resultRef,
    metadata: { "containerimage.config": Buffer.from(JSON.stringify(config)) },
  });
}

/** stdin/stdout as the one Duplex the HTTP/2 client needs. */
export function stdioStream(): Duplex {
  return Duplex.from({ readable: process.stdin, writable: process.stdout });
}
