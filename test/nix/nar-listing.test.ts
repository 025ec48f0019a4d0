// NAR listings against the ".ls" files Nix writes (nix copy --to 'file://...?write-nar-listing=true').
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  listNar,
  narListingBytes,
  parseNarListing,
  serializeNarListing,
  type NarListing,
} from "../../src/nix/nar-listing.js";
import { NixociError } from "../../src/util/errors.js";
import {
  buildStoreFile,
  buildStorePath,
  chunked,
  dir,
  file,
  MAGIC,
  makeTree,
  nar,
  nixDump,
  nixListing,
  symlink,
} from "./nar-fixtures.js";

let work: string;
before(() => {
  work = fs.mkdtempSync(join(tmpdir(), "nixoci-listing-test-"));
});
after(() => {
  execFileSync("chmod", ["-R", "u+w", work]);
  fs.rmSync(work, { recursive: true, force: true });
});

test("a path whose names and targets are not UTF-8: the listing's bytes equal Nix's .ls", async () => {
  const src = join(work, "not-utf8");
  makeTree(src, { nonUtf8: true });
  const storePath = execFileSync("nix-store", ["--add", src]).toString().trim();
  const cache = fs.mkdtempSync(join(work, "cache-"));
  nixListing(storePath, cache);
  const expected = fs.readFileSync(join(cache, `${storePath.split("/").pop()!.slice(0, 32)}.ls`));
  const listing = await listNar(chunked(nixDump(storePath), 1000), { input: storePath });
  assert.ok(narListingBytes(listing).equals(expected), narListingBytes(listing).toString("latin1"));
});

test("listing of a store path equals Nix's .ls, byte for byte", async () => {
  for (const storePath of [buildStorePath(work), buildStoreFile(work)]) {
    const cache = fs.mkdtempSync(join(work, "cache-"));
    const expected = nixListing(storePath, cache);
    const listing = await listNar(chunked(nixDump(storePath), 100), { input: storePath });
    assert.equal(serializeNarListing(listing), expected);
    assert.deepEqual(JSON.parse(serializeNarListing(listing)), JSON.parse(expected));
    assert.deepEqual(listing, JSON.parse(expected));
  }
});

test("listing nodes and offsets", async () => {
  const bytes = nar(
    MAGIC,
    dir(["bin", dir(["sh", file("#!/bin/sh\n", true)])], ["l", symlink("bin/sh")], ["z", file("")]),
  );
  const listing = await listNar([bytes], { input: "x" });
  const expected: NarListing = {
    version: 1,
    root: {
      type: "directory",
      entries: {
        bin: {
          type: "directory",
          entries: {
            sh: { type: "regular", size: 10, executable: true, narOffset: bytes.indexOf("#!/bin/sh") },
          },
        },
        l: { type: "symlink", target: "bin/sh" },
        // Empty contents: the offset is right after the size, before the three closing ")" (file, entry, root).
        z: { type: "regular", size: 0, narOffset: bytes.length - 3 * 16 },
      },
    },
  };
  assert.deepEqual(listing, expected);
});

test("serialization keeps NAR (bytewise) order for integer-like names and handles __proto__", async () => {
  const bytes = nar(
    MAGIC,
    dir(
      ["10", file("a")],
      ["9", file("b")],
      ["B", file("")],
      ["__proto__", dir()],
      ["a", file("")],
      ["Ä", file("")],
    ),
  );
  const listing = await listNar([bytes], { input: "x" });
  const json = serializeNarListing(listing);
  const names = [...json.matchAll(/"([^"]+)":\{"type"/g)].map((m) => m[1]);
  assert.deepEqual(names, ["root", "10", "9", "B", "__proto__", "a", "Ä"]);
  const parsed = JSON.parse(json);
  assert.deepEqual(Object.keys(parsed.root.entries).sort(), ["10", "9", "B", "__proto__", "a", "Ä"].sort());
  assert.equal(parsed.root.entries["__proto__"].type, "directory");
  assert.equal(Object.getPrototypeOf(listing.root), Object.prototype);
  const root = listing.root as { entries: Record<string, unknown> };
  assert.ok(Object.prototype.hasOwnProperty.call(root.entries, "__proto__"));
  assert.equal(Object.getPrototypeOf(root.entries), Object.prototype);
});

test("listNar rejects malformed NARs like parseNar", async () => {
  await assert.rejects(
    listNar([nar(MAGIC, dir(["b", file("")], ["a", file("")]))], { input: "bad.nar" }),
    (e: unknown) => e instanceof NixociError && /^bad\.nar: NAR at byte \d+: .*not sorted/.test(e.message),
  );
});

test("parseNarListing reads Nix's own .ls files back to the listing nixoci makes", async () => {
  for (const storePath of [buildStorePath(work), buildStoreFile(work)]) {
    const cache = fs.mkdtempSync(join(work, "cache-"));
    const text = nixListing(storePath, cache);
    const listing = await listNar(chunked(nixDump(storePath), 100), { input: storePath });
    assert.deepEqual(parseNarListing(text, "x.ls"), listing);
  }
  // An entry named __proto__ is an entry, not a prototype.
  const tricky = parseNarListing(
    '{"version":1,"root":{"type":"directory","entries":{"__proto__":{"type":"regular","size":1}}}}',
    "t.ls",
  );
  assert.ok(tricky.root.type === "directory" && Object.keys(tricky.root.entries).includes("__proto__"));
});

test("parseNarListing refuses malformed listings in one line naming the file and the place", () => {
  const dirOf = (entries: string) => `{"version":1,"root":{"type":"directory","entries":${entries}}}`;
  const deep = `{"version":1,"root":${'{"type":"directory","entries":{"d":'.repeat(600)}{"type":"regular","size":0}${"}}".repeat(600)}}`;
  const corpus: Array<[string, RegExp]> = [
    ["not json", /^c\.ls: not a NAR listing: invalid JSON/],
    ["[]", /expected a JSON object$/],
    ['{"version":2,"root":{"type":"regular","size":1}}', /version 2 \(expected 1\)$/],
    ['{"version":1}', /\/: expected an object$/],
    ['{"version":1,"root":{"type":"fifo"}}', /\/: unknown type "fifo"$/],
    ['{"version":1,"root":{"type":"regular","size":-1}}', /\/: size must be a whole number >= 0$/],
    ['{"version":1,"root":{"type":"regular","size":"3"}}', /size must be a whole number/],
    ['{"version":1,"root":{"type":"regular","size":1,"narOffset":1.5}}', /narOffset must be a whole number/],
    [
      '{"version":1,"root":{"type":"regular","size":1,"executable":"yes"}}',
      /executable must be true or false$/,
    ],
    ['{"version":1,"root":{"type":"symlink","target":""}}', /a symlink needs a non-empty target/],
    ['{"version":1,"root":{"type":"symlink","target":"a\\u0000b"}}', /without NUL$/],
    ['{"version":1,"root":{"type":"directory"}}', /a directory needs an entries object$/],
    [dirOf('{"..":{"type":"regular","size":0}}'), /\/: bad entry name "\.\."$/],
    [dirOf('{".":{"type":"regular","size":0}}'), /bad entry name "\."$/],
    [dirOf('{"":{"type":"regular","size":0}}'), /bad entry name ""$/],
    [dirOf('{"a/b":{"type":"regular","size":0}}'), /bad entry name "a\/b"$/],
    [dirOf('{"a\\u0000":{"type":"regular","size":0}}'), /bad entry name/],
    [dirOf('{"bin":{"type":"directory","entries":{"x":{"type":"nope"}}}}'), /\/bin\/x: unknown type "nope"$/],
    [deep, /nested deeper than 512 at \/d\/d/],
  ];
  for (const [text, want] of corpus)
    assert.throws(
      () => parseNarListing(text, "c.ls"),
      (err: unknown) => err instanceof NixociError && want.test(err.message) && !err.message.includes("\n"),
      `${text.slice(0, 80)} -> ${want}`,
    );
});
