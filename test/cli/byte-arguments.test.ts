// Arguments that are not UTF-8: Nix allows any bytes in file names, and a user's shell passes them as they are, but
// Node decodes argv as UTF-8 (each stray byte U+FFFD). The CLI takes such arguments' bytes from /proc/self/cmdline,
// so `nar dump`, `nar restore`, `nar ls` and a `result` symlink with such a name work on the file named.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { commandLineArguments } from "../../src/cli/command-line.js";
import { buildFixtures, bytes } from "../support/fixtures.js";
import { ROOT } from "../support/cli.js";
import { runText } from "../support/run.js";

const fx = buildFixtures();
const work = mkdtempSync(join(tmpdir(), "nixoci-byte-args-"));
process.on("exit", () => rmSync(work, { recursive: true, force: true }));

/** A word for bash that printf turns back into exactly `b` (every byte octal-escaped: no quoting to get wrong). */
function shellWord(b: Buffer): string {
  return `"$(printf '${[...b].map((x) => `\\${x.toString(8).padStart(3, "0")}`).join("")}')"`;
}

/** A command run by bash in the work directory with arguments as bytes, as a shell passes a name typed or globbed. */
function runWithBytes(command: string[], args: Buffer[], input?: Buffer) {
  const script = `cd "$1" && shift && exec "$@" ${args.map(shellWord).join(" ")}`;
  const r = spawnSync("bash", ["-c", script, "bash", work, ...command], { input, maxBuffer: 1 << 30 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

const nixociCommand = [process.execPath, join(ROOT, "bin/nixoci.js")];
const words = (...parts: (string | Buffer)[]) =>
  parts.map((p) => (typeof p === "string" ? Buffer.from(p) : p));

const cafe = bytes("caf", [0xe9]); // "café" in Latin-1
const cafePath = Buffer.concat([Buffer.from(`${work}/`), cafe]);
mkdirSync(cafePath);
writeFileSync(Buffer.concat([cafePath, bytes("/f", [0xff])]), "hello\n");
symlinkSync(bytes("x", [0xe9]), Buffer.concat([cafePath, Buffer.from("/l")]));

function nixStoreDump(): Buffer {
  const r = runWithBytes(["nix-store", "--dump"], [cafe]);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

test("nar dump, restore and ls of files whose names are not UTF-8 act on those files", () => {
  const theirs = nixStoreDump();
  const dump = runWithBytes(nixociCommand, words("nar", "dump", cafe));
  assert.equal(dump.status, 0, dump.stderr);
  assert.ok(dump.stdout.equals(theirs), "nixoci nar dump differs from nix-store --dump");

  const dest = bytes("out", [0xe9]);
  const restore = runWithBytes(nixociCommand, words("nar", "restore", dest), theirs);
  assert.equal(restore.status, 0, restore.stderr);
  assert.ok(existsSync(Buffer.concat([Buffer.from(`${work}/`), dest])), "restored under the name's bytes");
  const again = runWithBytes(["nix-store", "--dump"], [dest]);
  assert.ok(again.stdout.equals(theirs), "the restored tree dumps as the original");
  const names = readdirSync(work, { encoding: "buffer" }).map((n) => n.toString("hex"));
  assert.ok(!names.includes(Buffer.from("out\ufffd").toString("hex")), "nothing made under a U+FFFD name");

  const narFile = bytes("t", [0xe9], ".nar");
  writeFileSync(Buffer.concat([Buffer.from(`${work}/`), narFile]), theirs);
  const ls = runWithBytes(nixociCommand, words("nar", "ls", narFile));
  assert.equal(ls.status, 0, ls.stderr);
  assert.equal((JSON.parse(ls.stdout.toString()) as { root: { type: string } }).root.type, "directory");

  const missing = runWithBytes(nixociCommand, words("nar", "dump", bytes("nope", [0xe9])));
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /^nixoci: nope.*: cannot lstat \(no such file or directory\)\n$/);
});

test("a result symlink whose name is not UTF-8 resolves to its store path", () => {
  const link = bytes("result-", [0xe9]);
  symlinkSync(fx.hello, Buffer.concat([Buffer.from(`${work}/`), link]));
  const r = runWithBytes(nixociCommand, words("closure", link));
  assert.equal(r.status, 0, r.stderr);
  assert.equal(
    r.stdout.toString(),
    runText("nix-store", ["-qR", fx.hello]).split("\n").sort().join("\n") + "\n",
  );
});

test("commandLineArguments keeps Node's arguments unless the command line holds the same ones", () => {
  const cmdline = join(work, "cmdline");
  writeFileSync(cmdline, Buffer.concat([Buffer.from("node\0script\0nar\0dump\0"), cafe, Buffer.from("\0")]));
  assert.deepEqual(commandLineArguments(["nar", "dump", "caf\ufffd"], cmdline), ["nar", "dump", "caf\udce9"]);
  // plain text: the file is not even read
  assert.deepEqual(commandLineArguments(["nar", "dump", "x"], join(work, "none")), ["nar", "dump", "x"]);
  // another command line (a rewritten process title): Node's arguments stand
  assert.deepEqual(commandLineArguments(["nar", "ls", "caf\ufffd"], cmdline), ["nar", "ls", "caf\ufffd"]);
  assert.deepEqual(commandLineArguments(["caf\ufffd"], join(work, "none")), ["caf\ufffd"]);
});
