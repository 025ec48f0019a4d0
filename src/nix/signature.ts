// Ed25519 signatures on store paths, in Nix's text formats (libsodium key layout):
//   public key  "<name>:<base64 32-byte key>"
//   secret key  "<name>:<base64 64 bytes = 32-byte seed || 32-byte public key>"
//   signature   "<name>:<base64 64-byte signature>" over pathFingerprint(...)
// Node's crypto does Ed25519 natively; keys go in and out through DER with fixed prefixes.
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from "node:crypto";
import { NixociError, quote } from "../util/errors.js";
import { decodeBase64Strict, type Hash } from "./hash.js";

export interface PublicKey {
  name: string;
  key: KeyObject;
  /** "name:base64", Nix's format. */
  toString(): string;
}

export interface SecretKey {
  name: string;
  key: KeyObject;
  publicKey: PublicKey;
}

const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

function checkKeyName(name: string, input: string): void {
  // The name is everything before the first ':', so it cannot contain one; whitespace would not survive
  // narinfo lines or nix.conf lists.
  if (name === "" || /[\s:]/.test(name)) throw new NixociError(input, `invalid key name ${quote(name)}`);
}

/** Splits "name:base64" at the first ':'. */
function splitNamed(text: string, input: string, what: string): { name: string; data: string } {
  const colon = text.indexOf(":");
  if (colon < 0) throw new NixociError(input, `${what} is not "<name>:<base64>"`);
  const name = text.slice(0, colon);
  checkKeyName(name, input);
  return { name, data: text.slice(colon + 1) };
}

function rawPublicKey(key: KeyObject): Buffer {
  const der = key.export({ format: "der", type: "spki" });
  return der.subarray(der.length - 32);
}

function makePublicKey(name: string, key: KeyObject): PublicKey {
  const text = `${name}:${rawPublicKey(key).toString("base64")}`;
  return { name, key, toString: () => text };
}

export function parsePublicKey(text: string, input = "public key"): PublicKey {
  const { name, data } = splitNamed(text.trim(), input, "public key");
  const raw = decodeBase64Strict(data, input, "public key");
  if (raw.length !== 32) throw new NixociError(input, `public key must be 32 bytes, got ${raw.length}`);
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, raw]), format: "der", type: "spki" });
  } catch (err) {
    throw new NixociError(input, "public key is not a valid Ed25519 key", { cause: err });
  }
  return makePublicKey(name, key);
}

export function parseSecretKey(text: string, input = "secret key"): SecretKey {
  const { name, data } = splitNamed(text.trim(), input, "secret key");
  const raw = decodeBase64Strict(data, input, "secret key");
  if (raw.length !== 64) throw new NixociError(input, `secret key must be 64 bytes, got ${raw.length}`);
  const key = createPrivateKey({
    key: Buffer.concat([PKCS8_PREFIX, raw.subarray(0, 32)]),
    format: "der",
    type: "pkcs8",
  });
  const publicKey = makePublicKey(name, createPublicKey(key));
  // libsodium keeps a copy of the public key in the secret key; if it disagrees, the file is corrupt, and
  // signatures would not verify against the public key that was published alongside it.
  if (!rawPublicKey(publicKey.key).equals(raw.subarray(32))) {
    throw new NixociError(input, "secret key's public half does not match its seed");
  }
  return { name, key, publicKey };
}

/** A fresh key pair in Nix's text formats (what nix-store --generate-binary-cache-key writes). */
export function generateKeyPair(name: string): { secretKey: string; publicKey: string } {
  checkKeyName(name, "key name");
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const der = privateKey.export({ format: "der", type: "pkcs8" });
  const seed = der.subarray(der.length - 32);
  const pub = rawPublicKey(publicKey);
  return {
    secretKey: `${name}:${Buffer.concat([seed, pub]).toString("base64")}`,
    publicKey: `${name}:${pub.toString("base64")}`,
  };
}

/** "1;<path>;<sha256:nix32>;<narSize>;<sorted comma-joined full reference paths>" */
export function pathFingerprint(
  storePath: string,
  narHash: Hash,
  narSize: number,
  references: string[],
): string {
  const refs = [...new Set(references)].sort();
  return `1;${storePath};${narHash.toString("nix32")};${narSize};${refs.join(",")}`;
}

export function signFingerprint(key: SecretKey, fingerprint: string): string {
  const sig = sign(null, Buffer.from(fingerprint, "utf8"), key.key);
  return `${key.name}:${sig.toString("base64")}`;
}

export function parseSignature(sig: string, input = "signature"): { keyName: string; sig: Buffer } {
  const { name, data } = splitNamed(sig, input, "signature");
  const raw = decodeBase64Strict(data, input, "signature");
  if (raw.length !== 64) throw new NixociError(input, `signature must be 64 bytes, got ${raw.length}`);
  return { keyName: name, sig: raw };
}

/**
 * Why none of `sigs` is a valid signature of `fingerprint` by a trusted key, or undefined if one is.
 * Malformed signatures count as not valid rather than as errors: one bad Sig line must not hide a good one.
 */
export function checkSignatures(
  fingerprint: string,
  sigs: string[],
  trusted: PublicKey[],
): string | undefined {
  if (sigs.length === 0) return "no signatures";
  const data = Buffer.from(fingerprint, "utf8");
  const problems: string[] = [];
  const untrusted: string[] = [];
  for (const text of sigs) {
    let parsed: { keyName: string; sig: Buffer };
    try {
      parsed = parseSignature(text);
    } catch (err) {
      if (!(err instanceof NixociError)) throw err;
      problems.push(`malformed signature ${quote(text, 40)}`);
      continue;
    }
    const keys = trusted.filter((k) => k.name === parsed.keyName);
    if (keys.length === 0) {
      untrusted.push(parsed.keyName);
      continue;
    }
    if (keys.some((k) => verify(null, data, k.key, parsed.sig))) return undefined;
    problems.push(`signature by ${parsed.keyName} does not verify`);
  }
  if (untrusted.length > 0) {
    problems.unshift(
      `no signature by a trusted key (signed by ${untrusted.map((n) => quote(n, 40)).join(", ")})`,
    );
  }
  return problems.join("; ");
}

/** True if some signature whose key name matches a trusted key verifies. */
export function verifyFingerprint(fingerprint: string, sigs: string[], trusted: PublicKey[]): boolean {
  return checkSignatures(fingerprint, sigs, trusted) === undefined;
}
