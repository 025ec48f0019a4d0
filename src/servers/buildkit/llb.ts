// BuildKit's LLB (low-level build) graphs, built and marshalled by nixoci's frontend. A vertex is one pb.Op; its
// digest is "sha256:" + the hex sha256 of its marshalled bytes, and ops refer to their inputs by those digests, so
// the bytes must be deterministic: every map is written in sorted key order, and the same graph always encodes
// the same way (BuildKit's cache keys follow from it). Only what the frontend uses is modelled: sources, exec
// ops with bind/cache mounts, and file ops (copy, mkdir, mkfile, rm).
import { createHash } from "node:crypto";
import { decode, encode } from "../../proto/buildkit.js";

/** One output of a vertex; `undefined` stands for scratch (the empty filesystem). */
export interface Output {
  vertex: Vertex;
  index: number;
}
export type State = Output | undefined;

export interface Vertex {
  digest: string;
  bytes: Buffer;
  inputs: Output[];
  /** Shown in BuildKit's progress ("custom name"). */
  name?: string;
  ignoreCache?: boolean;
}

export interface Platform {
  Architecture: string;
  OS: string;
}

function sortedMap<V>(m: Record<string, V> | undefined): Record<string, V> {
  const out: Record<string, V> = {};
  for (const k of Object.keys(m ?? {}).sort()) out[k] = m![k];
  return out;
}

/**
 * The platform ops run on: set on every op but sources that are not platform-specific, as BuildKit's Go client
 * does (so the bytes, and digests, match ops other frontends make).
 */
export const DEFAULT_PLATFORM: Platform = {
  Architecture: process.arch === "x64" ? "amd64" : process.arch,
  OS: "linux",
};

function vertex(
  inputs: Output[],
  body: Record<string, unknown>,
  opts: { name?: string; platform?: Platform | null; terminal?: boolean },
): Vertex {
  const op: Record<string, unknown> = {
    inputs: inputs.map((i) => ({ digest: i.vertex.digest, index: i.index })),
    ...body,
  };
  const platform = opts.platform === undefined ? DEFAULT_PLATFORM : opts.platform;
  if (platform) op.platform = platform;
  // Go writes an empty WorkerConstraints on every op but the terminal one.
  if (!opts.terminal) op.constraints = {};
  const bytes = encode("pb.Op", op);
  return {
    digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}`,
    bytes,
    inputs,
    ...(opts.name ? { name: opts.name } : {}),
  };
}

/** A SourceOp: `docker-image://REF`, `http://...`, `local://NAME`, with its attributes. */
export function source(identifier: string, attrs: Record<string, string> = {}, name?: string): Output {
  // Only image and local sources are platform-specific (BuildKit's client drops the platform of the others).
  const specific = /^(docker-image|local|oci-layout):\/\//.test(identifier);
  return {
    vertex: vertex(
      [],
      { source: { identifier, attrs: sortedMap(attrs) } },
      { name, platform: specific ? undefined : null },
    ),
    index: 0,
  };
}

/** The index of `s` among an op's `inputs`, added at the end the first time (an op lists each input once). */
function indexIn(inputs: Output[], s: Output): number {
  const i = inputs.findIndex((x) => x.vertex.digest === s.vertex.digest && x.index === s.index);
  if (i >= 0) return i;
  inputs.push(s);
  return inputs.length - 1;
}

export interface ExecMount {
  dest: string;
  /** What is mounted (scratch when undefined, for an output-only mount). */
  state: State;
  /** A path inside `state` to mount instead of its root. */
  selector?: string;
  readonly?: boolean;
  /** A persistent cache mount (BuildKit keeps it between builds) with this id. */
  cacheId?: string;
}

export type NetMode = "default" | "host" | "none";
const NET_MODE: Record<NetMode, string> = { default: "UNSET", host: "HOST", none: "NONE" };

export interface ExecOptions {
  args: string[];
  env?: string[];
  cwd?: string;
  user?: string;
  network?: NetMode;
  /** The root filesystem is mounts[0] with dest "/". */
  mounts: ExecMount[];
  name?: string;
  platform?: Platform;
}

/**
 * An ExecOp. Returns one output per writable, non-cache mount, in mount order (outputs[0] is the root
 * filesystem after the command when "/" is writable).
 */
export function exec(o: ExecOptions): Record<string, Output> {
  const inputs: Output[] = [];
  const inputIndex = (s: State): number => (s ? indexIn(inputs, s) : -1);
  let outputs = 0;
  const outputOf: string[] = [];
  const mounts = o.mounts.map((m) => {
    const pm: Record<string, unknown> = { input: inputIndex(m.cacheId ? undefined : m.state), dest: m.dest };
    if (m.selector) pm.selector = m.selector;
    if (m.cacheId) {
      pm.mountType = "CACHE";
      pm.cacheOpt = { ID: m.cacheId, sharing: "LOCKED" };
      pm.output = -1;
    } else if (m.readonly) {
      pm.readonly = true;
      pm.output = -1;
    } else {
      pm.output = outputs++;
      outputOf.push(m.dest);
    }
    return pm;
  });
  const meta: Record<string, unknown> = { args: o.args, env: o.env ?? [], cwd: o.cwd ?? "/" };
  if (o.user) meta.user = o.user;
  const v = vertex(
    inputs,
    { exec: { meta, mounts, network: NET_MODE[o.network ?? "default"] } },
    { name: o.name, platform: o.platform },
  );
  return Object.fromEntries(outputOf.map((dest, index) => [dest, { vertex: v, index }]));
}

export interface CopyOptions {
  /** Copy the directory's contents into dest rather than the directory itself. */
  contents?: boolean;
  createDestPath?: boolean;
  followSymlink?: boolean;
  /** Unpack src if it is a tar (Docker's ADD semantics). */
  unpack?: boolean;
  /** Every copied entry's mtime, in ns since the epoch (default: kept from the source). */
  timestampNs?: number;
}

/** A FileOp with one copy action: `src` from `from` onto `onto` at `dest`. */
export function copy(
  from: State,
  src: string,
  onto: State,
  dest: string,
  o: CopyOptions = {},
  name?: string,
): Output {
  const inputs: Output[] = [];
  if (onto) inputs.push(onto);
  if (from) inputs.push(from);
  const action = {
    input: onto ? 0 : -1,
    secondaryInput: from ? inputs.length - 1 : -1,
    output: 0,
    copy: {
      src,
      dest,
      // -1 is BuildKit's "unset" for mode and timestamp (0 would mean chmod 000 and the epoch).
      mode: -1,
      followSymlink: Boolean(o.followSymlink),
      dirCopyContents: Boolean(o.contents),
      attemptUnpackDockerCompatibility: Boolean(o.unpack),
      createDestPath: Boolean(o.createDestPath),
      allowWildcard: false,
      allowEmptyWildcard: false,
      timestamp: o.timestampNs ?? -1,
    },
  };
  return { vertex: vertex(inputs, { file: { actions: [action] } }, { name }), index: 0 };
}

/** A FileOp writing one file (with its parents, mode 0755) onto `onto`. */
export function mkfile(onto: State, path: string, data: Buffer, mode = 0o644, name?: string): Output {
  const inputs = onto ? [onto] : [];
  const action = {
    input: onto ? 0 : -1,
    secondaryInput: -1,
    output: 0,
    mkfile: { path, mode, data, timestamp: -1 },
  };
  return { vertex: vertex(inputs, { file: { actions: [action] } }, { name }), index: 0 };
}

/**
 * A MergeOp: the layers of `states` stacked in order, as if each one's changes were applied onto the one before
 * (later ones win), without copying: each input stays its own layer chain, so a changed input leaves the others'
 * cache and layers alone. Scratch inputs are dropped; one input is returned as it is (as BuildKit's client does).
 * Only where the LLB cap "mergeop" is enabled.
 */
export function merge(states: State[], name?: string): State {
  const given = states.filter((s): s is Output => s !== undefined);
  if (given.length === 0) return undefined;
  if (given.length === 1) return given[0];
  const inputs: Output[] = [];
  const refs = given.map((s) => ({ input: indexIn(inputs, s) }));
  return { vertex: vertex(inputs, { merge: { inputs: refs } }, { name }), index: 0 };
}

/**
 * A state from a marshalled definition someone else made (a frontend input): its ops, unchanged, become
 * vertices of this graph; the state is what its terminal op points at.
 */
export function fromDefinition(def: { def: Buffer[] }): State {
  const byDigest = new Map<string, Vertex>();
  let root: State;
  def.def.forEach((bytes, i) => {
    const op = decode<{ inputs: Array<{ digest: string; index: number }> }>("pb.Op", bytes);
    const inputs = op.inputs.map((x) => {
      const v = byDigest.get(x.digest);
      if (!v) throw new Error(`input definition: op ${i} refers to an unknown op ${x.digest}`);
      return { vertex: v, index: Number(x.index) };
    });
    if (i === def.def.length - 1) {
      root = inputs[0];
      return;
    }
    const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
    byDigest.set(digest, { digest, bytes: Buffer.from(bytes), inputs });
  });
  return root;
}

/**
 * The marshalled graph ending at `root` (a terminal op with it as its only input, as BuildKit expects), vertices
 * in dependency order, with per-vertex metadata (names shown in progress, cache hints).
 */
export function definition(root: State): {
  def: Buffer[];
  metadata: Record<string, Record<string, unknown>>;
} {
  const seen = new Set<string>();
  const order: Vertex[] = [];
  const visit = (v: Vertex): void => {
    if (seen.has(v.digest)) return;
    seen.add(v.digest);
    for (const i of v.inputs) visit(i.vertex);
    order.push(v);
  };
  if (root) visit(root.vertex);
  const terminal = vertex(root ? [root] : [], {}, { platform: null, terminal: true });
  const metadata: Record<string, Record<string, unknown>> = {};
  for (const v of order) {
    const m: Record<string, unknown> = {};
    if (v.name) m.description = { "llb.customname": v.name };
    if (v.ignoreCache) m.ignore_cache = true;
    if (Object.keys(m).length) metadata[v.digest] = m;
  }
  return { def: [...order.map((v) => v.bytes), terminal.bytes], metadata: sortedMap(metadata) };
}
