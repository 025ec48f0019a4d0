// The compressors layers are made with, found on PATH with their versions: ISA-L's gzip (Debian's `isal` package:
// the `igzip` tool; its deflate is 5-10x faster than zlib's for the same gzip format every runtime reads) and zstd.
//
// A layer's identity names the encoder and its version, so the version must be known before a cache lookup:
// asking `igzip --version` costs a process (~15 ms here) on every build, most of which build nothing. The answer
// is memoized in a small file keyed by the binary's path, size, mtime and inode (a stat), so a rebuild pays a
// stat; an upgraded or replaced tool is asked again.
import { execFile } from "node:child_process";
import { statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { makeDirs, writeFileAtomic } from "./fs.js";

export interface VersionedTool {
  /** The executable (absolute). */
  path: string;
  /** Its version ("2.30.0"). */
  version: string;
}

/** How each tool tells its version. */
const TOOLS = {
  // "igzip command line interface 2.30.0"
  igzip: /igzip command line interface (\d+(?:\.\d+)+)/,
  // "*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***"
  zstd: /Zstandard CLI .*?v(\d+(?:\.\d+)+)/,
} as const;
type ToolName = keyof typeof TOOLS;

/** The first executable `name` on PATH (absolute), or undefined. */
export function findOnPath(name: string, path = process.env.PATH ?? ""): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (!dir.startsWith("/")) continue; // a relative PATH entry depends on the working directory: not trusted
    const file = join(dir, name);
    try {
      const st = statSync(file);
      if (st.isFile() && (st.mode & 0o111) !== 0) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

const memo = new Map<string, Promise<VersionedTool | undefined>>();

/**
 * igzip and its version, or undefined when it is not installed (or does not answer --version as ISA-L does).
 * `memoDir`: where the version memo file lives (a layer cache directory); none = ask the tool every process.
 */
export function findIsal(memoDir?: string): Promise<VersionedTool | undefined> {
  return findTool("igzip", memoDir);
}

/** zstd and its version, or undefined when it is not installed. */
export function findZstd(memoDir?: string): Promise<VersionedTool | undefined> {
  return findTool("zstd", memoDir);
}

function findTool(name: ToolName, memoDir?: string): Promise<VersionedTool | undefined> {
  const path = findOnPath(name);
  if (!path) return Promise.resolve(undefined);
  let st;
  try {
    st = statSync(path);
  } catch {
    return Promise.resolve(undefined);
  }
  const key = `${path}:${st.size}:${Math.trunc(st.mtimeMs)}:${st.ino}`;
  let found = memo.get(key);
  if (!found) {
    found = lookUp(name, path, key, memoDir);
    memo.set(key, found);
  }
  return found;
}

async function lookUp(
  name: ToolName,
  path: string,
  key: string,
  memoDir: string | undefined,
): Promise<VersionedTool | undefined> {
  const dir = memoDir && join(memoDir, "tools");
  const file = dir && join(dir, `${name}.json`);
  if (file) {
    try {
      const saved = JSON.parse(await readFile(file, "utf8")) as { key?: unknown; version?: unknown };
      if (saved.key === key && typeof saved.version === "string" && VERSION_RE.test(saved.version))
        return { path, version: saved.version };
    } catch {
      // no memo yet, or not one: ask the tool
    }
  }
  const tool = await askVersion(name, path);
  if (dir && file && tool) {
    try {
      await makeDirs(dir);
      await writeFileAtomic(file, JSON.stringify({ key, version: tool.version }) + "\n");
    } catch {
      // a read-only cache directory: the tool is asked again next time
    }
  }
  return tool;
}

const VERSION_RE = /^\d+(\.\d+)+$/;

function askVersion(name: ToolName, path: string): Promise<VersionedTool | undefined> {
  return new Promise((resolve) => {
    execFile(path, ["--version"], { encoding: "utf8", timeout: 10_000 }, (err, stdout, stderr) => {
      const m = TOOLS[name].exec(`${stdout}${stderr}`);
      resolve(!err && m ? { path, version: m[1] } : undefined);
    });
  });
}
