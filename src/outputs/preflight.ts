// Checks, before any build work, that every output can be written: a user whose registry is down or whose archive
// directory does not exist should learn it in a second, not after all layers were built (issue 13). Each problem
// is one NixociError naming the output and, where there is one, the fix. The layer cache is checked the same way.
import { constants } from "node:fs";
import { access, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, relative, resolve } from "node:path";
import type { LocalStore } from "../store/local-store.js";
import { NixociError } from "../util/errors.js";
import { ownerName, proveWritableDir } from "../util/fs.js";
import { errnoCode, errnoWords, FileSystemError, isInside, NO_SPACE, PERMISSION } from "../util/fs-errors.js";
import { storeNotWritable } from "./nix-image.js";
import { formatOutputRef, type OutputRef } from "./outputs.js";

export interface PreflightOptions {
  creds?: string;
  insecure?: boolean;
  store?: LocalStore;
}

/** `dir` exists as a directory this process may create entries in. */
async function writableDir(dir: string, output: string, fix: string): Promise<void> {
  try {
    if (!(await stat(dir)).isDirectory()) throw new NixociError(output, `${dir} is not a directory`);
    await access(dir, constants.W_OK | constants.X_OK);
    // access() answers from the modes alone: root "may write" /proc or a read-only mount. An entry made and
    // removed proves it.
    await proveWritableDir(dir);
  } catch (err) {
    if (err instanceof NixociError) throw err;
    const gone = errnoCode(err) === "ENOENT" && !(await stat(dir).catch(() => undefined));
    const what = gone
      ? "does not exist"
      : `cannot be written (${errnoCode(err) === "ENOENT" ? "no entries can be made there" : errnoWords(err)})`;
    throw new NixociError(output, `the directory ${dir} ${what}; ${fix}`);
  }
}

/** The nearest existing ancestor of `path` (what a recursive mkdir would create entries in). */
async function nearestExisting(path: string): Promise<string> {
  let p = resolve(path);
  for (;;) {
    try {
      await stat(p);
      return p;
    } catch {
      const parent = dirname(p);
      if (parent === p) return p;
      p = parent;
    }
  }
}

export async function checkOutput(ref: OutputRef, opts: PreflightOptions = {}): Promise<void> {
  const output = formatOutputRef(ref);
  switch (ref.kind) {
    case "oci": {
      const existing = await nearestExisting(ref.dir);
      if (existing === resolve(ref.dir) && !(await stat(existing)).isDirectory())
        throw new NixociError(output, `${ref.dir} exists and is not a directory (an OCI layout is one)`);
      return writableDir(existing, output, "choose a writable place for the layout");
    }
    case "oci-archive":
    case "docker-archive": {
      if (ref.file === "-") return;
      const file = resolve(ref.file);
      await writableDir(dirname(file), output, "create it first or choose another path");
      const st = await stat(file).catch(() => undefined);
      if (st && !st.isFile()) throw new NixociError(output, `${ref.file} exists and is not a regular file`);
      return;
    }
    case "nix": {
      const dir = opts.store?.realDir ?? "/nix/store";
      try {
        await access(dir, constants.W_OK);
      } catch (err) {
        throw storeNotWritable(output, dir, errnoWords(err), (await ownerName(dir)) ?? "root");
      }
      return;
    }
    case "docker": {
      // The API answers and takes the credentials (the same request the push begins with).
      // The registry client is loaded for registry outputs only (issue 17: fixed costs).
      const { RegistryClient } = await import("./registry-session.js");
      const client = new RegistryClient(ref.registry, ref.repository, {
        creds: opts.creds,
        insecure: opts.insecure,
      });
      try {
        await client.ping();
      } finally {
        client.close();
      }
      return;
    }
  }
}

const OTHER_CACHE = "give --cache-dir DIR (a writable directory) or --no-cache";

/** The layer cache directory can be created and written (else the hint: another --cache-dir, or --no-cache). */
export async function checkCacheDir(dir: string): Promise<void> {
  try {
    await proveWritableDir(dir);
  } catch (err) {
    throw new NixociError(dir, `cannot write the layer cache here (${errnoWords(err)}); ${OTHER_CACHE}`);
  }
}

/**
 * A failure of the build itself in words with the fix, when it is the layer cache's (`cacheDir`; undefined: the
 * throw-away cache of --no-cache, in TMPDIR) that the user can do something about: a cache that refuses writes
 * (made by another user, read-only) or a full file system. Anything else is returned as it is.
 */
export function layerCacheError(cacheDir: string | undefined, err: unknown): unknown {
  if (!(err instanceof FileSystemError)) return err;
  const dir = cacheDir ?? tmpdir();
  if (!isInside(err.path, dir)) return err;
  const words = errnoWords(err);
  const where = resolve(err.path) === resolve(dir) ? "" : ` in ${relative(resolve(dir), resolve(err.path))}`;
  if (!cacheDir) {
    const fix = NO_SPACE.has(err.code)
      ? "set TMPDIR to a directory with room, or drop --no-cache"
      : PERMISSION.has(err.code)
        ? "set TMPDIR to a writable directory"
        : undefined;
    return fix
      ? new NixociError(dir, `cannot write the layers of a --no-cache build here (${words}); ${fix}`)
      : err;
  }
  if (PERMISSION.has(err.code))
    return new NixociError(dir, `cannot write the layer cache (${words}${where}); ${OTHER_CACHE}`);
  if (NO_SPACE.has(err.code))
    return new NixociError(
      dir,
      `cannot write the layer cache (${words}); free space (nixoci cache gc removes what recent images do not use), ` +
        "or give --cache-dir DIR elsewhere or --no-cache",
    );
  return err;
}
