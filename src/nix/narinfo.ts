// "<hashpart>.narinfo" files of binary caches. The parser is stricter than Nix's: a narinfo comes from a
// server we may not trust, its StorePath decides where things get unpacked and its URL is resolved against
// the cache URL, so anything odd is an error that names the file and the field.
import { NixociError, quote } from "../util/errors.js";
import { Hash, parseHash } from "./hash.js";
import { pathFingerprint } from "./signature.js";
import { DEFAULT_STORE_DIR, hasControlChars, parseStoreBaseName, parseStorePath } from "./store-path.js";

export interface NarInfo {
  /** Full store path. */
  storePath: string;
  /** NAR location relative to the cache root, e.g. "nar/<filehash>.nar.xz". */
  url: string;
  compression: string;
  fileHash?: Hash;
  fileSize?: number;
  narHash: Hash;
  narSize: number;
  /** Base names ("<hash>-<name>"), as in the file; a self-reference lists the path itself. */
  references: string[];
  /** Base name of the .drv. */
  deriver?: string;
  /** "<keyname>:<base64 signature>" */
  sigs: string[];
  /** Content address, e.g. "fixed:r:sha256:<nix32>" or "text:sha256:<nix32>". */
  ca?: string;
}

const SINGLE_FIELDS = new Set([
  "StorePath",
  "URL",
  "Compression",
  "FileHash",
  "FileSize",
  "NarHash",
  "NarSize",
  "References",
  "Deriver",
  "CA",
]);

/**
 * Throws unless `url` is a plain relative path (plus optional query) that cannot leave the cache root once
 * resolved against it: no scheme, no leading "/", no "." or ".." segments (also percent-encoded, which the
 * WHATWG URL parser treats like the real thing), no backslashes (which it treats as "/"), no fragment.
 */
export function checkNarUrl(url: string, input: string): void {
  const bad = (why: string) => new NixociError(input, `URL ${quote(url)} ${why}`);
  if (url === "") throw bad("is empty");
  if (hasControlChars(url, true)) throw bad("contains whitespace or control characters");
  if (url.includes("\\")) throw bad("contains a backslash");
  if (url.includes("#")) throw bad("contains a fragment");
  const q = url.indexOf("?");
  const path = q < 0 ? url : url.slice(0, q);
  if (path.startsWith("/")) throw bad("is absolute; it must be relative to the cache");
  // A ":" before the first "/" would be read as a scheme ("file:...", "https:..."); elsewhere it is odd.
  if (path.includes(":")) throw bad("contains a ':' (a scheme?); it must be a relative path");
  for (const seg of path.split("/")) {
    let decoded: string;
    try {
      decoded = decodeURIComponent(seg);
    } catch {
      throw bad("contains a malformed percent-escape");
    }
    if (seg === "") throw bad("has an empty path segment");
    if (decoded === "." || decoded === ".." || /[/\\]/.test(decoded))
      throw bad("has a '.', '..' or encoded '/' segment");
  }
}

// Content addresses Nix writes: "text:sha256:...", "fixed:sha1:...", "fixed:r:sha256:...", "fixed:git:...".
function checkContentAddress(ca: string, input: string): void {
  const m = /^(text|fixed(?::r|:git)?):(.*)$/s.exec(ca);
  if (!m) throw new NixociError(input, `CA ${quote(ca)} is not a content address`);
  parseHash(m[2], input, m[1] === "text" ? "sha256" : undefined);
}

function parseSize(value: string, field: string, input: string): number {
  if (!/^(0|[1-9][0-9]*)$/.test(value))
    throw new NixociError(input, `${field} ${quote(value)} is not a non-negative integer`);
  if (!Number.isSafeInteger(Number(value))) {
    throw new NixociError(input, `${field} ${quote(value)} is larger than nixoci handles (2^53 - 1 bytes)`);
  }
  return Number(value);
}

export function parseNarInfo(
  text: string,
  opts: { input: string; storeDir?: string; expectedHashPart?: string },
): NarInfo {
  const { input } = opts;
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  const seen = new Set<string>();
  const fields = new Map<string, string>();
  const sigs: string[] = [];

  // Every line ends in "\n" as Nix writes it; a missing final newline is tolerated.
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  lines.forEach((line, i) => {
    let sep = line.indexOf(": ");
    // "Key:" alone is an empty value whose trailing space some tool trimmed.
    if (sep < 0 && line.endsWith(":") && line.indexOf(":") === line.length - 1) sep = line.length - 1;
    if (sep <= 0) throw new NixociError(input, `line ${i + 1} is not "Key: value": ${quote(line)}`);
    const key = line.slice(0, sep);
    const value = line.slice(sep + 2);
    if (key === "Sig") {
      // Kept as written and read only when verifying, where a malformed one counts as no signature (as Nix, which
      // stores them as strings): a Sig line of another tool or key must not make a well-signed path unreadable.
      sigs.push(value);
      return;
    }
    if (!SINGLE_FIELDS.has(key)) return; // unknown keys (System, ...) are ignored, as Nix does
    if (seen.has(key)) throw new NixociError(input, `${key} appears more than once`);
    seen.add(key);
    fields.set(key, value);
  });

  const required = (key: string): string => {
    const v = fields.get(key);
    if (v === undefined || v === "") throw new NixociError(input, `${key} is missing`);
    return v;
  };

  const sp = parseStorePath(required("StorePath"), storeDir, `${input}: StorePath`);
  if (opts.expectedHashPart !== undefined && sp.hashPart !== opts.expectedHashPart) {
    throw new NixociError(
      input,
      `StorePath ${quote(sp.path)} does not have the expected hash part ${quote(opts.expectedHashPart)}`,
    );
  }

  const url = required("URL");
  checkNarUrl(url, input);

  const narHash = parseHash(required("NarHash"), `${input}: NarHash`, "sha256");
  const narSize = parseSize(required("NarSize"), "NarSize", input);
  if (narSize === 0) throw new NixociError(input, "NarSize must be greater than 0");

  const info: NarInfo = {
    storePath: sp.path,
    url,
    compression: fields.get("Compression") || "bzip2",
    narHash,
    narSize,
    references: [],
    sigs,
  };
  if (/[\s]/.test(info.compression)) {
    throw new NixociError(input, `Compression ${quote(info.compression)} is not a compression name`);
  }

  const fileHash = fields.get("FileHash");
  if (fileHash !== undefined) info.fileHash = parseHash(fileHash, `${input}: FileHash`);
  const fileSize = fields.get("FileSize");
  if (fileSize !== undefined) info.fileSize = parseSize(fileSize, "FileSize", input);

  // Nix splits on spaces and drops empty tokens.
  for (const ref of (fields.get("References") ?? "").split(" ")) {
    if (ref === "") continue;
    info.references.push(parseStoreBaseName(ref, storeDir, `${input}: References`).baseName);
  }

  const deriver = fields.get("Deriver");
  // Old Nix versions wrote "unknown-deriver" rather than leaving the field out.
  if (deriver !== undefined && deriver !== "" && deriver !== "unknown-deriver") {
    info.deriver = parseStoreBaseName(deriver, storeDir, `${input}: Deriver`).baseName;
  }

  const ca = fields.get("CA");
  // Nix treats an empty CA as absent.
  if (ca !== undefined && ca !== "") {
    checkContentAddress(ca, `${input}: CA`);
    info.ca = ca;
  }
  return info;
}

/** Renders a narinfo the way Nix does (field order, "sha256:<nix32>" hashes, every line ending in "\n"). */
export function serializeNarInfo(info: NarInfo): string {
  let out = `StorePath: ${info.storePath}\n`;
  out += `URL: ${info.url}\n`;
  out += `Compression: ${info.compression}\n`;
  if (info.fileHash) out += `FileHash: ${info.fileHash.toString("nix32")}\n`;
  if (info.fileSize !== undefined) out += `FileSize: ${info.fileSize}\n`;
  out += `NarHash: ${info.narHash.toString("nix32")}\n`;
  out += `NarSize: ${info.narSize}\n`;
  // Always present, even when empty ("References: \n"), as Nix writes it.
  out += `References: ${info.references.join(" ")}\n`;
  if (info.deriver !== undefined) out += `Deriver: ${info.deriver}\n`;
  for (const sig of info.sigs) out += `Sig: ${sig}\n`;
  if (info.ca !== undefined) out += `CA: ${info.ca}\n`;
  return out;
}

/** The store directory a narinfo's StorePath lives in. */
function storeDirOf(info: NarInfo): string {
  return info.storePath.slice(0, info.storePath.lastIndexOf("/"));
}

/** References as full store paths (in the StorePath's store directory). */
export function referencesAsPaths(info: NarInfo): string[] {
  const dir = storeDirOf(info);
  return info.references.map((r) => `${dir}/${r}`);
}

/** The string a narinfo's signatures sign. */
export function narInfoFingerprint(info: NarInfo): string {
  return pathFingerprint(info.storePath, info.narHash, info.narSize, referencesAsPaths(info));
}
