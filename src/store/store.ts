// The one interface every place store paths come from implements: a local store directory (with Nix's
// database or nixoci's own metadata) or a binary cache. Callers ask for a path's metadata and its NAR; the
// NAR stream is verified against NarHash/NarSize and fails at its end if the bytes are not what was promised.
import type { Readable } from "node:stream";
import type { PathInfo } from "./path-info.js";

export interface Store {
  /** The store directory named in store paths (normally /nix/store). */
  readonly storeDir: string;
  /** How to name this store in messages: a directory or a URL. */
  readonly url: string;
  /** Lower is preferred when several stores can provide a path (nix-cache-info's Priority). */
  readonly priority: number;
  /** Metadata of a valid path, or undefined when the store does not have it. */
  queryPathInfo(path: string): Promise<PathInfo | undefined>;
  /**
   * The path's NAR, checked while streaming against info.narHash and info.narSize. The bytes may start to flow
   * (and fail) before the caller reads: the stream keeps such an error for its reader (holdErrors), so read it
   * with async iteration or pipeline(), or destroy it.
   */
  narFromPath(info: PathInfo): Promise<Readable>;
  close(): void;
}
