// "nix-cache-info", the file at the root of a binary cache: "Key: value" lines saying which store directory
// the cache is for and how clients should rank and query it.
import { NixociError, quote } from "../util/errors.js";
import { DEFAULT_STORE_DIR, hasControlChars } from "./store-path.js";

export interface CacheInfo {
  storeDir: string;
  wantMassQuery: boolean;
  priority: number;
}

const DEFAULT_PRIORITY = 50;

export function parseCacheInfo(text: string, input: string): CacheInfo {
  const info: CacheInfo = { storeDir: DEFAULT_STORE_DIR, wantMassQuery: false, priority: DEFAULT_PRIORITY };
  const seen = new Set<string>();
  for (const line of text.split("\n")) {
    // Like Nix: lines without a colon are skipped, values are trimmed, unknown keys ignored.
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const key = line.slice(0, colon);
    const value = line.slice(colon + 1).trim();
    if (key !== "StoreDir" && key !== "WantMassQuery" && key !== "Priority") continue;
    if (seen.has(key)) throw new NixociError(input, `${key} appears more than once`);
    seen.add(key);
    if (key === "StoreDir") {
      if (!value.startsWith("/") || value.length < 2 || value.endsWith("/") || hasControlChars(value)) {
        throw new NixociError(input, `StoreDir ${quote(value)} is not an absolute path`);
      }
      info.storeDir = value;
    } else if (key === "WantMassQuery") {
      if (value !== "0" && value !== "1")
        throw new NixociError(input, `WantMassQuery ${quote(value)} is not 0 or 1`);
      info.wantMassQuery = value === "1";
    } else {
      // Nix reads it into a C int.
      const n = Number(value);
      if (!/^-?[0-9]+$/.test(value) || n < -(2 ** 31) || n >= 2 ** 31) {
        throw new NixociError(input, `Priority ${quote(value)} is not an integer`);
      }
      info.priority = n;
    }
  }
  return info;
}

/**
 * Renders nix-cache-info. Nix 2.8 writes only "StoreDir: ...\n" for a cache it creates; the other lines are
 * written only when they differ from what a reader assumes when they are absent, so a default CacheInfo
 * renders exactly as Nix's.
 */
export function serializeCacheInfo(info: CacheInfo): string {
  let out = `StoreDir: ${info.storeDir}\n`;
  if (info.wantMassQuery) out += "WantMassQuery: 1\n";
  if (info.priority !== DEFAULT_PRIORITY) out += `Priority: ${info.priority}\n`;
  return out;
}
