// Hashes as Nix prints and parses them: "<algo>:<digest>" with the digest in nix32, base16 or base64 (which
// one is told apart by its length), or SRI "<algo>-<base64>".
import { createHash } from "node:crypto";
import { NixociError, quote } from "../util/errors.js";
import { nix32Decode, nix32Encode, nix32Length } from "./nix32.js";

export type HashAlgo = "md5" | "sha1" | "sha256" | "sha512";
export type HashFormat = "nix32" | "base16" | "base64" | "sri";

const SIZES: Record<HashAlgo, number> = { md5: 16, sha1: 20, sha256: 32, sha512: 64 };

export function isHashAlgo(s: string): s is HashAlgo {
  return Object.hasOwn(SIZES, s);
}

/** Digest size in bytes. */
export function hashSize(algo: HashAlgo): number {
  return SIZES[algo];
}

export class Hash {
  readonly algo: HashAlgo;
  readonly digest: Buffer;

  constructor(algo: HashAlgo, digest: Buffer) {
    if (!isHashAlgo(algo)) throw new NixociError("hash", `unknown hash algorithm ${quote(String(algo))}`);
    if (digest.length !== SIZES[algo]) {
      throw new NixociError("hash", `${algo} digest must be ${SIZES[algo]} bytes, got ${digest.length}`);
    }
    this.algo = algo;
    // A private copy: callers may reuse their buffer, and a Hash must not change under a store path.
    this.digest = Buffer.from(digest);
  }

  toString(format: HashFormat = "nix32"): string {
    switch (format) {
      case "nix32":
        return `${this.algo}:${nix32Encode(this.digest)}`;
      case "base16":
        return `${this.algo}:${this.digest.toString("hex")}`;
      case "base64":
        return `${this.algo}:${this.digest.toString("base64")}`;
      case "sri":
        return `${this.algo}-${this.digest.toString("base64")}`;
    }
  }

  equals(other: Hash): boolean {
    return this.algo === other.algo && this.digest.equals(other.digest);
  }

  static of(algo: HashAlgo, data: Buffer | string): Hash {
    return new Hash(algo, createHash(algo).update(data).digest());
  }
}

/**
 * Strict base64: canonical padding, no whitespace, no URL-safe characters. Node's own decoder silently skips
 * characters it does not know, which would let garbage through as a shorter (and then wrong) value.
 */
export function decodeBase64Strict(s: string, input: string, what = "base64 value"): Buffer {
  if (s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(s)) {
    throw new NixociError(input, `${what} is not valid base64: ${quote(s)}`);
  }
  const buf = Buffer.from(s, "base64");
  // Rejects non-zero bits in the last character before the padding ("YQ==" ok, "YR==" not).
  if (buf.toString("base64") !== s)
    throw new NixociError(input, `${what} is not canonical base64: ${quote(s)}`);
  return buf;
}

/**
 * Parses "<algo>:<nix32|base16|base64>" or SRI "<algo>-<base64>". With `expectedAlgo`, a hash of another
 * algorithm is an error (a NarHash must be sha256 whatever the file claims).
 */
export function parseHash(s: string, input = "hash", expectedAlgo?: HashAlgo): Hash {
  const m = /^([a-z0-9]+)([:-])(.*)$/s.exec(s);
  if (!m) throw new NixociError(input, `hash ${quote(s)} has no "<algo>:" or "<algo>-" prefix`);
  const [, algo, sep, rest] = m;
  if (!isHashAlgo(algo)) throw new NixociError(input, `unknown hash algorithm ${quote(algo)} in ${quote(s)}`);
  if (expectedAlgo !== undefined && algo !== expectedAlgo) {
    throw new NixociError(input, `expected a ${expectedAlgo} hash, got ${algo} in ${quote(s)}`);
  }
  const size = SIZES[algo];
  const base64Len = Math.ceil(size / 3) * 4;
  let digest: Buffer;
  if (sep === "-") {
    // SRI is always base64.
    if (rest.length !== base64Len) {
      throw new NixociError(input, `SRI ${algo} hash must have ${base64Len} base64 characters: ${quote(s)}`);
    }
    digest = decodeBase64Strict(rest, input, `${algo} hash`);
  } else if (rest.length === size * 2) {
    if (!/^[0-9a-fA-F]*$/.test(rest)) throw new NixociError(input, `invalid base16 ${algo} hash ${quote(s)}`);
    digest = Buffer.from(rest, "hex");
  } else if (rest.length === nix32Length(size)) {
    digest = nix32Decode(rest, input);
  } else if (rest.length === base64Len) {
    digest = decodeBase64Strict(rest, input, `${algo} hash`);
  } else {
    throw new NixociError(
      input,
      `${algo} hash has the wrong length (${rest.length} characters): ${quote(s)}`,
    );
  }
  return new Hash(algo, digest);
}
