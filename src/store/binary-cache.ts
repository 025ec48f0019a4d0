// A binary cache (file:// or http(s)://) read the way Nix reads one: nix-cache-info for the store dir and
// priority, <hashpart>.narinfo for metadata (signatures checked against trusted keys unless the caller
// explicitly allows unsigned paths), nar/... for the compressed NAR, decompressed and verified as a stream.
import type { Readable } from "node:stream";
import { parseCacheInfo, type CacheInfo } from "../nix/cache-info.js";
import { parseHash, type Hash } from "../nix/hash.js";
import { parseNarInfo, type NarInfo } from "../nix/narinfo.js";
import { parseNarListing, type NarListing } from "../nix/nar-listing.js";
import { checkSignatures, pathFingerprint, type PublicKey } from "../nix/signature.js";
import { DEFAULT_STORE_DIR, makeFixedOutputPath, makeTextPath, parseStorePath } from "../nix/store-path.js";
import { decompressStream, parseCompression } from "../util/compression.js";
import { NixociError } from "../util/errors.js";
import { holdErrors } from "../util/streams.js";
import {
  FileTransport,
  openTransport,
  READ_PARAMS,
  redactCredentials,
  splitCacheUrl,
  type CacheTransport,
} from "./cache-transport.js";
import { FlatNarContentCheck } from "./flat-content-check.js";
import type { MetadataCache } from "./metadata-cache.js";
import { NarVerifier } from "./nar-verify.js";
import type { PathInfo } from "./path-info.js";
import type { Store } from "./store.js";

export interface TrustOptions {
  /** Keys whose signatures make a path trusted. */
  trustedKeys: PublicKey[];
  /** Accept paths without a valid signature by a trusted key (Nix's require-sigs = false). */
  allowUnsigned?: boolean;
}

/** A metadata file's parsed value, and whether it came from the metadata cache. */
interface Remembered<T> {
  value: T;
  remembered: boolean;
}

export class BinaryCacheStore implements Store {
  private constructor(
    readonly url: string,
    private readonly transport: CacheTransport,
    private readonly info: CacheInfo,
    private readonly trust: TrustOptions,
    private readonly metadata: MetadataCache | undefined,
  ) {}

  /**
   * `metadata`: where narinfos and NAR listings fetched from this cache are remembered, and looked up before asking
   * the cache (a remembered narinfo is checked like a fetched one; one that fails the checks is fetched again).
   */
  static async open(
    url: string,
    trust: TrustOptions,
    storeDir = DEFAULT_STORE_DIR,
    metadata?: (redactedUrl: string) => MetadataCache,
  ): Promise<BinaryCacheStore> {
    const { base, params } = splitCacheUrl(url, READ_PARAMS);
    const transport = openTransport(base);
    if (transport instanceof FileTransport) await transport.checkRoot();
    url = redactCredentials(base.replace(/\/+$/, "")); // for messages: the transport keeps the credentials
    const text = await transport.getText("nix-cache-info");
    const info =
      text === undefined
        ? { storeDir, wantMassQuery: false, priority: 50 }
        : parseCacheInfo(text, `${url}/nix-cache-info`);
    if (info.storeDir !== storeDir) {
      throw new NixociError(`${url}/nix-cache-info`, `cache is for store ${info.storeDir}, not ${storeDir}`);
    }
    // The URL's parameters override what the cache says, as in Nix.
    const priority = params.get("priority");
    if (priority !== undefined) {
      if (!/^\d{1,9}$/.test(priority))
        throw new NixociError(url, `priority=${JSON.stringify(priority)} is not a non-negative integer`);
      info.priority = Number(priority);
    }
    const massQuery = params.get("want-mass-query");
    if (massQuery !== undefined) {
      if (massQuery !== "true" && massQuery !== "false")
        throw new NixociError(url, `want-mass-query=${JSON.stringify(massQuery)} is not true or false`);
      info.wantMassQuery = massQuery === "true";
    }
    return new BinaryCacheStore(url, transport, info, trust, metadata?.(url));
  }

  get storeDir(): string {
    return this.info.storeDir;
  }

  get priority(): number {
    return this.info.priority;
  }

  /** The narinfo of a path, validated; undefined when the cache does not have it. */
  async queryNarInfo(path: string): Promise<NarInfo | undefined> {
    return (await this.narInfoOf(path, false))?.value;
  }

  /** The narinfo, from the metadata cache unless `fresh` (or not there), and whether it came from there. */
  private narInfoOf(path: string, fresh: boolean): Promise<Remembered<NarInfo> | undefined> {
    const sp = parseStorePath(path, this.storeDir);
    const name = `${sp.hashPart}.narinfo`;
    const input = `${this.url}/${name}`;
    return this.metadataFile(name, fresh, (text) => {
      const narInfo = parseNarInfo(text, { input, storeDir: this.storeDir, expectedHashPart: sp.hashPart });
      if (narInfo.storePath !== path) {
        throw new NixociError(input, `StorePath ${narInfo.storePath} does not match the requested ${path}`);
      }
      return narInfo;
    });
  }

  /**
   * The path's NAR listing (`<hashpart>.ls`, written by caches with write-nar-listing, served by `nixoci serve`),
   * checked as untrusted JSON; undefined when the cache has none. It describes the NAR the narinfo names, but is not
   * signed: use it for what an image's layout is made of (names, kinds, link targets), never for file contents.
   */
  async narListing(path: string): Promise<NarListing | undefined> {
    const name = `${parseStorePath(path, this.storeDir).hashPart}.ls`;
    return (await this.metadataFile(name, false, (text) => parseNarListing(text, `${this.url}/${name}`)))
      ?.value;
  }

  /**
   * A metadata file of the cache, parsed: the metadata cache's copy unless `fresh` (one that does not parse is
   * asked for again), else the cache's, remembered once it parsed; undefined when the cache has none.
   */
  private async metadataFile<T>(
    name: string,
    fresh: boolean,
    parse: (text: string) => T,
  ): Promise<Remembered<T> | undefined> {
    const remembered = fresh ? undefined : this.metadata?.get(name);
    if (remembered !== undefined) {
      try {
        return { value: parse(remembered), remembered: true };
      } catch {
        // not what the cache says now: asked again below
      }
    }
    const text = await this.transport.getText(name);
    if (text === undefined) return undefined;
    const value = parse(text);
    this.metadata?.put(name, text);
    return { value, remembered: false };
  }

  async queryPathInfo(path: string): Promise<PathInfo | undefined> {
    let found = await this.narInfoOf(path, false);
    let info = found && narInfoToPathInfo(found.value, this.storeDir);
    // A remembered narinfo that is not trusted (the keys changed, or the file was altered) is asked for again.
    if (info && found?.remembered && this.untrustedReason(info)) {
      found = await this.narInfoOf(path, true);
      info = found && narInfoToPathInfo(found.value, this.storeDir);
    }
    if (!info) return undefined;
    const problem = this.untrustedReason(info);
    if (problem && !this.trust.allowUnsigned)
      throw new NixociError(`${this.url}/${parseStorePath(path, this.storeDir).hashPart}.narinfo`, problem);
    return info;
  }

  /** Why a path is not trusted, or undefined when it is (a trusted signature, or a verifiable CA claim). */
  private untrustedReason(info: PathInfo): string | undefined {
    if (contentAddressCheck(info, this.storeDir)) return undefined;
    const fingerprint = pathFingerprint(info.path, info.narHash, info.narSize, info.references);
    return checkSignatures(fingerprint, info.sigs, this.trust.trustedKeys);
  }

  async narFromPath(info: PathInfo): Promise<Readable> {
    if (!info.download) throw new NixociError(info.path, "no NAR URL known for this path");
    const { url, compression } = info.download;
    const input = `${this.url}/${url}`;
    const codec = parseCompression(compression, input); // before the download: a throw must not leak it
    const raw = await this.transport.getStream(url);
    if (!raw) throw new NixociError(input, "NAR file is missing from the cache");
    const verifier = new NarVerifier(info.narHash, info.narSize, input);
    const decompress = decompressStream(codec, input, info.narSize);
    // A flat or text content address names the file's contents: checked too, whoever signed the path.
    const ca = contentAddressCheck(info, this.storeDir);
    const nar: Readable =
      ca?.kind === "file" ? new FlatNarContentCheck(ca.hash, input, ca.allowExecutable) : decompress;
    raw.on("error", (err: Error) => decompress.destroy(err));
    if (nar !== decompress) decompress.on("error", (err) => nar.destroy(err));
    nar.on("error", (err) => verifier.destroy(err));
    verifier.on("close", () => {
      raw.destroy();
      decompress.destroy();
      nar.destroy();
    });
    // The bytes flow from here on, and the caller reads only after its own awaits (LocalStore.addPath: a
    // lookup and a mkdir): a NAR that is short, empty or not valid compressed data fails the verifier first.
    const decompressed = raw.pipe(decompress);
    return holdErrors(
      (nar === decompress ? decompressed : decompressed.pipe(nar as FlatNarContentCheck)).pipe(verifier),
    );
  }

  close(): void {}
}

export function narInfoToPathInfo(n: NarInfo, storeDir: string): PathInfo {
  const info: PathInfo = {
    path: n.storePath,
    narHash: n.narHash,
    narSize: n.narSize,
    references: n.references.map((r) => `${storeDir}/${r}`).sort(),
    sigs: n.sigs,
    download: { url: n.url, compression: n.compression, fileHash: n.fileHash, fileSize: n.fileSize },
  };
  if (n.deriver) info.deriver = `${storeDir}/${n.deriver}`;
  if (n.ca) info.ca = n.ca;
  return info;
}

/**
 * A content address an unsigned path may be trusted by (Nix's rule: the path follows from the claim), with how to
 * check its bytes: "nar" when the claimed hash is the NAR's (recursive sha256: the download is checked against
 * NarHash, which must be it), "file" when it is the hash of the path's one file (flat fixed-output, text: the
 * NAR must be that file, see flat-content-check.ts). Undefined when the claim does not name the path.
 */
function contentAddressCheck(
  info: PathInfo,
  storeDir: string,
): { kind: "nar" } | { kind: "file"; hash: Hash; allowExecutable: boolean } | undefined {
  const m = /^(text|fixed:r|fixed):([a-z0-9]+:[0-9a-zA-Z+/=]+)$/.exec(info.ca ?? "");
  if (!m) return undefined;
  try {
    const hash = parseHash(m[2], info.path);
    const name = parseStorePath(info.path, storeDir).name;
    const refs = info.references.filter((r) => r !== info.path);
    const selfReference = refs.length !== info.references.length;
    if (m[1] === "fixed:r") {
      if (hash.algo !== "sha256" || !hash.equals(info.narHash)) return undefined;
      const expected = makeFixedOutputPath({ name, recursive: true, hash, references: refs, storeDir });
      return expected.path === info.path ? { kind: "nar" } : undefined;
    }
    // A flat file cannot refer to itself; a flat fixed-output path refers to nothing.
    if (selfReference || (m[1] === "fixed" && refs.length)) return undefined;
    const expected =
      m[1] === "text"
        ? makeTextPath({ name, contentsHash: hash, references: refs, storeDir })
        : makeFixedOutputPath({ name, recursive: false, hash, storeDir });
    return expected.path === info.path
      ? { kind: "file", hash, allowExecutable: m[1] === "fixed" }
      : undefined;
  } catch {
    return undefined;
  }
}
