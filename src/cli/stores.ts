// Turning CLI arguments into stores and store paths: `--store URL`, trusted keys (flags plus Nix's own
// configuration, as an experienced Nix user expects), and PATH arguments that may be symlinks into the
// store (./result) or paths inside a store path.
import { lstatSync, readFileSync, readlinkSync, realpathSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parsePublicKey, parseSecretKey, type PublicKey, type SecretKey } from "../nix/signature.js";
import { DEFAULT_STORE_DIR, parseStorePath, toStorePathPrefix } from "../nix/store-path.js";
import type { TrustOptions } from "../store/binary-cache.js";
import { LocalStore } from "../store/local-store.js";
import type { Store } from "../store/store.js";
import { NixociError } from "../util/errors.js";
import { decodeFileName, fsPath } from "../util/file-names.js";
import { asUsageError, UsageError } from "./args.js";
import { errnoCode, errnoWords } from "../util/fs-errors.js";

export function isCacheUrl(url: string): boolean {
  return /^(file|https?):\/\//.test(url);
}

/** `--store`: a binary cache URL, or a local store directory (default /nix/store with Nix's database). */
export async function openStore(url: string | undefined, trust: TrustOptions): Promise<Store> {
  // Loaded only for a cache (its HTTP and decompression code is not a local build's).
  if (url && isCacheUrl(url))
    return (await import("../store/binary-cache.js")).BinaryCacheStore.open(url, trust);
  if (url === "") throw new UsageError("--store: empty (give a store directory or a binary cache URL)");
  // Another scheme (ftp://, s3://, ssh://...) would otherwise be taken as a relative directory of that name.
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url ?? "")?.[1];
  if (scheme && !isCacheUrl(url!)) {
    const known = ["file", "http", "https"].includes(scheme.toLowerCase());
    throw new UsageError(
      `--store ${JSON.stringify(url)}: ` +
        (known
          ? "a binary cache URL is file:///DIR, http://HOST[/PATH] or https://HOST[/PATH]"
          : `${scheme}: stores are not supported (a directory, local?root=DIR, file:///DIR, http:// or https://)`),
    );
  }
  if (url === undefined || url === "local" || url === "auto") return new LocalStore();
  if (url.startsWith("local?root="))
    return new LocalStore({ dir: join(url.slice("local?root=".length), "nix/store") });
  return new LocalStore({ dir: url });
}

/** Nix's built-in default for trusted-public-keys, used when nix.conf does not set the option. */
const NIX_DEFAULT_KEYS = ["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="];

/**
 * Keys from `--trusted-public-key` flags, plus what Nix itself would trust: trusted-public-keys from
 * nix.conf, or Nix's default (cache.nixos.org) when nix.conf does not set it.
 */
export function trustOptions(flags: string[] | undefined, allowUnsigned: boolean | undefined): TrustOptions {
  const trustedKeys: PublicKey[] = [];
  // A malformed flag value: a usage error (exit 2), as for any other flag.
  for (const t of flags ?? [])
    trustedKeys.push(asUsageError(() => parsePublicKey(t, "--trusted-public-key")));
  for (const t of nixConfKeys() ?? NIX_DEFAULT_KEYS)
    trustedKeys.push(parsePublicKey(t, "--trusted-public-key"));
  return { trustedKeys, allowUnsigned: Boolean(allowUnsigned) };
}

/** trusted-public-keys (and extra-trusted-public-keys) from nix.conf; undefined when it sets neither. */
function nixConfKeys(): string[] | undefined {
  const file = join(process.env.NIX_CONF_DIR ?? "/etc/nix", "nix.conf");
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
  let keys: string[] | undefined;
  for (const line of text.split("\n")) {
    const m = /^\s*(extra-)?trusted-public-keys\s*=(.*)$/.exec(line.replace(/#.*/, ""));
    if (!m) continue;
    const found = m[2].trim().split(/\s+/).filter(Boolean);
    keys = m[1] ? [...(keys ?? NIX_DEFAULT_KEYS), ...found] : found;
  }
  return keys;
}

/**
 * A PATH argument as a store path. A string inside the store names the store path it belongs to; anything
 * else is a local file (typically a `result` symlink) that must resolve into the local store directory.
 */
export function resolveStorePathArg(arg: string, store: Store): string {
  const storeDir = store.storeDir;
  if (arg.startsWith(storeDir + "/")) return toStorePathPrefix(arg, storeDir, arg).path;
  const localDir = store instanceof LocalStore ? store.realDir : DEFAULT_STORE_DIR;
  let real: string;
  try {
    real = realpathSync.native(fsPath(arg));
  } catch (err) {
    // A symlink whose target is gone: a `result` whose store path was garbage-collected is the usual one.
    const missing = missingLinkTarget(arg);
    if (missing === undefined)
      throw new NixociError(
        arg,
        errnoCode(err) === "ENOENT"
          ? "not a store path, and no such file to resolve into the store"
          : `cannot resolve it into the store (${errnoWords(err)})`,
      );
    for (const dir of new Set([storeDir, localDir]))
      if (missing.startsWith(dir + "/")) {
        const path = `${dir}/${missing.slice(dir.length + 1).split("/")[0]}`;
        throw new NixociError(
          arg,
          `points to ${path}, which is not in the store (garbage-collected? rebuild it, e.g. with nix-build)`,
        );
      }
    throw new NixociError(arg, `is a symlink to ${missing}, which does not exist`);
  }
  if (!real.startsWith(localDir + "/"))
    throw new NixociError(arg, `resolves to ${real}, which is not in ${localDir}`);
  const base = real.slice(localDir.length + 1).split("/")[0];
  return parseStorePath(`${storeDir}/${base}`, storeDir, arg).path;
}

/**
 * The store path a symlink (a `result`) points into, whether that path exists here yet or not (what a substitution
 * realises); undefined when `arg` is no symlink into `storeDir`.
 */
export function storePathOfLink(arg: string, storeDir: string): string | undefined {
  let target: string | undefined;
  try {
    if (!lstatSync(fsPath(arg)).isSymbolicLink()) return undefined;
    target = realpathSync.native(fsPath(arg));
  } catch {
    target = missingLinkTarget(arg);
  }
  if (target === undefined || !target.startsWith(storeDir + "/")) return undefined;
  return toStorePathPrefix(target, storeDir, arg).path;
}

/**
 * For a chain of symlinks that ends nowhere, the target that does not exist (absolute); undefined when `arg` is
 * not such a chain (it does not exist itself, or something else is wrong with it).
 */
function missingLinkTarget(arg: string): string | undefined {
  let path = resolve(arg);
  for (let hops = 0; hops < 40; hops++) {
    let target: string;
    try {
      if (!lstatSync(fsPath(path)).isSymbolicLink()) return undefined;
      target = decodeFileName(readlinkSync(fsPath(path), { encoding: "buffer" }));
    } catch {
      return undefined;
    }
    const next = resolve(dirname(path), target);
    try {
      if (!lstatSync(fsPath(next), { throwIfNoEntry: false })) return next;
    } catch {
      return undefined; // not a missing target: a directory on the way cannot be read, or is a file
    }
    path = next;
  }
  return undefined;
}

/** A `--sign-key FILE`: Nix's secret key format, read and checked, with errors naming the file. */
export function readSecretKeyFile(file: string): SecretKey {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new NixociError(file, `cannot read secret key: ${errnoWords(err)}`);
  }
  return parseSecretKey(text, file);
}
