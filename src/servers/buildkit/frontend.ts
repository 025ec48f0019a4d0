// `nixoci frontend`: a BuildKit gateway frontend (`# syntax=<nixoci frontend image>` as a build file's first line,
// or BUILDKIT_SYNTAX). BuildKit runs the frontend image's entrypoint with its options in the environment and the
// gateway API on stdin/stdout. For a nixoci spec (nixoci.json / .yaml: the fields of `nixoci build --spec`):
//
//   context  <- http://build-context-... (dockerd's tar body; unpacked by a FileOp copy) or local://context
//   plan     =  ExecOp `nixoci frontend plan` (this same image): closure from the caches' narinfos (or, for a
//               Nix file, from the closure nix printed), the layer plan, and the fetch batches: which step makes
//               each layer (fetch-batches.ts: batches earlier builds ran are repeated verbatim from a ledger in a
//               cache mount, so they are cache hits; the new layers go into at most `fetch-batches` new steps)
//   fetch    =  an ExecOp per batch, `nixoci frontend fetch DIR=PATHS ...` (a Nix file: `copy` out of the Nix
//               cache mount), each layer written into its own output mount /out/DIR where layers are merged:
//               one snapshot, so one image layer, per planned layer, with no copy (without MergeOp, into
//               /out/DIR of one output). After one package changed exactly the steps of the changed layers run;
//               a cold build starts a few containers, not one per layer
//   layer i  =  with MergeOp (LLB cap "mergeop": BuildKit v0.10+, not dockerd's classic image store) the
//               layers' snapshots are merged as they are: a changed layer leaves every other one alone. Without
//               it each layer's tree is copied onto the layer below (FileOp), so layers above a changed one are
//               copied again
//   custom   =  the customisation layer (the symlink farm, /etc/passwd, ...), on top (merged last): made by the
//               plan step from the caches' NAR listings (`<hash>.ls`) when every path has one, so it waits for no
//               fetch; else an ExecOp `nixoci frontend custom` over the fetched layers
//   result   =  the merge or the last copy, with `containerimage.config` from the spec (BuildKit fills in rootfs
//               and history).
//
// Errors (a malformed spec, an unreachable cache, a missing path) are returned to BuildKit through the gateway,
// so `docker build` prints them; the process then exits 0, as BuildKit expects after a Return.
import { Duplex } from "node:stream";
import { createRequire } from "node:module";
import { runtimeConfig } from "../../image/config.js";
import { emptySpec, specFromObject, validateSpec, type ImageSpec } from "../../image/spec.js";
import { parseJsonObject } from "../../util/json.js";
import { cacheImportsOf, Gateway } from "./gateway.js";
import {
  copy,
  exec,
  fromDefinition,
  merge,
  source,
  type ExecMount,
  type NetMode,
  type Output,
  type State,
} from "./llb.js";
import { layerDir, type Plan, type StepLayer } from "./steps.js";
import { normalizeImageRef } from "../../oci/reference.js";

export const DEFAULT_FILENAME = "nixoci.yaml";

/**
 * YAML's parser, loaded on first use: the frontend's start is on every build's path (a no-change build is ~0.3 s),
 * and loading the package takes ~30 ms, which buildWithGateway lets happen while it waits for BuildKit's answers.
 */
let yamlParse: ((text: string) => unknown) | undefined;
function parseYaml(text: string): unknown {
  yamlParse ??= (createRequire(import.meta.url)("yaml") as typeof import("yaml")).parse;
  return yamlParse(text);
}

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

/** A spec file's text as an ImageSpec; errors name the file (and the line, for YAML). */
export function parseSpecText(text: string, filename: string): ImageSpec {
  let doc: unknown;
  try {
    doc = filename.endsWith(".json") ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new Error(
      // The parser's first line says what and where ("... at line 2, column 1:"); the rest is a snippet.
      `${filename}: not valid ${filename.endsWith(".json") ? "JSON" : "YAML"}: ${(err as Error).message.split("\n")[0]}`,
      { cause: err },
    );
  }
  const spec = { ...emptySpec(), ...specFromObject(doc, filename) };
  // BuildKit makes the store layers from the files the fetch steps write, with the store's modes and root as
  // owner; rewriting them is not done there (yet), so a spec asking for it fails rather than build otherwise.
  // A frontend build makes one platform's image: a multi-platform spec is nixoci build's; so is a base image.
  for (const k of ["perms", "uid", "gid", "platforms", "from"] as const)
    if (spec[k] !== undefined)
      throw new Error(`${filename}: ${k} is not supported by the BuildKit frontend; build with nixoci build`);
  return validateSpec(spec, filename);
}

function sessionAttrs(sessionId: string | undefined): Record<string, string> {
  return sessionId ? { "local.session": sessionId } : {};
}

/** A fetch or copy step's arguments for a batch of layers: DIR=PATH,PATH,... each. */
function stepArgs(layers: StepLayer[]): string[] {
  return layers.map((l) => `${l.dir}=${l.paths.join(",")}`);
}

/** The environment of the frontend's steps: its image's symlink farm has the compressors in /bin. */
const STEP_ENV = ["PATH=/bin:/usr/bin"];

/** The frontend's own command line inside its image (node + nixoci.js), to run its steps as ExecOps. */
function selfCommand(): string[] {
  return [process.execPath, process.argv[1], "frontend"];
}

export interface FrontendRun {
  opts: Map<string, string>;
  /** BUILDKIT_SESSION_ID: the client session local sources are read through (empty for dockerd's tar body). */
  sessionId?: string;
  gateway: Gateway;
  log: (msg: string) => void;
}

/** The store layers to make, and how a batch of them is made. */
interface LayerSource {
  plan: Plan;
  /** The plan as a file at plan.json (mounted into the customisation step). */
  planState: Output;
  /** The customisation layer's tree, when the plan step made it (plan.custom says so). */
  customTree?: LayerTree;
  /** A batch's step: where each of its layers' trees is, by directory name (see batchStep). */
  fetch(layers: StepLayer[], name: string, split: boolean): Map<string, LayerTree>;
}

/** A layer's tree: an output of its step, or a directory of it. */
interface LayerTree {
  state: Output;
  selector?: string;
}

/** What the solver's LLB caps say it can do. */
export function llbCan(caps: ReadonlyArray<{ ID: string; Enabled: boolean }>, id: string): boolean {
  return caps.some((c) => c.ID === id && c.Enabled);
}

/** How a plan step chooses fetch batches: the ledger's cache mount, its scope, new steps at most. */
interface BatchOptions {
  scope: string;
  maxNew?: number;
}

/** The plan step's options for batches (fetch-batches.ts), with the ledger mounted at /batches. */
function batchArgs(b: BatchOptions): string[] {
  return [
    "--batches",
    "/batches",
    "--batch-scope",
    b.scope,
    ...(b.maxNew === undefined ? [] : ["--max-batches", String(b.maxNew)]),
  ];
}

/** The ledger of fetch batches: one for every build of this BuildKit, locked while a plan step reads and writes it. */
const LEDGER_MOUNT = { dest: "/batches", state: undefined, cacheId: "nixoci-fetch-batches" };

/**
 * A batch step: the frontend image and `mounts`, and where its layers go. Split: each layer its own output mount
 * at /out/DIR, so its own snapshot (merged as it is). Otherwise (no MergeOp: each layer is copied onto the one
 * below anyway) one output with a directory per layer: BuildKit v0.8 fails builds whose steps consume many
 * outputs of one ExecOp ("flightcontrol: exceeded retry timeout"), and the copies take a directory as well.
 */
function batchStep(
  args: string[],
  layers: StepLayer[],
  mounts: ExecMount[],
  network: NetMode,
  name: string,
  split: boolean,
): Map<string, LayerTree> {
  const outs = exec({
    args: [...args, "--out", "/out", ...stepArgs(layers)],
    env: STEP_ENV,
    mounts: [
      ...mounts,
      ...(split
        ? layers.map((l) => ({ dest: `/out/${l.dir}`, state: undefined }))
        : [{ dest: "/out", state: undefined }]),
    ],
    network,
    name,
  });
  return new Map(
    layers.map((l) => [
      l.dir,
      split ? { state: outs[`/out/${l.dir}`] } : { state: outs["/out"], selector: `/${l.dir}` },
    ]),
  );
}

const NIX_CACHE_ID = "nixoci-nix-store";

/**
 * The plan step: `nixoci frontend plan` in this frontend's image, with the fetch-batch ledger mounted, writing
 * plan.json; solved here because the rest of the graph is made from it. The layering options are nixoci
 * build's defaults unless the spec says otherwise, so both make the same layers.
 */
async function planStep(
  run: FrontendRun,
  step: {
    args: string[];
    spec: ImageSpec;
    image: Output;
    mounts: ExecMount[];
    network: NetMode;
    name: string;
    /** Let the plan step make the customisation layer too (into its /custom output) when it can. */
    custom?: boolean;
  },
): Promise<{ plan: Plan; planned: Output; custom?: LayerTree }> {
  // One output: plan.json, and the customisation layer's tree under custom/ when the plan step made it. (A second
  // output of the step would not come back from an imported cache on Docker 28.5: the step ran again.)
  const planned = exec({
    args: [
      ...selfCommand(),
      "plan",
      "--out",
      "/out/plan.json",
      "--layering",
      step.spec.layering ?? "size",
      "--max-layers",
      String(step.spec.maxLayers ?? 100),
      ...(step.custom
        ? ["--custom", "/out/custom", ...(step.spec.user !== undefined ? ["--user", step.spec.user] : [])]
        : []),
      ...step.args,
    ],
    env: STEP_ENV,
    mounts: [
      { dest: "/", state: step.image, readonly: true },
      ...step.mounts,
      LEDGER_MOUNT,
      { dest: "/out", state: undefined },
    ],
    network: step.network,
    name: step.name,
  })["/out"];
  const planRef = await run.gateway.solve(planned);
  const plan = JSON.parse((await run.gateway.readFile(planRef, "plan.json")).toString("utf8")) as Plan;
  return { plan, planned, ...(plan.custom ? { custom: { state: planned, selector: "/custom" } } : {}) };
}

/**
 * A build file of store paths from binary caches (a nixoci spec): the closure, layer plan and fetch batches come
 * from an ExecOp of this frontend (narinfos only), each batch of layers from a fetch ExecOp keyed by its paths
 * and caches.
 */
async function specLayers(
  run: FrontendRun,
  spec: ImageSpec,
  image: Output,
  network: NetMode,
  batching: BatchOptions,
): Promise<LayerSource> {
  const cacheArgs = [
    ...spec.substituters.flatMap((u) => ["--from", u]),
    ...spec.trustedPublicKeys.flatMap((k) => ["--trusted-public-key", k]),
  ];
  // nixoci build's defaults, so both make the same layers (and diff_ids) from the same spec. The customisation
  // layer is made here too when the caches have NAR listings: then it waits for no fetch step.
  const { plan, planned, custom } = await planStep(run, {
    args: [
      ...batchArgs({ ...batching, scope: JSON.stringify([batching.scope, "fetch", ...cacheArgs]) }),
      // The narinfos and listings of earlier builds, beside the ledger: after a change only new paths are asked for.
      "--metadata-cache",
      `${LEDGER_MOUNT.dest}/metadata`,
      ...cacheArgs,
      ...spec.packages,
    ],
    spec,
    image,
    mounts: [],
    network,
    name: `nixoci: plan the layers of ${spec.packages.length} packages`,
    custom: true,
  });
  return {
    plan,
    planState: planned,
    customTree: custom,
    fetch: (layers, name, split) =>
      batchStep(
        [...selfCommand(), "fetch", ...cacheArgs],
        layers,
        [{ dest: "/", state: image, readonly: true }],
        network,
        name,
        split,
      ),
  };
}

// Runs in the toolchain image with the build's Nix cache mounted at /nix: seeds the cache from the image's own
// /nix the first time (an image that keeps nix in /nix, like nixos/nix, would otherwise lose it under the
// mount), builds the file (attribute $2 when given), and writes the roots and the closure's path infos.
const NIX_BUILD_SCRIPT = `set -eu
file="$1"; attr="$2"
if [ ! -e /nix/store ] && [ -d /toolchain/nix ]; then cp -a /toolchain/nix/. /nix/; fi
case "$file" in
*/flake.nix)
  # A flake: the attribute of its packages (default: default), built from a copy of the context in the store.
  installable="path:\${file%/flake.nix}#\${attr:-default}"
  nix --extra-experimental-features "nix-command flakes" build --no-link --no-write-lock-file "$installable"
  nix --extra-experimental-features "nix-command flakes" path-info --no-write-lock-file "$installable" > /out/roots ;;
*)
  if [ -n "$attr" ]; then nix-build "$file" -A "$attr" --no-out-link > /out/roots
  else nix-build "$file" --no-out-link > /out/roots; fi ;;
esac
nix --extra-experimental-features nix-command path-info --json -r $(cat /out/roots) > /out/closure.json`;

/**
 * A Nix file: built with nix in the toolchain image, with a persistent cache mount for /nix (nothing is rebuilt
 * or downloaded again between builds); then one ExecOp per layer copies that layer's paths out of the cache.
 */
async function nixLayers(
  run: FrontendRun,
  filename: string,
  context: Output,
  image: Output,
  network: NetMode,
  spec: ImageSpec,
  batching: BatchOptions,
): Promise<LayerSource> {
  const toolchainRef = run.opts.get("build-arg:toolchain") ?? DEFAULT_TOOLCHAIN;
  const toolchain = source(
    `docker-image://${normalizeImageRef(toolchainRef)}`,
    {},
    `nix toolchain ${toolchainRef}`,
  );
  let env = ["PATH=/usr/local/bin:/usr/bin:/bin:/nix/var/nix/profiles/default/bin"];
  try {
    const cfg = JSON.parse(
      (await run.gateway.resolveImageConfig(normalizeImageRef(toolchainRef))).config.toString(),
    ) as {
      config?: { Env?: string[] };
    };
    if (cfg.config?.Env?.length) env = cfg.config.Env;
  } catch (err) {
    run.log(
      `nixoci frontend: ${toolchainRef}: no image config (${(err as Error).message}); using a default PATH`,
    );
  }
  const attr = run.opts.get("build-arg:attr") ?? "";
  const nixConfig = nixConfigFromBuildArgs(run.opts);
  const built = exec({
    args: ["/bin/sh", "-c", NIX_BUILD_SCRIPT, "sh", `/ctx/${filename}`, attr],
    env: [...env, "HOME=/tmp", "TMPDIR=/tmp", ...(nixConfig ? [`NIX_CONFIG=${nixConfig}`] : [])],
    mounts: [
      { dest: "/", state: toolchain },
      { dest: "/toolchain", state: toolchain, readonly: true },
      { dest: "/ctx", state: context, readonly: true },
      { dest: "/nix", state: undefined, cacheId: NIX_CACHE_ID },
      { dest: "/out", state: undefined },
    ],
    network,
    name: `nix-build ${filename}${attr ? ` -A ${attr}` : ""}`,
  })["/out"];
  // The layer plan and batches, from the closure nix printed (read-only, so keyed by its content: a Nix file
  // edited without changing its closure plans nothing again).
  const { plan, planned } = await planStep(run, {
    args: [
      "--closure",
      "/in/closure.json",
      "--roots",
      "/in/roots",
      ...batchArgs({ ...batching, scope: JSON.stringify([batching.scope, "copy", NIX_CACHE_ID]) }),
    ],
    spec,
    image,
    mounts: [{ dest: "/in", state: built, readonly: true }],
    network: "none",
    name: `nixoci: plan the layers of ${filename}`,
  });
  run.log(
    `nixoci frontend: ${filename}: ${plan.roots.length} roots, ` +
      `${plan.layers.reduce((n, l) => n + l.paths.length, 0)} paths, ${plan.layers.length} store layers`,
  );
  return {
    plan,
    planState: planned,
    fetch: (layers, name, split) =>
      batchStep(
        [...selfCommand(), "copy", "--from", "/cache/store"],
        layers,
        [
          { dest: "/", state: image, readonly: true },
          { dest: "/cache", state: undefined, cacheId: NIX_CACHE_ID },
        ],
        "none",
        name,
        split,
      ),
  };
}

/** Image config and layering options of a Nix file, from build args (entrypoint, cmd, env, workdir, user, ...). */
export function specFromBuildArgs(opts: Map<string, string>): ImageSpec {
  const doc: Record<string, unknown> = {};
  const arg = (k: string): string | undefined => opts.get(`build-arg:${k}`);
  const list = (v: string): string[] =>
    v.trim().startsWith("[") ? (JSON.parse(v) as string[]) : v.split(/\s+/).filter(Boolean);
  for (const k of ["entrypoint", "cmd"]) if (arg(k) !== undefined) doc[k] = list(arg(k)!);
  if (arg("env") !== undefined) doc.env = arg("env")!.split(",").filter(Boolean);
  for (const k of ["workdir", "user", "layering"]) if (arg(k) !== undefined) doc[k] = arg(k);
  if (arg("max-layers") !== undefined) doc.maxLayers = Number(arg("max-layers"));
  return validateSpec({ ...emptySpec(), ...specFromObject(doc, "build args") }, "build args");
}

export const DEFAULT_TOOLCHAIN = "nixos/nix";

/** The Nix settings a Nix file's build takes from build args, by the args' (and Nix's) names. */
const NIX_SETTING_ARGS = ["substituters", "trusted-public-keys"] as const;

/**
 * NIX_CONFIG for a Nix file's nix-build step (Nix reads it as lines appended to nix.conf, from 2.4 on): the
 * `substituters` and `trusted-public-keys` build args, space-separated as in nix.conf, so the toolchain's nix takes
 * paths from binary caches instead of building them (a toolchain image's own nix.conf may name none). A value
 * with a line break would smuggle in other settings: refused.
 */
export function nixConfigFromBuildArgs(opts: Map<string, string>): string | undefined {
  const lines: string[] = [];
  for (const name of NIX_SETTING_ARGS) {
    const value = opts.get(`build-arg:${name}`);
    if (value === undefined) continue;
    if ([...value].some((c) => c < " " || c === "\x7f"))
      throw new Error(
        `build arg ${name}: control characters (a line break?) are not allowed; separate values by spaces`,
      );
    lines.push(`${name} = ${value.trim()}`);
  }
  return lines.length ? lines.join("\n") : undefined;
}

/**
 * `--platform` (opt "platform": a comma-separated list): an image of store paths is for the one platform its
 * paths were built for, so any other platform, or several, is refused with what this build makes.
 */
export function checkPlatforms(requested: string | undefined, spec: ImageSpec): void {
  const own = `${spec.os}/${spec.arch}`;
  const asked = (requested ?? "")
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean);
  if (asked.every((p) => p.replace(/\/$/, "") === own)) return;
  throw new Error(
    `--platform ${asked.join(",")}: this build makes ${own} images only (store paths are built for one ` +
      `platform; a spec's arch names it); build with --platform ${own} or without --platform`,
  );
}

/**
 * Which kind of build file this is: by name (*.nix is a Nix file; *.json, *.yaml, *.yml a spec), else by
 * content (what `docker build` names Dockerfile): a spec is a JSON or YAML mapping, anything else Nix.
 */
export function buildFileKind(filename: string, text: string): "nix" | "spec" {
  if (filename.endsWith(".nix")) return "nix";
  if (/\.(json|ya?ml)$/.test(filename)) return "spec";
  try {
    const doc = parseYaml(text) as unknown;
    return typeof doc === "object" && doc !== null && !Array.isArray(doc) ? "spec" : "nix";
  } catch {
    return "nix";
  }
}

export async function buildWithGateway(run: FrontendRun): Promise<void> {
  const { opts, gateway, log } = run;
  const pinged = gateway.ping();
  // Load the YAML parser while BuildKit answers (its module's start is CPU the wait leaves idle).
  setImmediate(() => parseYaml("{}"));
  const pong = await pinged;
  gateway.cacheImports = cacheImportsOf(opts);
  const filename = opts.get("filename") ?? DEFAULT_FILENAME;
  const self = opts.get("source") ?? opts.get("cmdline");
  if (!self) throw new Error("BuildKit did not say which image this frontend runs from (opt source)");
  const network: NetMode = (opts.get("force-network-mode") as NetMode | undefined) ?? "default";

  // The build context: dockerd hands the request's tar body over as an http source, which can be fetched only
  // once; these ops are byte for byte the ones the Dockerfile frontend already solved, so BuildKit reuses them.
  const ctxUrl = opts.get("context");
  const inputs = await gateway.inputs().catch(() => ({}) as Record<string, { def: Buffer[] }>);
  // The build file comes from the context, except in a session build: from the client's "dockerfile" directory
  // (it may lie outside the context).
  let context: Output;
  let buildFileState: Output;
  const given = inputs.context ? fromDefinition(inputs.context) : undefined;
  if (given) {
    // Passed by the caller (a Dockerfile frontend forwarding here, since the image offers the inputs cap).
    context = buildFileState = given;
  } else if (ctxUrl && /^https?:\/\//.test(ctxUrl)) {
    const http = source(ctxUrl, { "http.filename": "context" }, "[internal] load remote build context");
    context = buildFileState = copy(
      http,
      "/context",
      undefined,
      "/",
      { unpack: true },
      "unpack the build context",
    );
  } else {
    // The client's directories through its session (`DOCKER_BUILDKIT=1 docker build`, buildctl --local).
    context = source(
      "local://context",
      { ...sessionAttrs(run.sessionId), "local.sharedkeyhint": "context" },
      "[internal] load build context",
    );
    buildFileState = run.sessionId
      ? source(
          "local://dockerfile",
          {
            ...sessionAttrs(run.sessionId),
            "local.followpaths": JSON.stringify([filename]),
            "local.sharedkeyhint": filename,
          },
          "[internal] load build definition",
        )
      : context;
  }
  const ctxRef = await gateway.solve(buildFileState);
  let text: string;
  try {
    text = (await gateway.readFile(ctxRef, filename)).toString("utf8");
  } catch (err) {
    throw new Error(`${filename}: not found in the build context (${(err as Error).message})`, {
      cause: err,
    });
  }

  const isNix = buildFileKind(filename, text) === "nix";
  const spec = isNix ? specFromBuildArgs(opts) : parseSpecText(text.replace(/^# syntax=.*\n/, ""), filename);
  checkPlatforms(opts.get("platform"), spec);
  if (!isNix)
    log(`nixoci frontend: ${filename}: ${spec.packages.length} packages, ${spec.substituters.length} caches`);
  // New fetch steps at most: build-arg fetch-batches, else the plan step's default (the builder's cores).
  const batchArg = opts.get("build-arg:fetch-batches");
  const batchLimit = batchArg === undefined ? undefined : Number(batchArg);
  if (batchLimit !== undefined && (!Number.isInteger(batchLimit) || batchLimit < 1))
    throw new Error(`build-arg fetch-batches: expected a whole number >= 1, got ${batchArg}`);
  // Recorded batches apply to steps of this very frontend image (its steps' root filesystem).
  const resolved = await gateway.resolveImageConfig(normalizeImageRef(self)).catch(() => undefined);
  const selfDigest = resolved?.digest ?? self;
  const image = stepImage(self, resolved?.config, pong.LLBCaps ?? []);
  const batching = { scope: selfDigest, maxNew: batchLimit };
  const layers = isNix
    ? await nixLayers(run, filename, context, image, network, spec, batching)
    : await specLayers(run, spec, image, network, batching);
  const { plan } = layers;
  const merging = llbCan(pong.LLBCaps ?? [], "mergeop") && opts.get("build-arg:merge") !== "false";
  const dirs = plan.layers.map((l) => layerDir(l.paths));
  const labelOf = (paths: string[]): string => {
    const names = paths.map((p) => p.slice(p.indexOf("-") + 1));
    return `${names.slice(0, 3).join(" ")}${names.length > 3 ? ` +${names.length - 3}` : ""}`;
  };
  // Each layer's snapshot, made by the one batch of the plan holding it.
  const made = new Map<string, LayerTree>();
  for (const batch of plan.batches) {
    const mine = batch.filter((l) => dirs.includes(l.dir));
    const which = mine.map((l) => dirs.indexOf(l.dir) + 1).sort((a, b) => a - b);
    const name =
      `nixoci: fetch layer${which.length > 1 ? "s" : ""} ${which.join(",")}: ` +
      labelOf(mine.flatMap((l) => l.paths)) +
      (batch.length > mine.length
        ? ` (a step of an earlier build, with ${batch.length - mine.length} more)`
        : "");
    for (const [dir, tree] of layers.fetch(batch, name, merging)) made.set(dir, tree);
  }
  const missing = dirs.findIndex((d) => !made.has(d));
  if (missing >= 0) throw new Error(`the plan's batches do not make layer ${missing + 1}`);
  log(
    `nixoci frontend: ${plan.layers.length} store layers in ${plan.batches.length} fetch steps, ` +
      (merging ? "merged" : "each copied onto the one below (no MergeOp here)"),
  );

  // A layer: its snapshot as made, merged; or, without MergeOp, its tree copied onto the layer below.
  let chain: State;
  const stack: State[] = [];
  const place = (from: LayerTree, name: string): void => {
    if (merging) stack.push(from.state);
    else chain = copy(from.state, `${from.selector ?? ""}/`, chain, "/", { contents: true }, name);
  };
  for (const [i, layer] of plan.layers.entries())
    place(made.get(dirs[i])!, `nixoci: layer ${i + 1}: ${labelOf(layer.paths)}`);
  // The customisation layer: the plan step's, or a step over the fetched layers (it waits for all of them).
  let customTree = layers.customTree;
  let metaState: Output | undefined;
  if (customTree && merging) {
    // Merged layers are whole snapshots: the plan output's custom/ directory copied to the root of its own.
    customTree = {
      state: copy(
        customTree.state,
        `${customTree.selector}/`,
        undefined,
        "/",
        { contents: true },
        "nixoci: customisation layer (planned)",
      ),
    };
  }
  if (!customTree) {
    const outs = exec({
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
      env: STEP_ENV,
      mounts: [
        { dest: "/", state: image, readonly: true },
        { dest: "/plan", state: layers.planState, readonly: true },
        ...plan.layers.map((_, i) => ({ dest: `/layers/${i}`, ...made.get(dirs[i])!, readonly: true })),
        { dest: "/out", state: undefined },
        { dest: "/meta", state: undefined },
      ],
      network: "none",
      name: "nixoci: customisation layer",
    });
    customTree = { state: outs["/out"] };
    metaState = outs["/meta"];
  }
  place(customTree, `nixoci: layer ${plan.layers.length + 1}: customisation`);
  if (merging) chain = merge(stack, `nixoci: merge ${stack.length} layers`);
  const meta = metaState
    ? (JSON.parse(
        (await gateway.readFile(await gateway.solve(metaState), "custom.json")).toString("utf8"),
      ) as { env: string[] })
    : { env: plan.custom!.env };
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

/** The label of a frontend image whose lower layers are a whole image of their own (scripts/frontend-image.mjs). */
export const STEP_LAYERS_LABEL = "org.nixoci.frontend.step-layers";

/**
 * The root filesystem of the frontend's steps. BuildKit runs this frontend from its image and keeps that image's
 * edge alive, complete, for the whole build; a source op with the same cache key is merged into it, and BuildKit
 * before v0.32 (moby/buildkit 12d4b6375) gives an executed edge's later consumers no cache keys, so every step on
 * it misses the cache it could import (Docker 28's --cache-from ran every fetch step again). An image that
 * labels its lower layers as the steps' own image (its top layer only repeats the one below) is used through a
 * layer limit where BuildKit has one: another image to the solver, with its own keys, the same files for a step.
 */
export function stepImage(
  self: string,
  config: Buffer | undefined,
  caps: ReadonlyArray<{ ID: string; Enabled: boolean }>,
): Output {
  const attrs: Record<string, string> = {};
  const limit = config ? stepLayerLimit(config) : undefined;
  if (limit !== undefined && llbCan(caps, "source.image.layerlimit"))
    attrs["image.layerlimit"] = String(limit);
  return source(`docker-image://${normalizeImageRef(self)}`, attrs, `nixoci frontend ${self}`);
}

/** The layer count the step-layers label gives, when it names fewer layers than the image has; else undefined. */
export function stepLayerLimit(config: Buffer): number | undefined {
  let image: { config?: { Labels?: Record<string, unknown> | null }; rootfs?: { diff_ids?: unknown } };
  try {
    image = parseJsonObject(config, "the frontend image's config");
  } catch {
    return undefined;
  }
  const label = image.config?.Labels?.[STEP_LAYERS_LABEL];
  const diffIds = image.rootfs?.diff_ids;
  if (typeof label !== "string" || !/^[1-9][0-9]*$/.test(label) || !Array.isArray(diffIds)) return undefined;
  const n = Number(label);
  return n < diffIds.length ? n : undefined;
}

/** stdin/stdout as the one Duplex the HTTP/2 client needs. */
export function stdioStream(): Duplex {
  return Duplex.from({ readable: process.stdin, writable: process.stdout });
}
