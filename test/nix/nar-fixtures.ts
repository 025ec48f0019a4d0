// Shared by the NAR tests: a tiny NAR builder (for well-formed and deliberately broken NARs), the corpus of
// malformed NARs (one per rule the strict reader enforces), a generator for awkward filesystem trees, and
// helpers to run the real Nix, which is the reference implementation.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import { join } from "node:path";

/** A NAR string: u64 LE length, bytes, zero padding to a multiple of 8. */
export function narStr(s: string | Buffer): Buffer {
  const bytes = typeof s === "string" ? Buffer.from(s, "utf8") : s;
  const out = Buffer.alloc(8 + bytes.length + ((8 - (bytes.length % 8)) % 8));
  out.writeBigUInt64LE(BigInt(bytes.length), 0);
  bytes.copy(out, 8);
  return out;
}

/** Raw bytes, inserted as they are (for broken lengths, padding, truncation). */
export class Raw {
  constructor(readonly bytes: Buffer) {}
}

export function u64(n: bigint | number): Raw {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return new Raw(b);
}

/** Concatenates parts: strings and Buffers become NAR strings, Raw parts are copied as they are. */
export function nar(...parts: (string | Buffer | Raw | (string | Buffer | Raw)[])[]): Buffer {
  const out: Buffer[] = [];
  for (const p of parts.flat()) out.push(p instanceof Raw ? p.bytes : narStr(p));
  return Buffer.concat(out);
}

// Building blocks of well-formed NARs.
export const file = (contents: string | Buffer, executable = false) => [
  "(",
  "type",
  "regular",
  ...(executable ? ["executable", ""] : []),
  "contents",
  contents,
  ")",
];
export const symlink = (target: string | Buffer) => ["(", "type", "symlink", "target", target, ")"];
export const dir = (...entries: [string | Buffer, (string | Buffer | Raw)[]][]) => [
  "(",
  "type",
  "directory",
  ...entries.flatMap(([name, node]) => ["entry", "(", "name", name, "node", ...node, ")"]),
  ")",
];
export const MAGIC = "nix-archive-1";

/** Nests `depth` directories named "d" around an empty directory: the innermost is at depth `depth`. */
function nested(depth: number): (string | Buffer | Raw)[] {
  let node: (string | Buffer | Raw)[] = dir();
  for (let i = 0; i < depth; i++) node = dir(["d", node]);
  return node;
}

export interface BadNar {
  name: string;
  bytes: Buffer;
  /** A fragment the error message must contain. */
  problem: string;
  /** The byte offset the message must name. */
  offset: number;
}

/** The malformed NAR corpus: each breaks one rule. Offsets are where the offending item starts. */
export function badNars(): BadNar[] {
  const good = nar(MAGIC, file("hi\n"));
  const cases: BadNar[] = [];
  const add = (name: string, bytes: Buffer, problem: string, offset: number) =>
    cases.push({ name, bytes, problem, offset });

  add("empty-input", Buffer.alloc(0), "truncated NAR", 0);
  add("bad-magic", nar("nix-archive-2", file("hi\n")), "not a NAR", 0);
  add("not-a-nar", Buffer.from("\x1f\x8b\x08\x00 this is gzip, not a NAR"), "not a NAR", 0);
  {
    const b = Buffer.from(good);
    // "hi\n" sits at the end of the contents string; its padding follows the 3 bytes.
    const contentsAt = b.indexOf("hi\n");
    b[contentsAt + 4] = 1;
    add("nonzero-padding-contents", b, "non-zero padding after file contents", contentsAt + 3);
  }
  {
    const b = nar(
      MAGIC,
      "(",
      "type",
      "regular",
      "contents",
      u64(3),
      new Raw(Buffer.from("hi\n\0\0\0\0\0")),
      ")",
    );
    const tagAt = b.indexOf("type") - 8;
    b[tagAt + 8 + 5] = 7; // padding of "type"
    add("nonzero-padding-tag", b, "non-zero padding after the tag", tagAt + 8 + 4);
  }
  {
    const b = nar(MAGIC, "(", "type", "regular", "contents", "hi\n", "executable", "", ")");
    add("executable-after-contents", b, '"executable" must come before "contents"', b.length - 16 - 8 - 24);
  }
  {
    const b = nar(MAGIC, "(", "type", "regular", "executable", "x", "contents", "hi\n", ")");
    add("executable-with-value", b, "executable marker has non-empty value", 8 + 16 + 3 * 16 + 24);
  }
  add("unknown-type", nar(MAGIC, "(", "type", "fifo", ")"), 'unknown node type "fifo"', 24 + 32);
  add("type-not-first", nar(MAGIC, "(", "contents", "hi\n", ")"), 'expected tag "type", got "contents"', 40);
  add("missing-open", nar(MAGIC, "type", "regular"), 'expected tag "(", got "type"', 24);
  {
    const b = nar(MAGIC, "(", "type", "directory", "entryx", ")");
    add("unknown-tag-in-directory", b, 'expected tag "entry" or ")", got "entryx"', 24 + 56);
  }
  {
    const b = nar(MAGIC, "(", "type", "regular", "size", "3", "contents", "hi\n", ")");
    add("unknown-tag-in-file", b, 'got "size"', 24 + 48);
  }
  {
    const b = nar(MAGIC, "(", "type", "symlink", "link", "/bin", ")");
    add("unknown-tag-in-symlink", b, 'expected tag "target", got "link"', 24 + 48);
  }
  // Directory entry names. The name string of the first entry starts after magic (24 bytes), "(", "type",
  // "directory" (16 + 16 + 24) and "entry", "(", "name" (3 * 16):
  const nameAt = 24 + 56 + 3 * 16;
  add("empty-name", nar(MAGIC, dir(["", file("x")])), "entry name is empty", nameAt);
  add("dot-name", nar(MAGIC, dir([".", file("x")])), 'entry name "." is not allowed', nameAt);
  add("dotdot-name", nar(MAGIC, dir(["..", file("x")])), 'entry name ".." is not allowed', nameAt);
  add("slash-name", nar(MAGIC, dir(["a/b", file("x")])), 'entry name "a/b" contains "/"', nameAt);
  add("nul-name", nar(MAGIC, dir(["a\0b", file("x")])), "contains a NUL byte", nameAt);
  {
    const b = nar(MAGIC, dir(["b", file("x")], ["a", file("y")]));
    add(
      "unsorted-entries",
      b,
      'entry name "a" is not after "b": entries are not sorted',
      b.lastIndexOf("a\0\0") - 8,
    );
  }
  {
    const b = nar(MAGIC, dir(["B", file("x")], ["a", file("y")], ["Z", file("z")]));
    add("unsorted-bytewise", b, 'entry name "Z" is not after "a"', b.lastIndexOf("Z\0\0") - 8);
  }
  {
    const b = nar(MAGIC, dir(["a", file("x")], ["a", file("y")]));
    add("duplicate-entries", b, 'duplicate entry name "a"', b.lastIndexOf("a\0\0") - 8);
  }
  {
    const b = nar(MAGIC, dir(["x", symlink("/etc")], ["x", dir(["passwd", file("pwned")])]));
    add("symlink-then-same-name-directory", b, 'duplicate entry name "x"', b.lastIndexOf("x\0\0") - 8);
  }
  add(
    "long-name",
    nar(MAGIC, dir(["n".repeat(256), file("x")])),
    "256 bytes long, more than the limit of 255",
    nameAt,
  );
  // Symlink targets: the target string starts after magic, "(", "type", "symlink", "target".
  const targetAt = 24 + 4 * 16;
  add("empty-target", nar(MAGIC, symlink("")), "symlink target is empty", targetAt);
  add(
    "long-target",
    nar(MAGIC, symlink("/" + "t".repeat(4095))),
    "4096 bytes long, more than the limit of 4095",
    targetAt,
  );
  add("nul-target", nar(MAGIC, symlink("/bin\0/sh")), "symlink target", targetAt);
  add(
    "huge-tag-length",
    nar(MAGIC, u64(1n << 40n)),
    "1099511627776 bytes long, more than the limit of 32",
    24,
  );
  add(
    "huge-type-length",
    nar(MAGIC, "(", "type", u64(0xffffffffffffffffn)),
    "18446744073709551615 bytes long, more than the limit of 32",
    56,
  );
  add(
    "huge-name-length",
    nar(MAGIC, "(", "type", "directory", "entry", "(", "name", u64(1n << 33n)),
    "limit of 255",
    nameAt,
  );
  add(
    "huge-target-length",
    nar(MAGIC, "(", "type", "symlink", "target", u64(1n << 62n)),
    "limit of 4095",
    targetAt,
  );
  add(
    "huge-file-size",
    nar(MAGIC, "(", "type", "regular", "contents", u64(1n << 60n)),
    "is too large",
    24 + 64,
  );
  {
    const b = nar(MAGIC, file("x".repeat(100)));
    add(
      "truncated-contents",
      b.subarray(0, b.length - 70),
      "truncated NAR: input ends in file contents",
      b.length - 70,
    );
  }
  {
    const b = nar(MAGIC, dir(["a", file("x")], ["b", file("y")]));
    const cut = b.lastIndexOf("b\0\0") - 8 + 4; // in the middle of the length of the name "b"
    add(
      "truncated-string-length",
      b.subarray(0, cut),
      "truncated NAR: input ends in the length of the entry name",
      cut,
    );
  }
  {
    const b = nar(MAGIC, dir(["a", file("x")]));
    add("truncated-before-close", b.subarray(0, b.length - 16), "truncated NAR", b.length - 16);
  }
  {
    const b = nar(MAGIC, file("hi\n"));
    add("truncated-in-padding", b.subarray(0, b.length - 16 - 2), "truncated NAR", b.length - 16 - 2);
  }
  {
    const b = nar(MAGIC, nested(100));
    // The node at depth 64 is the first one rejected; it starts after 64 levels of directory framing.
    add("depth-100", b, "directories nested more than 63 deep", 24 + 64 * (56 + 3 * 16 + 16 + 16));
  }
  return cases;
}

/** Yields `bytes` in chunks of `size` (to exercise the parser's paths across chunk boundaries). */
export async function* chunked(bytes: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

/** Deterministic pseudo-random bytes. */
export function pseudoRandom(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/**
 * Fills `root` (created) with an awkward tree: names needing bytewise sorting, a 255-byte name, a non-UTF-8
 * name (if `nonUtf8`), symlinks (absolute, relative, dangling, to a directory), executables and files with
 * only group/other x bits, empty files and directories, files of every size mod 8, a 5 MB file, many small
 * files.
 */
export function makeTree(root: string, opts: { nonUtf8?: boolean; big?: boolean } = {}): void {
  fs.mkdirSync(root);
  const w = (rel: string, data: string | Buffer, mode = 0o644) =>
    fs.writeFileSync(join(root, rel), data, { mode });
  for (const name of ["B", "a", "_", "Ä", "Z", "ä", "10", "9", "-", "~", "a b", "__proto__", "constructor"]) {
    w(name, `file ${name}\n`);
  }
  w("n".repeat(255), "long name\n");
  fs.mkdirSync(join(root, "bin"));
  w("bin/exec", "#!/bin/sh\necho hi\n", 0o755);
  w("bin/owner-x-only", "x", 0o700);
  w("bin/group-x-only", "x", 0o654);
  w("bin/other-x-only", "x", 0o645);
  fs.mkdirSync(join(root, "empty-dir"));
  fs.mkdirSync(join(root, "nested/deeper/deepest/empty"), { recursive: true });
  w("nested/deeper/deepest/file", "deep\n");
  w("empty-file", "");
  fs.mkdirSync(join(root, "sizes"));
  for (let n = 0; n <= 17; n++) w(`sizes/${n}`, pseudoRandom(n, n + 1));
  fs.symlinkSync("/bin", join(root, "link-abs"));
  fs.symlinkSync("../a", join(root, "nested/link-rel"));
  fs.symlinkSync("does/not/exist", join(root, "link-dangling"));
  fs.symlinkSync("nested", join(root, "link-dir"));
  fs.symlinkSync("Ä/ü/" + "x".repeat(200), join(root, "link-long"));
  fs.mkdirSync(join(root, "many"));
  for (let i = 0; i < 600; i++) w(`many/f${i}`, pseudoRandom(i * 7, i));
  if (opts.big) w("big", pseudoRandom(5 * 1024 * 1024 + 3, 42));
  if (opts.nonUtf8) {
    // Names and a target that are not UTF-8: a Latin-1 byte, a stray 0xff, a truncated and an overlong sequence,
    // a CESU-8 surrogate, next to valid multi-byte characters (one outside the BMP).
    const at = (...parts: (string | number[])[]) =>
      Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : Buffer.from(p))));
    fs.writeFileSync(at(root, "/latin1-", [0xe9, 0xff]), "x");
    fs.mkdirSync(at(root, "/dir-", [0xe9], "t", [0xe9]));
    fs.writeFileSync(at(root, "/dir-", [0xe9], "t", [0xe9], "/in-", [0xc3], "-", [0xc0, 0x80]), "inside\n");
    fs.writeFileSync(at(root, "/dir-", [0xe9], "t", [0xe9], "/\u{1f600}", [0xed, 0xa0, 0x80], "\u00e9"), "y");
    fs.symlinkSync(at("target-", [0xfe], "/caf", [0xe9]), at(root, "/link-", [0xff]));
  }
}

/** The NAR of `path` according to the real Nix. */
export function nixDump(path: string): Buffer {
  return execFileSync("nix-store", ["--dump", path], { maxBuffer: 1 << 30 });
}

/** Restores `bytes` at `dest` with the real Nix. */
export function nixRestore(bytes: Buffer, dest: string): void {
  execFileSync("nix-store", ["--restore", dest], { input: bytes });
}

const NIX_OPTS = ["--option", "sandbox", "false", "--option", "substituters", ""];

/** Builds a small store path with files, an executable, symlinks and empty directories; returns its path. */
export function buildStorePath(workDir: string, name = "nixoci-nar-test"): string {
  const expr = join(workDir, "t.nix");
  fs.writeFileSync(
    expr,
    `builtins.derivation {
      name = "${name}";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = ["-c" ''
        export PATH=/bin:/usr/bin
        mkdir -p $out/bin $out/share/empty $out/z $out/lib/deep/er
        echo hi > $out/a
        printf '#!/bin/sh\\necho x\\n' > $out/bin/run
        chmod +x $out/bin/run
        ln -s ../a $out/link
        ln -s /nonexistent $out/dangling
        : > $out/emptyfile
        echo B > $out/B
        echo u > $out/_
        echo 10 > $out/10
        echo 9 > $out/9
        head -c 100000 /dev/zero > $out/lib/deep/er/zeros
      ''];
    }`,
  );
  const out = execFileSync("nix-build", ["--no-out-link", ...NIX_OPTS, expr], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  return out.toString().trim().split("\n").pop()!;
}

/** Builds a store path whose root is a single regular file. */
export function buildStoreFile(workDir: string): string {
  const expr = join(workDir, "f.nix");
  fs.writeFileSync(
    expr,
    `builtins.derivation {
      name = "nixoci-nar-test-file";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = ["-c" "printf 'single file\\\\n' > $out"];
    }`,
  );
  const out = execFileSync("nix-build", ["--no-out-link", ...NIX_OPTS, expr], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  return out.toString().trim().split("\n").pop()!;
}

/** Nix's own listing of a store path (from `nix copy --to file://...?write-nar-listing=true`). */
export function nixListing(storePath: string, cacheDir: string): string {
  execFileSync(
    "nix",
    [
      "--extra-experimental-features",
      "nix-command",
      "copy",
      ...NIX_OPTS,
      "--to",
      `file://${cacheDir}?write-nar-listing=true&compression=none`,
      storePath,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const hashPart = storePath.split("/").pop()!.slice(0, 32);
  return fs.readFileSync(join(cacheDir, `${hashPart}.ls`), "utf8");
}

/** Entries of a directory, recursively, with their types (for "nothing was left behind" checks). */
export function snapshot(dirPath: string): string[] {
  const out: string[] = [];
  // Names as bytes (shown as hex where they are not plain ASCII): a tree may have names that are not UTF-8.
  const show = (b: Buffer) =>
    /^[\x20-\x7e]*$/.test(b.toString("latin1")) ? b.toString("latin1") : `<${b.toString("hex")}>`;
  const walk = (p: Buffer, rel: string) => {
    for (const e of fs.readdirSync(p, { withFileTypes: true, encoding: "buffer" }) as fs.Dirent<Buffer>[]) {
      const r = rel ? `${rel}/${show(e.name)}` : show(e.name);
      out.push(`${r}:${e.isDirectory() ? "d" : e.isSymbolicLink() ? "l" : "f"}`);
      if (e.isDirectory()) walk(Buffer.concat([p, Buffer.from("/"), e.name]), r);
    }
  };
  walk(Buffer.from(dirPath), "");
  return out.sort();
}
