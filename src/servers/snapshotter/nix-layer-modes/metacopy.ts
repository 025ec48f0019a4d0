// Metacopy mode (--nix-layers metacopy; auto's choice across filesystems when probeMetacopy passes, see auto.ts
// and nix-layers.ts): the layer's fs/nix/store/<basename> is a metadata-only copy of the store path, and the
// overlays of snapshots above it take the store's real directory as a data-only lower layer.
//
// Overlayfs metacopy stubs: a stub is a sparse file with the store file's size and metadata and two xattrs,
// `trusted.overlay.metacopy` (empty: "my data is elsewhere") and `trusted.overlay.redirect` (where, as an
// absolute path within the data-only lower layer, i.e. the store directory mounted after "::"). Needs overlayfs
// data-only lower layers (Linux >= 6.5) and CAP_SYS_ADMIN for trusted.* xattrs.
//
// Node cannot set xattrs, so one `setfattr --restore=-` (Debian's attr package) per layer sets all of them
// from a dump in getfattr's format on its stdin: `# file: PATH` lines (setfattr turns a backslash and three
// octal digits back into that byte, so every byte outside printable ASCII, the space and the backslash are
// written that way), then `name=0sBASE64` lines (a bare `name` for an empty value), then a blank line.
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { StubEntry } from "../layer-tree.js";
import { mount, mountPointsUnder, umount } from "../mounts.js";
import { buildTreeLayer, type LayerMode } from "./layer-mode.js";
import { fileNameBytes } from "../../../util/file-names.js";
import { makeDirsSync } from "../../../util/fs.js";

export const METACOPY_XATTR = "trusted.overlay.metacopy";
export const REDIRECT_XATTR = "trusted.overlay.redirect";
/** Options that make an overlay follow metacopy stubs into its data-only lower layers. */
export const METACOPY_OPTIONS = ["metacopy=on", "redirect_dir=on"];

/** `p` as setfattr reads it back from a `# file:` line. */
export function escapeDumpPath(p: string): string {
  if (/^[\x21-\x5b\x5d-\x7e]*$/.test(p)) return p; // printable ASCII but the backslash: as it is (store paths)
  let out = "";
  for (const b of fileNameBytes(p)) {
    out +=
      b <= 0x20 || b >= 0x7f || b === 0x5c ? `\\${b.toString(8).padStart(3, "0")}` : String.fromCharCode(b);
  }
  return out;
}

/** One stub's entry in setfattr's dump. */
function stubDumpEntry(s: StubEntry): string {
  const redirect = fileNameBytes(s.redirect).toString("base64");
  // The empty metacopy value as a bare name: attr 2.5.1 drops a "NAME=0s" (empty base64) line in the dump's
  // first entry.
  const metacopy = s.metacopy === false ? "" : `${METACOPY_XATTR}\n`;
  return `# file: ${escapeDumpPath(s.path)}\n${metacopy}${REDIRECT_XATTR}=0s${redirect}\n\n`;
}

/** The setfattr dump giving each stub its overlay xattrs (a directory's: the redirect alone). */
export function stubXattrDump(stubs: StubEntry[]): Buffer {
  return Buffer.from(stubs.map(stubDumpEntry).join(""), "utf8");
}

/**
 * One setfattr process setting stubs' xattrs as they are added (paths relative to `cwd`), started at once so
 * that it works on the other core while the caller makes the next stubs: add() a stub once it exists, then
 * end() (rejects with setfattr's message if it failed).
 */
export class StubXattrWriter {
  private readonly exited: Promise<void>;
  private readonly child: ReturnType<typeof execFile>;
  private pending: string[] = [];

  constructor(cwd: string) {
    let child!: ReturnType<typeof execFile>;
    this.exited = new Promise((resolve, reject) => {
      child = execFile(
        "setfattr",
        ["--restore=-"],
        { cwd, timeout: 300_000, maxBuffer: 16 << 20 },
        (err, _o, stderr) =>
          err ? reject(new Error(`setfattr --restore: ${String(stderr).trim() || err.message}`)) : resolve(),
      );
    });
    this.exited.catch(() => undefined); // reported by end()
    this.child = child;
    this.child.stdin?.on("error", () => undefined); // an early exit is reported by end()
  }

  add(stub: StubEntry): void {
    this.pending.push(stubDumpEntry(stub));
    if (this.pending.length >= 64) this.flush();
  }

  private flush(): void {
    if (this.pending.length) this.child.stdin?.write(this.pending.join(""));
    this.pending = [];
  }

  /** Ends the dump and waits for setfattr (nothing added: it exits at once). */
  end(): Promise<void> {
    this.flush();
    this.child.stdin?.end();
    return this.exited;
  }
}

/** Sets the stubs' xattrs in one setfattr process; stub paths are relative to `cwd`. */
export function setStubXattrs(cwd: string, stubs: StubEntry[]): Promise<void> {
  if (!stubs.length) return Promise.resolve();
  const writer = new StubXattrWriter(cwd);
  for (const s of stubs) writer.add(s);
  return writer.end();
}

/**
 * Whether overlay mounts with a metacopy stub redirecting into a data-only lower layer work here: a tiny mount
 * in a temporary directory under `parent` (removed afterwards; a leftover is an orphan Cleanup removes), read
 * back through the stub. Resolves to undefined when supported, else to why not.
 */
export async function probeMetacopy(parent: string): Promise<string | undefined> {
  const dir = mkdtempSync(join(parent, "metacopy-probe-"));
  const content = "nixoci metacopy probe\n";
  let mounted = false;
  try {
    for (const d of ["data/p", "meta", "upper", "work", "mnt"]) makeDirsSync(join(dir, d));
    writeFileSync(join(dir, "data/p/f"), content);
    writeFileSync(join(dir, "meta/f"), "");
    truncateSync(join(dir, "meta/f"), content.length);
    await setStubXattrs(dir, [{ path: "meta/f", redirect: "/p/f" }]);
    const options = [
      "lowerdir=meta::data",
      "upperdir=upper",
      "workdir=work",
      "index=off",
      ...METACOPY_OPTIONS,
    ];
    await mount(["-t", "overlay", "overlay", "-o", options.join(","), "mnt"], dir);
    mounted = true;
    const got = readFileSync(join(dir, "mnt/f"), "utf8");
    return got === content ? undefined : "a stub read back without its data";
  } catch (err) {
    return (err as Error).message;
  } finally {
    if (mounted) await umount(["mnt"], dir).catch(() => undefined);
    if (!mountPointsUnder(dir).length) rmSync(dir, { recursive: true, force: true });
  }
}

export const metacopyMode: LayerMode = {
  kind: "metacopy",
  rootfs: "overlay",
  build: (layer) =>
    buildTreeLayer(
      layer,
      layer.paths.map((p) => ({ kind: "stub", src: p.real, dst: p.target, redirect: `/${p.baseName}` })),
      (built) => setStubXattrs(layer.fs, built.stubs),
    ),
  dataLayer: (storeRealDir) => ({ dir: storeRealDir, options: METACOPY_OPTIONS }),
};
