// Filesystem helpers shared by the writers: atomic file writes and removal of read-only trees.
import { chmod, lstat, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { NixociError } from "./errors.js";
import { randomBytes } from "node:crypto";
import { join } from "node:path";

/** A sibling name for work in progress; dot-prefixed so listings and globbing skip it. */
export function tempSibling(dir: string, base: string): string {
  return join(dir, `.${base}.tmp-${randomBytes(6).toString("hex")}`);
}

/** Writes a file under a temporary name and renames it into place, so readers never see a partial file. */
export async function writeFileAtomic(file: string, data: string | Buffer): Promise<void> {
  const slash = file.lastIndexOf("/");
  const tmp = tempSibling(file.slice(0, slash) || "/", file.slice(slash + 1));
  try {
    await writeFile(tmp, data, { flag: "wx" });
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/**
 * Removes a tree even when its directories are read-only (canonical store paths are 0555): a non-root
 * user cannot unlink entries of such a directory before making it writable again.
 */
export async function removeTree(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (st.isDirectory()) {
    await chmod(path, 0o755).catch(() => undefined);
    for (const name of await readdir(path)) await removeTree(join(path, name));
  }
  await rm(path, { recursive: true, force: true });
}

/** A JSON file's parsed value, or undefined when the file does not exist; other failures name the file. */
export async function readJsonFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new NixociError(file, `cannot read: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new NixociError(file, "is not valid JSON");
  }
}
