import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { NixociError } from "../../src/util/errors.js";
import { Hash } from "../../src/nix/hash.js";
import { narInfoFingerprint, parseNarInfo, serializeNarInfo } from "../../src/nix/narinfo.js";
import {
  checkSignatures,
  generateKeyPair,
  parsePublicKey,
  parseSecretKey,
  parseSignature,
  pathFingerprint,
  signFingerprint,
  verifyFingerprint,
} from "../../src/nix/signature.js";

const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: "utf8" }).trim();
const NIX = ["--extra-experimental-features", "nix-command"];

const work = mkdtempSync(join(tmpdir(), "nixoci-signature-"));
after(() => rmSync(work, { recursive: true, force: true }));

const CACHE_NIXOS_ORG = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
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

function nixKeyPair(name: string): { secretFile: string; secret: string; public: string } {
  const dir = mkdtempSync(join(work, "key-"));
  const secretFile = join(dir, "sec");
  const publicFile = join(dir, "pub");
  execFileSync("nix-store", ["--generate-binary-cache-key", name, secretFile, publicFile]);
  return { secretFile, secret: readFileSync(secretFile, "utf8"), public: readFileSync(publicFile, "utf8") };
}

// A fresh store path with a runtime reference (to a fresh dependency) and a self-reference.
function buildPath(): string {
  const tag = randomBytes(6).toString("hex");
  const expr = `let dep = builtins.derivation { name = "sigdep-${tag}"; system = builtins.currentSystem;
      builder = "/bin/sh"; args = [ "-c" "echo dep > $out" ]; };
    in builtins.derivation { name = "sigtop-${tag}"; system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" "echo \${dep} > $out; echo $out >> $out" ]; }`;
  return run("nix-build", ["--no-out-link", "-E", expr]);
}

const narinfoFile = (cache: string, path: string) => join(cache, `${path.slice(11, 43)}.narinfo`);

test("the reference narinfo's signature verifies with cache.nixos.org's key", () => {
  const info = parseNarInfo(HELLO, { input: "hello.narinfo" });
  const key = parsePublicKey(CACHE_NIXOS_ORG, "cache.nixos.org key");
  assert.equal(key.name, "cache.nixos.org-1");
  assert.equal(key.toString(), CACHE_NIXOS_ORG);
  const fp = narInfoFingerprint(info);
  assert.ok(verifyFingerprint(fp, info.sigs, [key]));
  assert.equal(checkSignatures(fp, info.sigs, [key]), undefined);
  // Any change to what is signed breaks it.
  const tampered = pathFingerprint(info.storePath, info.narHash, info.narSize + 1, []);
  assert.equal(verifyFingerprint(tampered, info.sigs, [key]), false);
  assert.equal(verifyFingerprint(fp.replace("glibc-2.27", "glibc-2.28"), info.sigs, [key]), false);
});

test("keys from nix-store --generate-binary-cache-key parse, and our signatures equal Nix's", () => {
  const keys = nixKeyPair("nixoci-test-1");
  const secret = parseSecretKey(keys.secret, "sec");
  const pub = parsePublicKey(keys.public, "pub");
  assert.equal(secret.name, "nixoci-test-1");
  assert.equal(pub.name, "nixoci-test-1");
  assert.equal(secret.publicKey.toString(), keys.public.trim());
  assert.equal(pub.toString(), keys.public.trim());

  const top = buildPath();
  const cache = join(work, "cache-nix-signed");
  run("nix", [...NIX, "copy", "--to", `file://${cache}?secret-key=${keys.secretFile}&compression=none`, top]);
  const paths = run("nix-store", ["-qR", top]).split("\n");
  assert.equal(paths.length, 2);
  for (const path of paths) {
    const info = parseNarInfo(readFileSync(narinfoFile(cache, path), "utf8"), { input: path });
    assert.equal(info.sigs.length, 1);
    const fp = narInfoFingerprint(info);
    // Nix's own signature verifies with our code...
    assert.ok(verifyFingerprint(fp, info.sigs, [pub]), path);
    assert.ok(verifyFingerprint(fp, info.sigs, [secret.publicKey]), path);
    // ...and ours is byte-identical (Ed25519 is deterministic).
    assert.equal(signFingerprint(secret, fp), info.sigs[0]);
    // A key with the same name but other bytes does not verify it.
    const other = parsePublicKey(generateKeyPair("nixoci-test-1").publicKey);
    assert.equal(verifyFingerprint(fp, info.sigs, [other]), false);
  }
});

test("keys from generateKeyPair work with Nix: it signs identically and verifies what we sign", () => {
  const pair = generateKeyPair("ours-1");
  assert.match(pair.secretKey, /^ours-1:[A-Za-z0-9+/]{86}==$/);
  assert.match(pair.publicKey, /^ours-1:[A-Za-z0-9+/]{43}=$/);
  const secret = parseSecretKey(pair.secretKey);
  assert.equal(secret.publicKey.toString(), pair.publicKey);
  const secretFile = join(work, "ours.sec");
  writeFileSync(secretFile, pair.secretKey);

  const top = buildPath();
  // Nix signs with our secret key: same signature as ours.
  const nixSigned = join(work, "cache-ours-nix");
  run("nix", [...NIX, "copy", "--to", `file://${nixSigned}?secret-key=${secretFile}&compression=none`, top]);
  const info = parseNarInfo(readFileSync(narinfoFile(nixSigned, top), "utf8"), { input: "top" });
  assert.equal(info.sigs[0], signFingerprint(secret, narInfoFingerprint(info)));

  // A cache whose narinfos we (re)signed: Nix verifies them with our public key, and rejects another key.
  const weSigned = join(work, "cache-ours");
  run("nix", [...NIX, "copy", "--to", `file://${weSigned}?compression=none`, top]);
  for (const path of run("nix-store", ["-qR", top]).split("\n")) {
    const file = narinfoFile(weSigned, path);
    const unsigned = parseNarInfo(readFileSync(file, "utf8"), { input: file });
    assert.deepEqual(unsigned.sigs, []);
    const signed = { ...unsigned, sigs: [signFingerprint(secret, narInfoFingerprint(unsigned))] };
    writeFileSync(file, serializeNarInfo(signed));
  }
  const nixVerify = (trusted: string) =>
    spawnSync(
      "nix",
      [
        ...NIX,
        "store",
        "verify",
        "--no-contents",
        "-r",
        "--store",
        `file://${weSigned}`,
        "--option",
        "trusted-public-keys",
        trusted,
        top,
      ],
      { encoding: "utf8" },
    );
  const ok = nixVerify(pair.publicKey);
  assert.equal(ok.status, 0, ok.stderr);
  const bad = nixVerify(generateKeyPair("ours-1").publicKey);
  assert.notEqual(bad.status, 0, "nix must reject signatures by another key");
});

test("pathFingerprint sorts and de-duplicates references", () => {
  const h = Hash.of("sha256", "nar");
  const a = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
  const b = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";
  const p = "/nix/store/cccccccccccccccccccccccccccccccc-p";
  assert.equal(pathFingerprint(p, h, 42, [b, a, b]), `1;${p};${h.toString("nix32")};42;${a},${b}`);
  assert.equal(pathFingerprint(p, h, 42, []), `1;${p};${h.toString("nix32")};42;`);
});

test("checkSignatures says why nothing verifies", () => {
  const k1 = parseSecretKey(generateKeyPair("cache-1").secretKey);
  const k2 = parseSecretKey(generateKeyPair("cache-2").secretKey);
  const impostor = parseSecretKey(generateKeyPair("cache-1").secretKey);
  const fp = "1;/nix/store/cccccccccccccccccccccccccccccccc-p;sha256:x;1;";
  const good = signFingerprint(k1, fp);
  const trusted = [k1.publicKey];

  assert.equal(checkSignatures(fp, [good], trusted), undefined);
  assert.equal(checkSignatures(fp, ["garbage", signFingerprint(k2, fp), good], trusted), undefined);
  assert.equal(checkSignatures(fp, [good], [k2.publicKey, k1.publicKey]), undefined);

  assert.equal(checkSignatures(fp, [], trusted), "no signatures");
  assert.match(
    checkSignatures(fp, [signFingerprint(k2, fp)], trusted)!,
    /^no signature by a trusted key.*cache-2/,
  );
  assert.equal(
    checkSignatures(fp, [signFingerprint(impostor, fp)], trusted),
    "signature by cache-1 does not verify",
  );
  assert.equal(checkSignatures(fp + "x", [good], trusted), "signature by cache-1 does not verify");
  assert.match(checkSignatures(fp, ["cache-1:AAAA"], trusted)!, /malformed signature/);
  assert.equal(checkSignatures(fp, [good], []), 'no signature by a trusted key (signed by "cache-1")');
  for (const sigs of [[], ["garbage"], [signFingerprint(k2, fp)], [signFingerprint(impostor, fp)]]) {
    assert.equal(verifyFingerprint(fp, sigs, trusted), false);
  }
  assert.equal(verifyFingerprint(fp, [good], trusted), true);
});

test("parseSignature", () => {
  const sig = Buffer.alloc(64, 7);
  const parsed = parseSignature(`k-1:${sig.toString("base64")}`);
  assert.equal(parsed.keyName, "k-1");
  assert.deepEqual(parsed.sig, sig);
  const bad: [string, string][] = [
    ["empty", ""],
    ["no colon", sig.toString("base64")],
    ["empty name", `:${sig.toString("base64")}`],
    ["space in name", `k 1:${sig.toString("base64")}`],
    ["63 bytes", `k:${Buffer.alloc(63).toString("base64")}`],
    ["65 bytes", `k:${Buffer.alloc(65).toString("base64")}`],
    ["truncated base64", `k:${sig.toString("base64").slice(0, -3)}`],
    ["bad base64", `k:${sig.toString("base64").replace(/^./, "*")}`],
    ["trailing newline", `k:${sig.toString("base64")}\n`],
  ];
  for (const [what, s] of bad) {
    assert.throws(
      () => parseSignature(s, "test-input"),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      what,
    );
  }
});

test("parseSecretKey and parsePublicKey reject malformed keys with a NixociError naming the input", () => {
  const pair = generateKeyPair("k-1");
  const secretRaw = Buffer.from(pair.secretKey.slice(4), "base64");
  const publicRaw = Buffer.from(pair.publicKey.slice(4), "base64");
  // Surrounding whitespace (a trailing newline in a key file) is fine.
  assert.equal(parseSecretKey(`\n ${pair.secretKey}\n`).publicKey.toString(), pair.publicKey);
  assert.equal(parsePublicKey(`${pair.publicKey}\n`).toString(), pair.publicKey);

  const flipped = Buffer.from(secretRaw);
  flipped[40] ^= 1;
  const badSecrets: [string, string][] = [
    ["empty", ""],
    ["no name", secretRaw.toString("base64")],
    ["empty name", `:${secretRaw.toString("base64")}`],
    ["public key given", pair.publicKey],
    ["seed only", `k-1:${secretRaw.subarray(0, 32).toString("base64")}`],
    ["truncated", `k-1:${secretRaw.subarray(0, 63).toString("base64")}`],
    ["public half does not match", `k-1:${flipped.toString("base64")}`],
    ["bad base64", `k-1:${"?".repeat(88)}`],
  ];
  for (const [what, s] of badSecrets) {
    assert.throws(
      () => parseSecretKey(s, "test-input"),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      what,
    );
  }
  const badPublics: [string, string][] = [
    ["empty", ""],
    ["no name", publicRaw.toString("base64")],
    ["secret key given", pair.secretKey],
    ["truncated", `k-1:${publicRaw.subarray(0, 31).toString("base64")}`],
    ["bad base64", `k-1:${"?".repeat(44)}`],
    ["name with space", `k 1:${publicRaw.toString("base64")}`],
  ];
  for (const [what, s] of badPublics) {
    assert.throws(
      () => parsePublicKey(s, "test-input"),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      what,
    );
  }
  assert.throws(() => generateKeyPair(""), NixociError);
  assert.throws(() => generateKeyPair("a:b"), NixociError);
});
