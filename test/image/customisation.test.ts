// The customisation layer read from NAR listings (listingFiles: what the BuildKit frontend's plan step uses, the
// packages not being on its machine) against the same layer read from the files on disk (nixoci build's): the
// same entries, env and warnings for packages with collisions, directories shared by several packages, links to
// directories of other store paths (absolute and relative), dangling and looping links, /usr/bin/env and a CA
// bundle found in the closure.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { customisationLayer, listingFiles } from "../../src/image/customisation.js";
import {
  listNar,
  parseNarListing,
  serializeNarListing,
  type NarListingNode,
} from "../../src/nix/nar-listing.js";
import { dumpPath } from "../../src/nix/nar-writer.js";

const work = mkdtempSync(join(tmpdir(), "nixoci-custom-listing-"));
after(() => rmSync(work, { recursive: true, force: true }));

/** A store directory of packages: name -> { relative path: file text, or "-> target" for a link }. */
function makeStore(packages: Record<string, Record<string, string>>): { storeDir: string; paths: string[] } {
  const storeDir = join(work, "store");
  const paths: string[] = [];
  for (const [name, files] of Object.entries(packages)) {
    const root = join(storeDir, name);
    mkdirSync(root, { recursive: true });
    for (const [rel, content] of Object.entries(files)) {
      const p = join(root, rel);
      mkdirSync(dirname(p), { recursive: true });
      if (content.startsWith("-> ")) symlinkSync(content.slice(3).replaceAll("STORE", storeDir), p);
      else if (content === "/") mkdirSync(p, { recursive: true });
      else writeFileSync(p, content);
    }
    paths.push(root);
  }
  return { storeDir, paths };
}

test("from NAR listings, the same layer as from the files: links, collisions, shared directories, env, CA bundle", async () => {
  const hash = (n: number) => String(n).padStart(32, "a");
  const A = `${hash(1)}-alpha`;
  const B = `${hash(2)}-beta`;
  const C = `${hash(3)}-libc`;
  const D = `${hash(4)}-docs`;
  const { storeDir, paths } = makeStore({
    [A]: {
      "bin/a": "a",
      "bin/shared": "from alpha",
      "share/man/man1/a.1": "a",
      lib: `-> STORE/${C}/lib`, // absolute link to another path's directory
      broken: "-> /nowhere/at/all",
      "etc/alpha.conf": "x",
    },
    [B]: {
      "bin/b": "b",
      "bin/shared": "from beta", // shadowed by alpha's
      "share/man/man1/b.1": "b",
      lib: "-> libdir", // relative link to a directory of its own, merged with alpha's lib
      "libdir/libb.so": "b",
      loop: "-> loop",
      "etc/alpha.conf": "-> ../bin/b",
    },
    [C]: {
      "lib/libc.so": "c",
      "bin/env": "env",
      "etc/ssl/certs/ca-bundle.crt": "certs",
    },
    [D]: {
      "share/doc": "-> ../doc-files", // a relative link through a directory
      "doc-files/readme": "r",
      "share/man": `-> STORE/${A}/share/man`,
    },
  });
  chmodSync(join(storeDir, A, "bin/a"), 0o755);
  const listings = new Map<string, NarListingNode>();
  for (const p of paths) {
    // Through the JSON a cache serves, as the plan step reads it.
    const listing = await listNar(dumpPath(p), { input: p });
    listings.set(p, parseNarListing(serializeNarListing(listing), `${p}.ls`).root);
  }
  const src = (p: string) => ({ storePath: p, realPath: p });
  const [a, b, c, d] = paths;
  for (const packages of [[a, b, d], [d, b, a], [b], [c, a]]) {
    const input = { packages: packages.map(src), closure: paths.map(src), user: "app:app" };
    const fromDisk = customisationLayer(input);
    const fromListings = customisationLayer({ ...input, files: listingFiles(listings, storeDir) });
    assert.deepEqual(fromListings, fromDisk, `packages ${packages.map((p) => p.slice(-5)).join(" ")}`);
  }
  // The case is not trivial: links expanded into directories, a collision warned about, env and certs found.
  const layer = customisationLayer({
    packages: [a, b, d].map(src),
    closure: paths.map(src),
    files: listingFiles(listings, storeDir),
  });
  const entry = (path: string) => layer.entries.find((e) => e.path === path);
  assert.equal(entry("lib")?.type, "directory");
  assert.deepEqual(entry("lib/libb.so"), {
    path: "lib/libb.so",
    type: "symlink",
    target: `${b}/lib/libb.so`,
  });
  assert.deepEqual(entry("lib/libc.so"), {
    path: "lib/libc.so",
    type: "symlink",
    target: `${a}/lib/libc.so`,
  });
  assert.equal(entry("share/man")?.type, "directory");
  assert.deepEqual(entry("usr/bin/env"), { path: "usr/bin/env", type: "symlink", target: `${c}/bin/env` });
  assert.deepEqual(layer.env, [`SSL_CERT_FILE=${c}/etc/ssl/certs/ca-bundle.crt`]);
  assert.ok(layer.warnings.some((w) => w.includes(`${b}/bin/shared is shadowed`)));
});

test("a listing view answers nothing outside the listed paths", () => {
  const storeDir = "/nix/store";
  const p = `${storeDir}/${"b".repeat(32)}-x`;
  const files = listingFiles(
    new Map<string, NarListingNode>([
      [
        p,
        {
          type: "directory",
          entries: {
            up: { type: "symlink", target: "../../../etc" },
            self: { type: "symlink", target: "." },
            f: { type: "regular", size: 1, narOffset: 0 },
          },
        },
      ],
    ]),
    storeDir,
  );
  assert.deepEqual(files.readdir(p).sort(), ["f", "self", "up"]);
  assert.equal(files.isDirectory(`${p}/up`), false, "a link out of the store is dangling");
  assert.equal(files.exists(`${p}/up`), true, "the link itself is there");
  assert.equal(files.isDirectory(`${p}/self/self/self`), true);
  assert.equal(files.exists(`${p}/f/x`), false, "nothing below a file");
  assert.equal(files.exists(`${storeDir}/${"c".repeat(32)}-other`), false);
  assert.equal(files.exists("/etc/passwd"), false);
  assert.equal(files.isDirectory(storeDir), false);
});
