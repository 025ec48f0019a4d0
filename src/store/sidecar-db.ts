// Metadata for a store directory that has no Nix database (a directory nixoci substitutes into, e.g. a node's
// shared store): one JSON file per valid path under <dir>/.nixoci/info/, in `nix path-info --json`'s shape.
// A path is valid when both its directory entry and its info file exist; the info file is written last
// (temp name, then rename), so a crash never leaves a path that looks valid but is incomplete.
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { parseHash } from "../nix/hash.js";
import { parseStorePath } from "../nix/store-path.js";
import { NixociError } from "../util/errors.js";
import { makeDirsSync } from "../util/fs.js";
import { pathInfoToJson, type PathInfo } from "./path-info.js";

export class SidecarDb {
  readonly dir: string;

  constructor(
    realStoreDir: string,
    private readonly storeDir: string,
  ) {
    this.dir = join(realStoreDir, ".nixoci", "info");
  }

  private fileFor(path: string): string {
    return join(this.dir, `${parseStorePath(path, this.storeDir).hashPart}.json`);
  }

  queryPathInfo(path: string): PathInfo | undefined {
    const file = this.fileFor(path);
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    let j: Record<string, unknown>;
    try {
      j = JSON.parse(text) as Record<string, unknown>;
    } catch {
      throw new NixociError(file, "corrupt metadata: not JSON");
    }
    if (j.path !== path) return undefined; // a hash-part collision with another name: not this path
    const strings = (v: unknown): string[] =>
      Array.isArray(v) ? v.filter((x) => typeof x === "string") : [];
    const info: PathInfo = {
      path,
      narHash: parseHash(String(j.narHash), file, "sha256"),
      narSize: Number(j.narSize),
      references: strings(j.references).map((r) => parseStorePath(r, this.storeDir, file).path),
      sigs: strings(j.signatures),
    };
    if (typeof j.deriver === "string") info.deriver = j.deriver;
    if (typeof j.ca === "string") info.ca = j.ca;
    if (typeof j.registrationTime === "number") info.registrationTime = j.registrationTime;
    return info;
  }

  register(info: PathInfo): void {
    makeDirsSync(this.dir);
    const file = this.fileFor(info.path);
    const tmp = `${file}.tmp-${randomBytes(6).toString("hex")}`;
    const record = pathInfoToJson({ ...info, download: undefined });
    writeFileSync(tmp, JSON.stringify(record) + "\n", { flag: "wx" });
    renameSync(tmp, file);
  }
}
