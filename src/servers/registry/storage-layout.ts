// The on-disk layout of the registry storage (the tree is drawn in storage.ts): the path of every repository
// file, each name, tag and digest validated before it becomes a path, and the file operations the stores share
// (does a file exist, link a blob to a repository).
import { stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { digestHex, type Digest } from "../../oci/digest.js";
import { isValidName, isValidTag } from "../../oci/reference.js";
import { registryError } from "./errors.js";
import { makeDirs } from "../../util/fs.js";

export function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException)?.code;
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export class StorageLayout {
  constructor(readonly root: string) {}

  /** A repository's directory (400 NAME_INVALID for an invalid name: it never becomes a path). */
  repoDir(repo: string): string {
    if (!isValidName(repo)) throw registryError("NAME_INVALID", { detail: { name: repo } });
    return join(this.root, "repositories", ...repo.split("/"));
  }

  revisionPath(repo: string, digest: Digest): string {
    return join(this.repoDir(repo), "_manifests", "revisions", "sha256", digestHex(digest));
  }

  /** A tag's file (400 MANIFEST_INVALID for an invalid tag). */
  tagPath(repo: string, tag: string): string {
    if (!isValidTag(tag))
      throw registryError("MANIFEST_INVALID", { message: "invalid tag", detail: { tag } });
    return join(this.repoDir(repo), "_manifests", "tags", tag);
  }

  layerLink(repo: string, digest: Digest): string {
    return join(this.repoDir(repo), "_layers", "sha256", digestHex(digest));
  }

  referrersDir(repo: string, subject: Digest): string {
    return join(this.repoDir(repo), "_referrers", "sha256", digestHex(subject));
  }

  /** Makes the blob visible in the repository (an empty file under _layers). */
  async linkBlob(repo: string, digest: Digest): Promise<void> {
    const link = this.layerLink(repo, digest);
    try {
      await writeFile(link, "", { flag: "a" });
    } catch (err) {
      if (errno(err) !== "ENOENT") throw err;
      await makeDirs(dirname(link));
      await writeFile(link, "", { flag: "a" });
    }
  }
}
