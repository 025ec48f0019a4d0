// Store paths: "<storeDir>/<32-char nix32 hash>-<name>". Parsing is strict because store paths come from
// untrusted places (narinfos, tarballs, databases) and end up as file names we create or delete; computing
// them follows Nix's makeStorePath so content-addressed paths can be checked without the nix binary.
import { createHash } from "node:crypto";
import { NixociError, quote } from "../util/errors.js";
import { Hash } from "./hash.js";
import { isNix32Chars, nix32Encode } from "./nix32.js";

export const DEFAULT_STORE_DIR = "/nix/store";

/** Characters of the hash part (20 bytes in nix32). */
export const HASH_PART_LENGTH = 32;
/** Longest name Nix accepts (so that "<hash>-<name>" stays within 255 bytes, with room for ".drv" etc.). */
export const MAX_NAME_LENGTH = 211;

export class StorePath {
  readonly storeDir: string;
  readonly hashPart: string;
  readonly name: string;

  /** Does not validate: use parseStorePath / parseStoreBaseName for untrusted input. */
  constructor(storeDir: string, hashPart: string, name: string) {
    this.storeDir = storeDir;
    this.hashPart = hashPart;
    this.name = name;
  }

  /** The full path, e.g. "/nix/store/<hash>-<name>". */
  get path(): string {
    return `${this.storeDir}/${this.baseName}`;
  }

  /** "<hash>-<name>", as in narinfo References/Deriver lines. */
  get baseName(): string {
    return `${this.hashPart}-${this.name}`;
  }

  toString(): string {
    return this.path;
  }
}

/** True if `s` contains ASCII control characters (or, with `space`, a space too). */
export function hasControlChars(s: string, space = false): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f || (space && c === 0x20)) return true;
  }
  return false;
}

/** Throws unless `storeDir` is an absolute, normalised directory path ("/nix/store", not "/nix/store/"). */
function checkStoreDir(storeDir: string): void {
  const ok =
    storeDir.startsWith("/") &&
    storeDir.length > 1 &&
    !storeDir.endsWith("/") &&
    !storeDir
      .split("/")
      .slice(1)
      .some((seg) => seg === "" || seg === "." || seg === "..") &&
    !hasControlChars(storeDir);
  if (!ok) throw new NixociError("store directory", `${quote(storeDir)} is not an absolute normalised path`);
}

/** Throws unless `name` is a valid store path name (the part after "<hash>-"). */
export function validateStorePathName(name: string, input = "store path name"): void {
  if (name.length === 0) throw new NixociError(input, "store path name is empty");
  if (name.length > MAX_NAME_LENGTH) {
    throw new NixociError(
      input,
      `store path name is longer than ${MAX_NAME_LENGTH} characters: ${quote(name)}`,
    );
  }
  if (!/^[0-9A-Za-z+\-._?=]+$/.test(name)) {
    throw new NixociError(input, `store path name contains an illegal character: ${quote(name)}`);
  }
  // "." and ".." would be the directory itself or its parent once joined to the store dir; ".-" and "..-"
  // are excluded by Nix too, as they could be mistaken for those by tools that strip a "-suffix".
  if (name === "." || name === ".." || name.startsWith(".-") || name.startsWith("..-")) {
    throw new NixociError(input, `store path name ${quote(name)} is not allowed`);
  }
}

/** Parses "<hash>-<name>" (no directory). */
export function parseStoreBaseName(
  baseName: string,
  storeDir = DEFAULT_STORE_DIR,
  input = "store path",
): StorePath {
  checkStoreDir(storeDir);
  const hashPart = baseName.slice(0, HASH_PART_LENGTH);
  if (baseName.length < HASH_PART_LENGTH + 2 || baseName[HASH_PART_LENGTH] !== "-") {
    throw new NixociError(input, `${quote(baseName)} is not "<32-character hash>-<name>"`);
  }
  if (!isNix32Chars(hashPart)) {
    throw new NixociError(input, `store path hash part ${quote(hashPart)} contains non-nix32 characters`);
  }
  const name = baseName.slice(HASH_PART_LENGTH + 1);
  validateStorePathName(name, input);
  return new StorePath(storeDir, hashPart, name);
}

/** Parses a full store path, which must be directly inside `storeDir`. */
export function parseStorePath(path: string, storeDir = DEFAULT_STORE_DIR, input = "store path"): StorePath {
  checkStoreDir(storeDir);
  const prefix = storeDir + "/";
  if (!path.startsWith(prefix)) throw new NixociError(input, `${quote(path)} is not in ${quote(storeDir)}`);
  const baseName = path.slice(prefix.length);
  if (baseName.includes("/")) {
    throw new NixociError(input, `${quote(path)} is not directly inside ${quote(storeDir)}`);
  }
  return parseStoreBaseName(baseName, storeDir, input);
}

export function isStorePath(s: string, storeDir = DEFAULT_STORE_DIR): boolean {
  try {
    parseStorePath(s, storeDir);
    return true;
  } catch (err) {
    if (err instanceof NixociError) return false;
    throw err;
  }
}

/**
 * The store path that a path inside the store belongs to: "/nix/store/<hash>-foo/bin/sh" ->
 * "/nix/store/<hash>-foo". Rejects "." and ".." segments and empty segments (a trailing "/" is fine), since
 * those could make the path point somewhere else than where its prefix says.
 */
export function toStorePathPrefix(path: string, storeDir = DEFAULT_STORE_DIR, input = "path"): StorePath {
  checkStoreDir(storeDir);
  const prefix = storeDir + "/";
  if (!path.startsWith(prefix)) throw new NixociError(input, `${quote(path)} is not in ${quote(storeDir)}`);
  const segments = path.slice(prefix.length).split("/");
  if (segments.length > 1 && segments[segments.length - 1] === "") segments.pop();
  for (const seg of segments.slice(1)) {
    if (seg === "" || seg === "." || seg === "..") {
      throw new NixociError(input, `${quote(path)} is not a normalised path`);
    }
  }
  return parseStoreBaseName(segments[0], storeDir, input);
}

/** Nix's compressHash: XOR-folds a digest into `size` bytes. */
function compressHash(digest: Buffer, size: number): Buffer {
  const out = Buffer.alloc(size);
  for (let i = 0; i < digest.length; i++) out[i % size] ^= digest[i];
  return out;
}

/**
 * Nix's makeStorePath: the hash part is the XOR-folded sha256 of
 * "<type>:sha256:<innerHashHex>:<storeDir>:<name>".
 */
export function makeStorePath(
  type: string,
  innerHashHex: string,
  name: string,
  storeDir = DEFAULT_STORE_DIR,
): StorePath {
  checkStoreDir(storeDir);
  validateStorePathName(name, "store path name");
  if (!/^[0-9a-f]{64}$/.test(innerHashHex)) {
    throw new NixociError(
      "store path hash",
      `inner hash must be 64 lowercase hex digits: ${quote(innerHashHex)}`,
    );
  }
  const fingerprint = `${type}:sha256:${innerHashHex}:${storeDir}:${name}`;
  const digest = createHash("sha256").update(fingerprint).digest();
  return new StorePath(storeDir, nix32Encode(compressHash(digest, 20)), name);
}

/** "<type>:<ref1>:<ref2>...[:self]" with the references sorted and de-duplicated, as Nix's sets are. */
function typeWithReferences(
  type: string,
  references: string[],
  storeDir: string,
  selfReference: boolean,
): string {
  const refs = [...new Set(references.map((r) => parseStorePath(r, storeDir, "reference").path))].sort();
  let out = type;
  for (const r of refs) out += ":" + r;
  if (selfReference) out += ":self";
  return out;
}

function requireSha256(hash: Hash, what: string): void {
  if (hash.algo !== "sha256") throw new NixociError(what, `must be a sha256 hash, got ${hash.algo}`);
}

/** A path added by NAR content (nix-store --add, builtins.path): type "source". */
export function makeContentAddressedPath(opts: {
  name: string;
  narHash: Hash;
  references: string[];
  selfReference?: boolean;
  storeDir?: string;
}): StorePath {
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  requireSha256(opts.narHash, "NAR hash");
  const type = typeWithReferences("source", opts.references, storeDir, opts.selfReference ?? false);
  return makeStorePath(type, opts.narHash.digest.toString("hex"), opts.name, storeDir);
}

/** A flat text file with references (builtins.toFile, .drv files): type "text", never self-referencing. */
export function makeTextPath(opts: {
  name: string;
  contentsHash: Hash;
  references: string[];
  storeDir?: string;
}): StorePath {
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  requireSha256(opts.contentsHash, "contents hash");
  const type = typeWithReferences("text", opts.references, storeDir, false);
  return makeStorePath(type, opts.contentsHash.digest.toString("hex"), opts.name, storeDir);
}

/**
 * A fixed-output path (fetchurl, nix-store --add-fixed). Recursive sha256 is the same as a "source" path;
 * anything else hashes a description of the hash, and cannot have references.
 */
export function makeFixedOutputPath(opts: {
  name: string;
  recursive: boolean;
  hash: Hash;
  references?: string[];
  storeDir?: string;
}): StorePath {
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  const references = opts.references ?? [];
  if (opts.recursive && opts.hash.algo === "sha256") {
    return makeContentAddressedPath({ name: opts.name, narHash: opts.hash, references, storeDir });
  }
  if (references.length > 0) {
    throw new NixociError(
      "fixed-output path",
      "only recursive sha256 fixed-output paths can have references",
    );
  }
  const inner = `fixed:out:${opts.recursive ? "r:" : ""}${opts.hash.toString("base16")}:`;
  const innerHex = createHash("sha256").update(inner).digest("hex");
  return makeStorePath("output:out", innerHex, opts.name, storeDir);
}
