// Building a nix layer's tree (fs/nix/store/<basename> per store path) without blocking the event loop: the
// gRPC server keeps answering while a closure of thousands of files is replicated. The work runs in a
// worker thread (layer-tree-worker.ts) with plain synchronous syscalls: fs.promises would free the event loop
// too, but pays two thread hops per call (a stub takes six calls), which measured several times slower.
//
// Two shapes (see nix-layer-modes/): link (hard links to the store's files) and stub (metadata-only copies for
// overlayfs data-only lower layers: each regular file a sparse file of the same size, mode, owner and mtime,
// returned in `stubs` for one setfattr run afterwards, see nix-layer-modes/metacopy.ts). Directories are
// recreated with the source's mode and mtime (set after their children, which would bump the mtime); symlinks
// are copied; owners are kept when they differ from this process's (a single-user Nix store is not owned by
// root).
import {
  chmodSync,
  closeSync,
  fchmodSync,
  fchownSync,
  ftruncateSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readlinkSync,
  symlinkSync,
  utimesSync,
  type Stats,
} from "node:fs";
import { join, relative } from "node:path";
import { Worker } from "node:worker_threads";
import { fsPath, readdirNames } from "../../util/file-names.js";
import { distFile } from "../../util/package-files.js";

/**
 * A stub's overlay xattrs: its path relative to the layer's fs and the redirect into the data-only layer;
 * `metacopy: false` for a directory, which takes the redirect alone.
 */
export interface StubEntry {
  path: string;
  redirect: string;
  metacopy?: boolean;
}

export interface TreeCounts {
  files: number;
  dirs: number;
  symlinks: number;
}

/** One store path to replicate: `src` (the store's real path) as `dst`; stubs redirect to `redirect`/... */
export interface TreeJob {
  kind: "link" | "stub";
  src: string;
  dst: string;
  /** The stub tree's redirect base, "/<basename>" (stub jobs only). */
  redirect?: string;
}

export interface TreeResult {
  stubs: StubEntry[];
  counts: TreeCounts;
  /** What the tree occupies, as the overlay snapshotter's du would count it (computed while building, so the
   * layer needs no second walk): allocated bytes of distinct inodes, and the number of distinct inodes. */
  usage: { size: number; inodes: number };
}

/** Runs `jobs` synchronously (in the worker); stub paths come out relative to `fsRoot`. */
export function buildTreesSync(fsRoot: string, jobs: TreeJob[]): TreeResult {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  const out: TreeResult = {
    stubs: [],
    counts: { files: 0, dirs: 0, symlinks: 0 },
    usage: { size: 0, inodes: 0 },
  };
  const linked = new Set<string>(); // hard-linked inodes, counted once
  const account = (blocks: number, inode?: string): void => {
    if (inode !== undefined) {
      if (linked.has(inode)) return;
      linked.add(inode);
    }
    out.usage.size += blocks * 512;
    out.usage.inodes++;
  };
  const otherOwner = (st: Stats): boolean => st.uid !== uid || st.gid !== gid;

  const stub = (dst: string, st: Stats, redirect: string): void => {
    const fd = openSync(fsPath(dst), "wx", st.mode & 0o777);
    try {
      if (st.size) ftruncateSync(fd, st.size);
      if (otherOwner(st)) fchownSync(fd, st.uid, st.gid);
      fchmodSync(fd, st.mode & 0o7777); // open's mode went through the umask, chown clears setuid bits
      futimesSync(fd, st.atime, st.mtime);
    } finally {
      closeSync(fd);
    }
    out.stubs.push({ path: relative(fsRoot, dst), redirect });
  };

  const copy = (kind: TreeJob["kind"], src: string, dst: string, redirect: string): void => {
    // Names are kept byte for byte (util/file-names.ts): a store file's name need not be UTF-8.
    const from = fsPath(src);
    const to = fsPath(dst);
    const st = lstatSync(from);
    if (st.isSymbolicLink()) {
      out.counts.symlinks++;
      account(0);
      symlinkSync(readlinkSync(from, { encoding: "buffer" }), to);
      if (otherOwner(st)) lchownSync(to, st.uid, st.gid);
    } else if (st.isDirectory()) {
      out.counts.dirs++;
      account(st.blocks);
      mkdirSync(to);
      for (const name of readdirNames(src))
        copy(kind, join(src, name), join(dst, name), `${redirect}/${name}`);
      if (otherOwner(st)) lchownSync(to, st.uid, st.gid);
      chmodSync(to, st.mode & 0o7777);
      utimesSync(to, st.atime, st.mtime);
    } else {
      out.counts.files++;
      if (kind === "link") {
        linkSync(from, to);
        account(st.blocks, `${st.dev}:${st.ino}`);
      } else {
        stub(dst, st, redirect);
        account(0); // sparse: no blocks
      }
    }
  };

  for (const j of jobs) copy(j.kind, j.src, j.dst, j.redirect ?? "");
  return out;
}

/**
 * The one long-lived worker (started on first use: a thread start costs tens of milliseconds, which a
 * per-layer worker paid for every one-path layer). Jobs queue on it in order; it is unref'd while idle so it
 * never keeps the process alive.
 */
class TreeWorker {
  private worker?: Worker;
  private nextId = 0;
  private readonly pending = new Map<number, { resolve(r: TreeResult): void; reject(e: Error): void }>();

  private start(): Worker {
    const w = new Worker(distFile("src/servers/snapshotter/layer-tree-worker.js"), {
      // Not the parent's flags: e.g. `node --input-type=module -e ...` (how tests start the snapshotter) would
      // make the worker refuse its file.
      execArgv: [],
    });
    w.on("message", (m: { id: number; result?: TreeResult; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.result) p.resolve(m.result);
      else p.reject(new Error(m.error ?? "layer tree worker failed"));
      if (!this.pending.size) w.unref();
    });
    const fail = (err: Error): void => {
      if (this.worker === w) this.worker = undefined;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    w.on("error", fail);
    w.on("exit", (code) => fail(new Error(`layer tree worker exited with code ${code}`)));
    return w;
  }

  run(fsRoot: string, jobs: TreeJob[]): Promise<TreeResult> {
    this.worker ??= this.start();
    const w = this.worker;
    const id = this.nextId++;
    return new Promise<TreeResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.ref();
      w.postMessage({ id, fsRoot, jobs });
    });
  }
}

const treeWorker = new TreeWorker();

/** Runs `jobs` in the worker thread: the event loop stays free meanwhile. */
export function buildTrees(fsRoot: string, jobs: TreeJob[]): Promise<TreeResult> {
  return treeWorker.run(fsRoot, jobs);
}
