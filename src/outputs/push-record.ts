// The local record of which repositories of a registry we pushed each blob digest to
// ($XDG_CACHE_HOME/nixoci/pushed.json by default): a later push of the same blobs to another repository of that
// registry tries a cross-repository mount from one of them before uploading. The record only holds hints, so it
// is bounded (a few repositories per digest, the most recent digests), a missing or damaged file reads as empty,
// and it is replaced atomically.
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { makeDirs, writeFileAtomic } from "../util/fs.js";

export interface PushRecordFile {
  version: 1;
  /** registry -> digest -> repositories (most recent first) */
  registries: Record<string, Record<string, string[]>>;
}

const RECORD_MAX_REPOS = 4;
const RECORD_MAX_DIGESTS = 20_000;

export function defaultPushRecordPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "nixoci", "pushed.json");
}

export async function readPushRecord(file: string): Promise<PushRecordFile> {
  try {
    const j = JSON.parse(await readFile(file, "utf8")) as PushRecordFile;
    if (j && j.version === 1 && typeof j.registries === "object" && j.registries) return j;
  } catch {
    // Missing or damaged: it only holds hints.
  }
  return { version: 1, registries: {} };
}

/** Notes that `repository` of `registry` now holds `digests` (moved to the front of the recency order). */
export async function updatePushRecord(
  file: string,
  registry: string,
  repository: string,
  digests: string[],
): Promise<void> {
  const rec = await readPushRecord(file);
  const reg = (rec.registries[registry] ??= {});
  for (const d of digests) {
    const repos = (reg[d] ?? []).filter((r) => r !== repository);
    delete reg[d]; // re-insert: object key order is the recency order
    reg[d] = [repository, ...repos].slice(0, RECORD_MAX_REPOS);
  }
  const keys = Object.keys(reg);
  for (const k of keys.slice(0, Math.max(0, keys.length - RECORD_MAX_DIGESTS))) delete reg[k];
  await makeDirs(dirname(file));
  await writeFileAtomic(file, JSON.stringify(rec));
}
