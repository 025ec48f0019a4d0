import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { NixociError } from "../../src/util/errors.js";
import { checkSignatures, parsePublicKey } from "../../src/nix/signature.js";
import { Hash, parseHash } from "../../src/nix/hash.js";
import {
  checkNarUrl,
  narInfoFingerprint,
  parseNarInfo,
  referencesAsPaths,
  serializeNarInfo,
  type NarInfo,
} from "../../src/nix/narinfo.js";

const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: "utf8" }).trim();
const nix = (...args: string[]) => run("nix", ["--extra-experimental-features", "nix-command", ...args]);

const work = mkdtempSync(join(tmpdir(), "nixoci-narinfo-"));
after(() => rmSync(work, { recursive: true, force: true }));

// The real, signed narinfo from the reference.
const HELLO = `StorePath: /nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10
URL: nar/0i6ardx43rdg24ab1nc3mq7f5ykyiamymh1v37gxdv5xh5cm0cmb.nar.xz
Compression: xz
FileHash: sha256:0i6ardx43rdg24ab1nc3mq7f5ykyiamymh1v37gxdv5xh5cm0cmb
FileSize: 40360
NarHash: sha256:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8
NarSize: 197528
References: 7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27 gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10
Deriver: 5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello-2.10.drv
Sig: cache.nixos.org-1:K0thQEG60rzAK8ZS9f1whb7eRlIshlMDJAm7xvX1oF284H+PTqlicv/wGW6BIj+wWWONHvUZ2MYc+KDArekjDA==
`;
const HELLO_HASH_PART = "gdh8165b7rg4y53v64chjys7mbbw89f9";

test("parses the reference narinfo", () => {
  const info = parseNarInfo(HELLO, { input: "hello.narinfo", expectedHashPart: HELLO_HASH_PART });
  assert.equal(info.storePath, "/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10");
  assert.equal(info.url, "nar/0i6ardx43rdg24ab1nc3mq7f5ykyiamymh1v37gxdv5xh5cm0cmb.nar.xz");
  assert.equal(info.compression, "xz");
  assert.equal(info.fileHash?.toString(), "sha256:0i6ardx43rdg24ab1nc3mq7f5ykyiamymh1v37gxdv5xh5cm0cmb");
  assert.equal(info.fileSize, 40360);
  assert.equal(info.narHash.algo, "sha256");
  assert.equal(info.narHash.toString(), "sha256:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8");
  assert.equal(info.narSize, 197528);
  assert.deepEqual(info.references, [
    "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27",
    "gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
  ]);
  assert.deepEqual(referencesAsPaths(info), [
    "/nix/store/7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27",
    "/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
  ]);
  assert.equal(info.deriver, "5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello-2.10.drv");
  assert.deepEqual(info.sigs, [
    "cache.nixos.org-1:K0thQEG60rzAK8ZS9f1whb7eRlIshlMDJAm7xvX1oF284H+PTqlicv/wGW6BIj+wWWONHvUZ2MYc+KDArekjDA==",
  ]);
  assert.equal(info.ca, undefined);
  assert.equal(
    narInfoFingerprint(info),
    "1;/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10;sha256:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8;197528;" +
      "/nix/store/7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27,/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
  );
  assert.equal(serializeNarInfo(info), HELLO);
});

test("lenient where Nix is: defaults, other hash formats, unknown keys, old-style fields", () => {
  const narHash = Hash.of("sha256", "nar");
  const base = [
    "StorePath: /nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
    "URL: nar/x.nar",
    `NarHash: ${narHash.toString("base16")}`,
    "NarSize: 10",
  ];
  const info = parseNarInfo(base.join("\n") + "\n", { input: "t" });
  assert.equal(info.compression, "bzip2");
  assert.ok(info.narHash.equals(narHash));
  assert.deepEqual(info.references, []);
  assert.equal(info.fileHash, undefined);
  assert.equal(info.fileSize, undefined);
  assert.equal(info.deriver, undefined);
  assert.deepEqual(info.sigs, []);
  // Serialized with defaults filled in and the hash in nix32; that parses back to the same thing.
  assert.equal(
    serializeNarInfo(info),
    [
      "StorePath: /nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
      "URL: nar/x.nar",
      "Compression: bzip2",
      `NarHash: ${narHash.toString("nix32")}`,
      "NarSize: 10",
      "References: ",
      "",
    ].join("\n"),
  );
  assert.deepEqual(parseNarInfo(serializeNarInfo(info), { input: "t" }), info);

  const variants: string[][] = [
    [...base, "Compression: "],
    [...base, "Compression:"],
    [...base, "System: x86_64-linux", "X-Unknown: whatever: with colons"],
    [...base, "Deriver: unknown-deriver"],
    [...base, "References:"],
    [...base, "References:   "],
    [...base, "CA: "],
  ];
  for (const lines of variants) {
    const v = parseNarInfo(lines.join("\n"), { input: "t" }); // no final newline either
    assert.deepEqual(v, info, lines.join(" | "));
  }
  const sri = parseNarInfo(
    [...base.slice(0, 2), `NarHash: ${narHash.toString("sri")}`, "NarSize: 10"].join("\n"),
    {
      input: "t",
    },
  );
  assert.ok(sri.narHash.equals(narHash));
  const refs = parseNarInfo(
    [
      ...base,
      `References:  ${"a".repeat(32)}-x   ${"b".repeat(32)}-y `,
      `CA: text:${Hash.of("sha256", "x")}`,
    ].join("\n"),
    { input: "t" },
  );
  assert.deepEqual(refs.references, [`${"a".repeat(32)}-x`, `${"b".repeat(32)}-y`]);
  assert.equal(refs.ca, `text:${Hash.of("sha256", "x")}`);
});

test("narinfos written by `nix copy` parse, agree with path-info, and serialize byte for byte", () => {
  // A derivation output with a runtime reference and a deriver, plus a content-addressed path (CA line).
  const tag = randomBytes(6).toString("hex");
  const expr = `let dep = builtins.derivation { name = "dep-${tag}"; system = builtins.currentSystem;
      builder = "/bin/sh"; args = [ "-c" "echo dep > $out" ]; };
    in builtins.derivation { name = "top-${tag}"; system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" "echo \${dep} > $out; echo $out >> $out" ]; }`;
  const top = run("nix-build", ["--no-out-link", "-E", expr]);
  const srcFile = join(work, `src-${tag}`);
  writeFileSync(srcFile, "source\n");
  const src = run("nix-store", ["--add", srcFile]);

  for (const compression of ["none", "xz"]) {
    const cache = join(work, `cache-${compression}`);
    nix("copy", "--to", `file://${cache}?compression=${compression}`, top, src);
    const infos = JSON.parse(nix("path-info", "--json", "-r", top, src)) as {
      path: string;
      narHash: string;
      narSize: number;
      references: string[];
      deriver?: string;
      ca?: string;
    }[];
    const files = readdirSync(cache).filter((f) => f.endsWith(".narinfo"));
    assert.equal(files.length, infos.length);
    for (const f of files) {
      const text = readFileSync(join(cache, f), "utf8");
      const hashPart = f.slice(0, -".narinfo".length);
      const info = parseNarInfo(text, { input: f, expectedHashPart: hashPart });
      assert.equal(serializeNarInfo(info), text, f);
      assert.equal(info.compression, compression);
      const expected = infos.find((i) => i.path === info.storePath);
      assert.ok(expected, info.storePath);
      assert.ok(info.narHash.equals(parseHash(expected.narHash)));
      assert.equal(info.narSize, expected.narSize);
      assert.deepEqual(referencesAsPaths(info).sort(), [...expected.references].sort());
      assert.equal(info.deriver && `/nix/store/${info.deriver}`, expected.deriver);
      assert.equal(info.ca, expected.ca);
      // The NAR file is where the URL says and has the FileHash/FileSize the narinfo claims.
      const nar = readFileSync(join(cache, info.url));
      assert.equal(nar.length, info.fileSize);
      assert.ok(info.fileHash && Hash.of("sha256", nar).equals(info.fileHash));
    }
    const topInfo = parseNarInfo(readFileSync(join(cache, `${top.slice(11, 43)}.narinfo`), "utf8"), {
      input: "top",
    });
    assert.ok(topInfo.references.includes(top.slice("/nix/store/".length)), "self-reference listed");
    assert.equal(topInfo.references.length, 2);
    assert.ok(topInfo.deriver?.endsWith(`-top-${tag}.drv`));
    const srcInfo = parseNarInfo(readFileSync(join(cache, `${src.slice(11, 43)}.narinfo`), "utf8"), {
      input: "src",
    });
    assert.match(srcInfo.ca ?? "", /^fixed:r:sha256:/);
    assert.deepEqual(srcInfo.references, []);
  }
});

test("serializeNarInfo omits absent optional fields and keeps Nix's order", () => {
  const info: NarInfo = {
    storePath: "/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
    url: "nar/a.nar.zst",
    compression: "zstd",
    narHash: Hash.of("sha256", "x"),
    narSize: 5,
    references: [],
    sigs: ["k-1:" + Buffer.alloc(64, 1).toString("base64"), "k-2:" + Buffer.alloc(64, 2).toString("base64")],
    ca: `fixed:r:${Hash.of("sha256", "x")}`,
    fileSize: 0,
  };
  assert.equal(
    serializeNarInfo(info),
    `StorePath: ${info.storePath}\nURL: nar/a.nar.zst\nCompression: zstd\nFileSize: 0\n` +
      `NarHash: ${info.narHash}\nNarSize: 5\nReferences: \nSig: ${info.sigs[0]}\nSig: ${info.sigs[1]}\n` +
      `CA: ${info.ca}\n`,
  );
  assert.deepEqual(parseNarInfo(serializeNarInfo(info), { input: "t" }), info);
});

// A valid narinfo with one line replaced (or removed / added) per case.
function mutate(edit: (lines: string[]) => string[]): string {
  return edit(HELLO.trimEnd().split("\n")).join("\n") + "\n";
}
const replace = (key: string, value: string | null) => (lines: string[]) => {
  const out = lines.filter((l) => !l.startsWith(key + ":"));
  if (value !== null)
    out.splice(
      lines.findIndex((l) => l.startsWith(key + ":")),
      0,
      `${key}: ${value}`,
    );
  return out;
};
const append =
  (...extra: string[]) =>
  (lines: string[]) => [...lines, ...extra];
const goodSig = HELLO.split("\n")
  .find((l) => l.startsWith("Sig: "))!
  .slice(5);
const otherStoreDirPath = "/gnu/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10";

const MALFORMED: [what: string, text: string, expectedHashPart?: string][] = [
  ["empty file", ""],
  ["missing StorePath", mutate(replace("StorePath", null))],
  ["missing URL", mutate(replace("URL", null))],
  ["missing NarHash", mutate(replace("NarHash", null))],
  ["missing NarSize", mutate(replace("NarSize", null))],
  ["empty StorePath", mutate(replace("StorePath", ""))],
  ["empty URL", mutate(replace("URL", ""))],
  ["StorePath not a store path", mutate(replace("StorePath", "/etc/passwd"))],
  ["StorePath in another store dir", mutate(replace("StorePath", otherStoreDirPath))],
  [
    "StorePath with subpath",
    mutate(replace("StorePath", "/nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10/x")),
  ],
  [
    "StorePath with bad hash",
    mutate(replace("StorePath", "/nix/store/edh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10")),
  ],
  ["StorePath not the expected hash part", HELLO, "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc"],
  [
    "duplicate StorePath",
    mutate(append("StorePath: /nix/store/gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10")),
  ],
  [
    "duplicate NarHash",
    mutate(append("NarHash: sha256:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8")),
  ],
  ["duplicate References", mutate(append("References: "))],
  [
    "duplicate CA",
    mutate(append(`CA: text:${Hash.of("sha256", "x")}`, `CA: text:${Hash.of("sha256", "x")}`)),
  ],
  ["NarHash is sha1", mutate(replace("NarHash", Hash.of("sha1", "x").toString()))],
  [
    "NarHash truncated",
    mutate(replace("NarHash", "sha256:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb")),
  ],
  [
    "NarHash bad char",
    mutate(replace("NarHash", "sha256:eddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8")),
  ],
  ["NarHash no algo", mutate(replace("NarHash", "1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8"))],
  [
    "NarHash unknown algo",
    mutate(replace("NarHash", "sha3:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8")),
  ],
  ["FileHash malformed", mutate(replace("FileHash", "sha256:xyz"))],
  ["NarSize zero", mutate(replace("NarSize", "0"))],
  ["NarSize negative", mutate(replace("NarSize", "-5"))],
  ["NarSize not a number", mutate(replace("NarSize", "many"))],
  ["NarSize with sign", mutate(replace("NarSize", "+5"))],
  ["NarSize with leading zero", mutate(replace("NarSize", "0197528"))],
  ["NarSize fractional", mutate(replace("NarSize", "1.5"))],
  ["NarSize exponent", mutate(replace("NarSize", "1e5"))],
  ["NarSize too large", mutate(replace("NarSize", "99999999999999999999"))],
  ["NarSize with trailing space", mutate(replace("NarSize", "197528 "))],
  ["FileSize not a number", mutate(replace("FileSize", "12k"))],
  ["FileSize negative", mutate(replace("FileSize", "-1"))],
  ["line without colon", mutate(append("garbage"))],
  ["line without space after colon", mutate(append("Foo:bar"))],
  ["blank line", mutate(append("", "Foo: bar"))],
  ["line with empty key", mutate(append(": value"))],
  [
    "reference not a base name",
    mutate(replace("References", "/nix/store/7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27")),
  ],
  ["reference with bad hash", mutate(replace("References", "7gx4kiv5m0i7d7qkixq2cwzbr10lvxw-glibc-2.27"))],
  ["reference '..'", mutate(replace("References", "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-.."))],
  ["deriver not a base name", mutate(replace("Deriver", "hello.drv"))],
  [
    "deriver full path",
    mutate(replace("Deriver", "/nix/store/5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello-2.10.drv")),
  ],
  ["CA not a content address", mutate(append("CA: sha256:abc"))],
  ["CA with bad hash", mutate(append("CA: fixed:r:sha256:abc"))],
  ["CA text with sha1", mutate(append(`CA: text:${Hash.of("sha1", "x")}`))],
  ["Compression with space", mutate(replace("Compression", "x z"))],
  // URLs that could escape the cache root once resolved.
  ...[
    "../secret",
    "nar/../../etc/passwd",
    "nar/..",
    "./nar/x.nar",
    "nar/./x.nar",
    "/etc/passwd",
    "//evil.example/x.nar",
    "https://evil.example/x.nar",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "nar/%2e%2e/%2e%2e/etc/passwd",
    "nar/%2E%2E/x",
    "nar/.%2e/x",
    "nar/%2f..%2fx",
    "nar\\..\\x",
    "nar//x.nar",
    "nar/x.nar#frag",
    "nar/%zz.nar",
    "nar/x y.nar",
    "nar/x.nar\t",
  ].map((url): [string, string] => [`URL ${JSON.stringify(url)}`, mutate(replace("URL", url))]),
];

test("malformed narinfos are rejected with a NixociError naming the input", () => {
  for (const [what, text, expectedHashPart] of MALFORMED) {
    assert.throws(
      () => parseNarInfo(text, { input: "test-input.narinfo", expectedHashPart }),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input.narinfo"),
      what,
    );
  }
  // The same text without the defect parses (so the table tests what it says it tests).
  assert.ok(parseNarInfo(HELLO, { input: "x", expectedHashPart: HELLO_HASH_PART }));
  assert.ok(
    parseNarInfo(HELLO.replace("/nix/store/", "/gnu/store/"), { input: "x", storeDir: "/gnu/store" }),
  );
});

test("malformed Sig lines are kept and count as no signature: a good one beside them still verifies", () => {
  const bad = [
    "",
    goodSig.slice(goodSig.indexOf(":")),
    goodSig.slice(goodSig.indexOf(":") + 1),
    `cache nixos:${goodSig.slice(goodSig.indexOf(":") + 1)}`,
    goodSig.slice(0, -4),
    `cache.nixos.org-1:${Buffer.alloc(63).toString("base64")}`,
    `k:${Buffer.alloc(65).toString("base64")}`,
    `k:${"!".repeat(88)}`,
    "other-1:AAAA",
  ];
  const key = parsePublicKey("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=");
  for (const sig of bad) {
    const info = parseNarInfo(mutate(append(`Sig: ${sig}`)), { input: "t" });
    assert.deepEqual(info.sigs, [goodSig, sig], sig);
    assert.equal(checkSignatures(narInfoFingerprint(info), info.sigs, [key]), undefined, sig);
    // Alone, it is no signature at all.
    const only = parseNarInfo(mutate(replace("Sig", sig)), { input: "t" });
    assert.notEqual(checkSignatures(narInfoFingerprint(only), only.sigs, [key]), undefined, sig);
  }
});

test("error messages name the field", () => {
  const cases: [string, RegExp][] = [
    [mutate(replace("NarSize", null)), /NarSize/],
    [mutate(replace("NarSize", "x")), /NarSize/],
    [mutate(replace("NarHash", "sha256:zz")), /NarHash/],
    [mutate(replace("StorePath", "/etc/x")), /StorePath/],
    [mutate(replace("URL", "../x")), /URL/],
    [mutate(replace("References", "x")), /References/],
  ];
  for (const [text, re] of cases) assert.throws(() => parseNarInfo(text, { input: "in" }), re);
});

test("checkNarUrl accepts the URLs real caches use", () => {
  for (const url of [
    "nar/0i6ardx43rdg24ab1nc3mq7f5ykyiamymh1v37gxdv5xh5cm0cmb.nar.xz",
    "nar/0i6ardx43rdg24ab1nc3mq7f5ykyiamymh1v37gxdv5xh5cm0cmb.nar",
    "nar/abc.nar?hash=gdh8165b7rg4y53v64chjys7mbbw89f9", // harmonia
    "x.nar.zst",
    "a/b/c.nar",
    "nar/a..b.nar",
    "nar/...",
  ]) {
    checkNarUrl(url, "t");
    const resolved = new URL(url, "https://cache.example/sub/");
    assert.ok(resolved.href.startsWith("https://cache.example/sub/"), url);
  }
});
