// Streams that fail before anyone reads them (issue 11, F1), at each place that hands a stream across an
// await: the error must reach the reader (a rejection naming the input), never the process (an unhandled
// 'error' event, which node:test reports as a failure of the running test). Each case waits until the stream
// has failed before reading it, so without the fix it fails every time.
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { PassThrough, type Readable } from "node:stream";
import { ContainerdClient } from "../../src/outputs/containerd-client.js";
import { buildLayerBlob } from "../../src/image/layer-builder.js";
import { treeTar } from "../../src/image/layer-tar.js";
import { parsePublicKey } from "../../src/nix/signature.js";
import { BlobStore } from "../../src/oci/blob-store.js";
import { BinaryCacheStore } from "../../src/store/binary-cache.js";
import { LocalStore } from "../../src/store/local-store.js";
import { COMPRESSIONS } from "../../src/util/compression.js";
import { NixociError } from "../../src/util/errors.js";
import { buildFixtures, generateCacheKey, makeNixCache, makeTempDir } from "../support/fixtures.js";

const fx = buildFixtures();
const work = makeTempDir("early-stream-errors");
const key = generateCacheKey("early-errors-1", work);
const target = fx.greeting;
const hashPart = basename(target).slice(0, 32);

/** Resolves once `s` has closed, without listening for its 'error' (that would hide the defect). */
const closed = (s: Readable): Promise<void> => new Promise((ok) => s.once("close", () => ok()));

/** Entries of a directory other than nixoci's metadata directory (an absent directory has none). */
const leftovers = (dir: string): string[] =>
  existsSync(dir) ? readdirSync(dir).filter((n) => n !== ".nixoci") : [];

for (const compression of COMPRESSIONS) {
  const pristine = join(work, `pristine-${compression}`);
  makeNixCache({ paths: [target], dir: pristine, compression, secretKeyFile: key.secretKeyFile });
  for (const [kind, bytes] of [
    ["empty", Buffer.alloc(0)],
    ["garbage", Buffer.from("not a NAR, not compressed\n".repeat(30))],
  ] as const) {
    test(`narFromPath, ${compression} NAR is ${kind}: it fails unread; addPath reports it, nothing is left`, async () => {
      const dir = join(work, `${compression}-${kind}`);
      cpSync(pristine, dir, { recursive: true });
      const narUrl = /^URL: (.*)$/m.exec(readFileSync(join(dir, `${hashPart}.narinfo`), "utf8"))![1];
      writeFileSync(join(dir, narUrl), bytes);
      const cache = await BinaryCacheStore.open(`file://${dir}`, {
        trustedKeys: [parsePublicKey(key.publicKey)],
      });
      const info = (await cache.queryPathInfo(target))!;
      const nar = await cache.narFromPath(info);
      await closed(nar);
      assert.ok(nar.errored, "the NAR stream failed before it was read");
      const storeDir = join(work, `store-${compression}-${kind}`, "nix", "store");
      const store = new LocalStore({ dir: storeDir });
      try {
        await assert.rejects(store.addPath(info, nar), (err: Error) => {
          assert.ok(err instanceof NixociError, String(err));
          assert.ok(err.message.startsWith(`file://${dir}/${narUrl}: `), err.message);
          return true;
        });
      } finally {
        store.close();
      }
      assert.deepEqual(leftovers(storeDir), []);
    });
  }
}

test("addPath: a NAR stream that fails while the store directory is being made is reported", async () => {
  const storeDir = join(work, "store-early", "nix", "store");
  const store = new LocalStore({ dir: storeDir });
  const info = (await new LocalStore().queryPathInfo(target))!;
  const nar = new PassThrough();
  const added = store.addPath(info, nar);
  nar.destroy(new NixociError("the NAR", "failed early"));
  try {
    await assert.rejects(added, /^NixociError: the NAR: failed early$/m);
  } finally {
    store.close();
  }
  assert.deepEqual(leftovers(storeDir), []);
});

test("putStream: a source that fails while the blob writer is being made is reported", async () => {
  const root = join(work, "blobs-early");
  const source = new PassThrough();
  const put = new BlobStore(root).putStream(source);
  source.destroy(new NixociError("the source", "failed early"));
  await assert.rejects(put, /the source: failed early/);
  assert.deepEqual(leftovers(join(root, "blobs", "sha256")), []);
});

test("buildLayerBlob: a compressor that cannot start is reported, not thrown at the process", async () => {
  const path = process.env.PATH;
  process.env.PATH = makeTempDir("no-tools"); // no zstd to spawn
  try {
    const blobs = new BlobStore(join(work, "layer-blobs"));
    await assert.rejects(
      buildLayerBlob(treeTar([]), { compression: "zstd", blobs }),
      /cannot run zstd \(is Debian's zstd package installed\?\)/,
    );
  } finally {
    process.env.PATH = path;
  }
});

test("containerd writeContent: a blob stream that fails during the first call is reported", async () => {
  const client = new ContainerdClient(join(work, "no-containerd.sock"), "nixoci-test", 2_000);
  try {
    const blob = new PassThrough();
    const written = client.writeContent(`sha256:${"0".repeat(64)}`, 1, blob);
    blob.destroy(new Error("blob failed early"));
    await closed(blob);
    // Containerd is not there: the call fails; the stream's early error must not have crashed the process.
    await assert.rejects(written);
  } finally {
    client.close();
  }
});
