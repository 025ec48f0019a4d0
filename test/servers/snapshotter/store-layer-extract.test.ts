// The snapshotter's extraction of a store layer it fetched (store-layer-extract.ts): a tree GNU tar makes of a store
// path with awkward members (absolute and relative symlinks, hard links, names that are not UTF-8) comes out as
// `nix-store --dump` has it; crafted layers with members a store layer may not have are refused, nothing written
// outside the directory.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { encodeTarHeader, TAR_FORMAT_LAYER, tarPadding } from "../../../src/image/tar-header.js";
import { readTarMembers } from "../../../src/image/tar-reader.js";
import { extractStoreLayer } from "../../../src/servers/snapshotter/store-layer-extract.js";
import { bytes } from "../../support/fixtures.js";

const work = mkdtempSync(join(tmpdir(), "nixoci-store-extract-"));
after(() => {
  execFileSync("chmod", ["-R", "u+w", work]);
  rmSync(work, { recursive: true, force: true });
});

const P = "nix/store/00000000000000000000000000000000-awkward";
const dump = (p: string): Buffer => execFileSync("nix-store", ["--dump", p], { maxBuffer: 1 << 28 });

async function extract(tar: Buffer, name: string): Promise<{ dir: string; refused?: string }> {
  const dir = mkdtempSync(join(work, `${name}-`));
  const refused = await extractStoreLayer(readTarMembers(Readable.from([tar]), name), dir, "/nix/store");
  return { dir, refused };
}

test("a store path's tree as GNU tar writes it: symlinks absolute and relative, hard links, names not UTF-8", async () => {
  const src = join(work, "src");
  const root = join(src, P);
  mkdirSync(join(root, "bin"), { recursive: true });
  writeFileSync(join(root, "bin/run"), "#!/bin/sh\necho hi\n", { mode: 0o555 });
  writeFileSync(bytes(root, "/caf", [0xe9]), "latin-1\n", { mode: 0o444 });
  linkSync(join(root, "bin/run"), join(root, "bin/run-again"));
  symlinkSync("/nix/store/11111111111111111111111111111111-elsewhere/bin/sh", join(root, "bin/sh"));
  symlinkSync(bytes("../caf", [0xe9]), bytes(root, "/bin/rel-", [0xff]));
  execFileSync("chmod", ["0555", join(root, "bin"), root]);
  const tar = execFileSync("tar", ["--sort=name", "--owner=0", "--group=0", "-cf", "-", "-C", src, "nix"], {
    maxBuffer: 1 << 28,
  });
  const { dir, refused } = await extract(tar, "gnu");
  assert.equal(refused, undefined);
  assert.ok(dump(join(dir, P)).equals(dump(root)), "the same NAR as the source tree");
  assert.equal(
    readlinkSync(join(dir, P, "bin/sh")),
    "/nix/store/11111111111111111111111111111111-elsewhere/bin/sh",
  );
  assert.deepEqual(
    readlinkSync(bytes(dir, "/", P, "/bin/rel-", [0xff]), { encoding: "buffer" }),
    bytes("../caf", [0xe9]),
  );
  assert.equal(lstatSync(join(dir, P, "bin/run-again")).ino, lstatSync(join(dir, P, "bin/run")).ino);
  assert.equal(lstatSync(join(dir, P, "bin")).mode & 0o7777, 0o555, "directories get their modes last");
});

/** A tar of crafted members (name, type flag, link target, data). */
function craft(
  ...members: { name: string | Buffer; type?: number; linkname?: string; data?: string }[]
): Buffer {
  const parts: Buffer[] = [];
  for (const m of members) {
    const data = Buffer.from(m.data ?? "");
    const type = m.type ?? 0x30;
    parts.push(
      encodeTarHeader(
        {
          name: Buffer.from(m.name),
          type,
          mode: type === 0x35 ? 0o755 : 0o644,
          size: type === 0x30 ? data.length : 0,
          linkname: m.linkname === undefined ? undefined : Buffer.from(m.linkname),
        },
        TAR_FORMAT_LAYER,
      ),
    );
    if (type === 0x30) parts.push(data, Buffer.alloc(tarPadding(data.length)));
  }
  return Buffer.concat([...parts, Buffer.alloc(1024)]);
}

test("refused: members outside store paths, whiteouts, devices, links out of the tree, writes through symlinks", async () => {
  const dirs = (...names: string[]) => names.map((name) => ({ name: `${name}/`, type: 0x35 }));
  const base = dirs("nix", "nix/store", P);
  const cases: [Buffer, RegExp][] = [
    [craft(...dirs("etc"), { name: "etc/passwd" }), /"etc\/" is outside \/nix\/store/],
    [craft(...base.slice(0, 2), { name: "nix/store/not-a-store-path/x" }), /is not in a store path/],
    [craft(...base, { name: `${P}/.wh.gone` }), /a whiteout/],
    [craft(...base, { name: `${P}/../../../etc/x` }), /a whiteout, "\." or "\.\."/],
    [craft(...base, { name: `${P}/dev`, type: 0x33 }), /is a character device/],
    [craft(...base, { name: `${P}/fifo`, type: 0x36 }), /is a FIFO/],
    [
      craft(...base, { name: `${P}/h`, type: 0x31, linkname: "/etc/shadow" }),
      /a hard link to "\/etc\/shadow"/,
    ],
    [
      craft(...base, { name: `${P}/h`, type: 0x31, linkname: `${P}/later` }),
      /not a file of the layer before it/,
    ],
    [
      craft(
        ...base,
        { name: `${P}/out`, type: 0x32, linkname: "/tmp" },
        { name: `${P}/out/escaped`, data: "x" },
      ),
      /is under "nix\/store\/0+-awkward\/out", which is not a directory/,
    ],
    [craft(...base, { name: `${P}/f`, data: "a" }, { name: `${P}/f`, data: "b" }), /appears twice/],
    [craft({ name: "nix", data: "not a directory" }), /"nix" is not a directory/],
  ];
  for (const [tar, why] of cases) {
    const { dir, refused } = await extract(tar, "bad");
    assert.match(refused ?? "(accepted)", why);
    assert.deepEqual(
      readdirSync(dir).filter((n) => n !== "nix"),
      [],
      "nothing beside the store directory",
    );
  }
  assert.equal(existsSync("/tmp/escaped"), false);
});
