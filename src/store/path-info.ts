// What a store knows about one valid store path: the metadata Nix keeps in its database and publishes in
// narinfo files. References are full store paths, sorted, including a self reference when there is one.
import type { Hash } from "../nix/hash.js";

export interface PathInfo {
  path: string;
  narHash: Hash;
  narSize: number;
  references: string[];
  deriver?: string;
  sigs: string[];
  ca?: string;
  registrationTime?: number;
  ultimate?: boolean;
  /** For paths from a binary cache: where the (compressed) NAR lives and how it is packed. */
  download?: { url: string; compression: string; fileHash?: Hash; fileSize?: number };
}

/** The JSON shape `nix path-info --json` prints (Nix 2.8), so scripts can switch between the two tools. */
export function pathInfoToJson(info: PathInfo): Record<string, unknown> {
  const out: Record<string, unknown> = {
    path: info.path,
    narHash: info.narHash.toString("sri"),
    narSize: info.narSize,
    references: info.references,
  };
  if (info.deriver) out.deriver = info.deriver;
  if (info.registrationTime !== undefined) out.registrationTime = info.registrationTime;
  if (info.ultimate) out.ultimate = true;
  if (info.sigs.length) out.signatures = info.sigs;
  if (info.ca) out.ca = info.ca;
  if (info.download) {
    out.url = info.download.url;
    out.compression = info.download.compression;
    if (info.download.fileHash) out.downloadHash = info.download.fileHash.toString("sri");
    if (info.download.fileSize !== undefined) out.downloadSize = info.download.fileSize;
  }
  return out;
}
