// Checks, before any build work, that every output can be written: a user whose registry is down or whose archive
// directory does not exist should learn it in a second, not after all layers were built (issue 13). Each problem
// is one NixociError naming the output and, where there is one, the fix. The layer cache is checked the same way.
import { constants } from "node:fs";
import { access, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import type { LocalStore } from "../store/local-store.js";
import { NixociError } from "../util/errors.js";
import { proveWritableDir } from "../util/fs.js";
import { formatOutputRef, type OutputRef } from "./outputs.js";
import { RegistryClient } from "./registry-session.js";

export interface PreflightOptions {
  creds?: string;
  insecure?: boolean;
  store?: LocalStore;
}

const errnoOf = (err: unknown): string => (err as NodeJS.ErrnoException).code ?? (err as Error).message;

/** `dir` exists as a directory this process may create entries in. */
async function writableDir(dir: string, output: string, fix: string): Promise<void> {
  try {
    if (!(await stat(dir)).isDirectory()) throw new NixociError(output, `${dir} is not a directory`);
    await access(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    if (err instanceof NixociError) throw err;
    const code = errnoOf(err);
    const what = code === "ENOENT" ? "does not exist" : `cannot be written (${code})`;
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
        throw new NixociError(
          output,
          `cannot write to the store ${dir} (${errnoOf(err)}): nix: outputs go into the store; run as its owner (root)` +
            " or give --store DIR",
        );
      }
      return;
    }
    case "docker": {
      // The API answers and takes the credentials (the same request the push begins with).
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

/** The layer cache directory can be created and written (else the hint: another --cache-dir, or --no-cache). */
export async function checkCacheDir(dir: string): Promise<void> {
  try {
    await proveWritableDir(dir);
  } catch (err) {
    throw new NixociError(
      dir,
      `cannot write the layer cache here (${errnoOf(err)}); give --cache-dir DIR (a writable directory) or --no-cache`,
    );
  }
}
