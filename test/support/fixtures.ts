// Real store paths and binary caches made by the real Nix (Debian's nix-bin 2.8), for tests to compare against.
//
// test/fixtures/packages.nix is an attribute set of small deterministic derivations (see the comments there);
// `all` references every other attribute, so the closure of `all` is the whole set.
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Compression } from "../../src/util/compression.js";
import { nixCmd, run, runText } from "./run.js";

/** The repository root (this file runs as dist/test/support/fixtures.js). */
export function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "test/fixtures/packages.nix")))
      return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error("fixtures: cannot find the repository root (test/fixtures/packages.nix)");
    dir = up;
  }
}

export const PACKAGES_NIX = join(findRoot(), "test/fixtures/packages.nix");

/** The attribute names packages.nix defines (`all` included). */
export const FIXTURE_ATTRS = [
  "all",
  "big",
  "busybox",
  "empty-dir",
  "empty-file",
  "greeting",
  "hello",
  "long-names",
  "self-ref",
  "single-executable",
  "single-file",
  "sort-order",
  "symlink-path",
  "tree",
] as const;
export type FixtureAttr = (typeof FIXTURE_ATTRS)[number];

/** Out-links (indirect GC roots) live here, so `nix-collect-garbage` leaves the fixtures alone. */
export const GC_ROOTS_DIR = join(tmpdir(), "nixoci-test-roots");

let built: Record<FixtureAttr, string> | undefined;

/**
 * Builds every fixture (one `nix-build -A all`; a few seconds the first time, instant afterwards) and returns
 * attribute name -> store path. Memoised per process; concurrent test processes may call it at once (Nix locks).
 */
export function buildFixtures(): Record<FixtureAttr, string> {
  if (built) return built;
  mkdirSync(GC_ROOTS_DIR, { recursive: true });
  const all = runText("nix-build", [PACKAGES_NIX, "-A", "all", "--out-link", join(GC_ROOTS_DIR, "all")]);
  // `all` lists "<attr> <store path>" for every other attribute.
  const map: Record<string, string> = { all };
  for (const line of readFileSync(join(all, "paths"), "utf8").split("\n")) {
    const m = /^(\S+) (\/\S+)$/.exec(line.trim());
    if (m) map[m[1]] = m[2];
  }
  for (const attr of FIXTURE_ATTRS) {
    if (!map[attr]) throw new Error(`fixtures: ${PACKAGES_NIX} has no attribute ${attr} in all/paths`);
  }
  built = map as Record<FixtureAttr, string>;
  return built;
}

/**
 * A store path (added with `nix-store --add` from a tree made under `workDir`) whose names and a symlink target are
 * not UTF-8, as Nix keeps them: a directory "caf\xe9" with "na\xefve" ("latin-1\n") and "\xff\xfe", and a symlink
 * "link-\xe9" to "caf\xe9/na\xefve". `bytes` joins strings and byte arrays into a path.
 */
export function addNotUtf8Path(workDir: string): string {
  const src = join(workDir, "not-utf8-src");
  mkdirSync(src);
  mkdirSync(bytes(src, "/caf", [0xe9]));
  writeFileSync(bytes(src, "/caf", [0xe9], "/na", [0xef, 0x76, 0x65]), "latin-1\n");
  writeFileSync(bytes(src, "/caf", [0xe9], "/", [0xff, 0xfe]), "stray bytes\n");
  symlinkSync(bytes("caf", [0xe9], "/na", [0xef, 0x76, 0x65]), bytes(src, "/link-", [0xe9]));
  return runText("nix-store", ["--add", src]);
}

/** The target of addNotUtf8Link's store path: "/nowhere/caf\xe9". */
export const NOT_UTF8_LINK_TARGET = bytes("/nowhere/caf", [0xe9]);

/** A store path that is a symlink to NOT_UTF8_LINK_TARGET (added with `nix-store --add`). */
export function addNotUtf8Link(workDir: string): string {
  const link = join(workDir, "not-utf8-link");
  symlinkSync(NOT_UTF8_LINK_TARGET, link);
  return runText("nix-store", ["--add", link]);
}

/** Strings (as UTF-8) and byte arrays joined into one buffer: a path with bytes that are not UTF-8. */
export function bytes(...parts: (string | number[])[]): Buffer {
  return Buffer.concat(parts.map((p) => Buffer.from(p)));
}

/** bookworm's arm64 busybox-static, unpacked by scripts/install-arm64-emulation.sh (which also registers qemu). */
export const ARM64_BUSYBOX = join(process.env.NIXOCI_ARM64_CACHE ?? "/var/cache/nixoci/arm64", "busybox");

let builtArm64: { busybox: string; hello: string } | undefined;

/**
 * The arm64 fixtures of test/fixtures/arm64.nix: `hello` prints "Hello from <uname -m>" with an arm64 busybox.
 * Fails (never skips) when the install step has not run.
 */
export function buildArm64Fixtures(): { busybox: string; hello: string } {
  if (builtArm64) return builtArm64;
  if (!existsSync(ARM64_BUSYBOX))
    throw new Error(
      `${ARM64_BUSYBOX} is missing: run scripts/install-arm64-emulation.sh (npm test's install step)`,
    );
  mkdirSync(GC_ROOTS_DIR, { recursive: true });
  const file = join(findRoot(), "test/fixtures/arm64.nix");
  const build = (attr: string) =>
    runText("nix-build", [
      file,
      "--arg",
      "busybox",
      ARM64_BUSYBOX,
      "-A",
      attr,
      "--out-link",
      join(GC_ROOTS_DIR, `arm64-${attr}`),
    ]);
  builtArm64 = { busybox: build("busyboxArm64"), hello: build("hello") };
  return builtArm64;
}

const tempDirs: string[] = [];
let exitHookInstalled = false;

/**
 * A fresh directory under os.tmpdir() ("nixoci-<prefix>-XXXXXX"), removed when the process exits
 * (set NIXOCI_KEEP_TMP=1 to keep it for debugging).
 */
export function makeTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `nixoci-${prefix}-`));
  tempDirs.push(dir);
  if (!exitHookInstalled && !process.env.NIXOCI_KEEP_TMP) {
    exitHookInstalled = true;
    process.on("exit", removeTempDirs);
  }
  return dir;
}

function removeTempDirs(): void {
  for (const dir of tempDirs.splice(0)) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // Read-only directories (restored store trees) when not root: make them writable and retry.
      try {
        run("chmod", ["-R", "u+w", dir]);
        rmSync(dir, { recursive: true, force: true });
      } catch {
        // Leave it; it is under the temp dir.
      }
    }
  }
}

export interface CacheKey {
  secretKeyFile: string;
  publicKeyFile: string;
  /** "name:base64(32 bytes)" */
  publicKey: string;
  /** "name:base64(64 bytes)" */
  secretKey: string;
}

/** Makes an ed25519 binary-cache signing key pair with `nix-store --generate-binary-cache-key` in dir. */
export function generateCacheKey(name: string, dir: string): CacheKey {
  mkdirSync(dir, { recursive: true });
  const secretKeyFile = join(dir, `${name}.sec`);
  const publicKeyFile = join(dir, `${name}.pub`);
  run("nix-store", ["--generate-binary-cache-key", name, secretKeyFile, publicKeyFile]);
  return {
    secretKeyFile,
    publicKeyFile,
    publicKey: readFileSync(publicKeyFile, "utf8").trim(),
    secretKey: readFileSync(secretKeyFile, "utf8").trim(),
  };
}

/**
 * Compressions nix 2.8's `nix copy --to file://...?compression=X` writes (checked on these machines):
 * none, xz, bzip2, zstd, br and gzip, plus lz4, lzip and compress (libarchive filters; not offered here).
 * grzip/lrzip/lzop need external programs that are not installed; unknown names fail
 * ("unknown compression method"). The NAR file name suffix is Nix's own: .xz .bz2 .zst .br, and NO suffix for
 * gzip (and none): a gzip cache has `URL: nar/<hash>.nar` with `Compression: gzip`. Nix's gzip output embeds
 * the current time in its header, so it is not reproducible; the others are.
 */
export type NixCacheCompression = Compression;

/** The suffix Nix 2.8 gives NAR files for a compression (differs from ours for gzip). */
export function nixNarExtension(c: NixCacheCompression): string {
  switch (c) {
    case "none":
    case "gzip":
      return "";
    case "xz":
      return ".xz";
    case "zstd":
      return ".zst";
    case "bzip2":
      return ".bz2";
    case "br":
      return ".br";
  }
}

export interface NixCacheOptions {
  /** Store paths to copy; `nix copy` always copies their whole closures. */
  paths: string[];
  /** The cache directory (created if missing). */
  dir: string;
  compression: NixCacheCompression;
  /** Sign every narinfo with this key (see generateCacheKey). */
  secretKeyFile?: string;
  /** Also write <hashpart>.ls listing files. */
  writeNarListing?: boolean;
}

/** Writes a real binary cache with `nix copy --to file://DIR?...` and returns its file:// URL. */
export function makeNixCache(opts: NixCacheOptions): string {
  mkdirSync(opts.dir, { recursive: true });
  const params = [`compression=${opts.compression}`];
  if (opts.secretKeyFile) params.push(`secret-key=${opts.secretKeyFile}`);
  if (opts.writeNarListing) params.push("write-nar-listing=true");
  const url = `file://${opts.dir}`;
  nixCmd(["copy", "--to", `${url}?${params.join("&")}`, ...opts.paths]);
  return url;
}

/**
 * A new key pair `keyName` in WORK/keys and a cache of `paths` signed with it in WORK/cache: the substitution
 * tests and drills all start from one. Returns the cache's file:// URL, its directory and the key.
 */
export function makeSignedNixCache(
  work: string,
  keyName: string,
  paths: string[],
  compression: NixCacheCompression = "xz",
): { url: string; dir: string; key: CacheKey } {
  const key = generateCacheKey(keyName, join(work, "keys"));
  const dir = join(work, "cache");
  const url = makeNixCache({ paths, dir, compression, secretKeyFile: key.secretKeyFile });
  return { url, dir, key };
}
