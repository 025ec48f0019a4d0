// Fuzzing the snapshotter's gRPC door with what a node's containerd relays from untrusted images: generated
// sequences of Snapshots calls (keys, parents and names near the real ones, image annotations copied into labels,
// filters) against the real `nixoci snapshotter` process. Every call must end in one of the codes containerd
// understands (never INTERNAL or UNKNOWN), the server must stay up, and nothing may appear outside its root.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";

import fc from "fast-check";
import { snapshotsClient } from "../../src/proto/containerd.js";
import { mountsUnder } from "../support/daemons.js";
import { makeTempDir } from "../support/fixtures.js";
import { FUZZ_MS, FUZZ_RUNS } from "../support/fuzz.js";
import {
  REF_LABEL,
  rpc,
  startSnapshotter,
  STORE_PATH_LABEL,
  stopSnapshotter,
  tail,
  type Client,
} from "../support/snapshotter.js";

const OK_CODES = new Set([undefined, 3, 5, 6, 9]); // OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION

const word = fc.oneof(
  fc.constantFrom(
    "a",
    "b",
    "k8s.io/1/extract-1 sha256:ab",
    "..",
    "../../etc",
    "/",
    "",
    "\u0000",
    "x/../../y",
  ),
  fc.string({ maxLength: 20 }),
);
const storePath = fc.oneof(
  fc.constantFrom(
    "/nix/store/" + "0".repeat(32) + "-missing",
    "/nix/store/../etc",
    "/etc/passwd",
    "/nix/store/" + "a".repeat(32) + "-x/../../..",
    "",
  ),
  fc.string({ maxLength: 60 }),
);
const labels = fc.oneof(
  fc.constant({}),
  fc.dictionary(
    fc.oneof(fc.constantFrom(REF_LABEL, "containerd.io/gc.root"), fc.string({ maxLength: 10 })),
    word,
    {
      maxKeys: 3,
    },
  ),
  fc
    .tuple(word, fc.array(storePath, { minLength: 1, maxLength: 3 }))
    .map(([ref, paths]) =>
      Object.fromEntries([[REF_LABEL, ref], ...paths.map((p, i) => [`${STORE_PATH_LABEL}${i}`, p])]),
    ),
);
const call = fc.oneof(
  fc.record({ method: fc.constant("Prepare"), req: fc.record({ key: word, parent: word, labels }) }),
  fc.record({ method: fc.constant("View"), req: fc.record({ key: word, parent: word, labels }) }),
  fc.record({ method: fc.constant("Commit"), req: fc.record({ name: word, key: word, labels }) }),
  fc.record({ method: fc.constantFrom("Mounts", "Remove", "Stat", "Usage"), req: fc.record({ key: word }) }),
  fc.record({
    method: fc.constant("Update"),
    req: fc.record({
      info: fc.record({ name: word, labels }),
      update_mask: fc.record({ paths: fc.array(fc.oneof(fc.constant("labels"), word), { maxLength: 2 }) }),
    }),
  }),
);

function list(client: Client, filters: string[]): Promise<number | undefined> {
  const fn = client.List as (req: object, opts: object) => NodeJS.EventEmitter;
  return new Promise((resolve) => {
    const s = fn.call(client, { filters }, { deadline: Date.now() + 30_000 });
    s.on("data", () => undefined);
    s.on("error", (e: { code?: number }) => resolve(e.code));
    s.on("end", () => resolve(undefined));
  });
}

test("fuzz: generated Snapshots calls get containerd's codes, the snapshotter stays up, nothing escapes its root", async () => {
  const dir = makeTempDir("fuzz-snapshotter");
  const sn = await startSnapshotter(dir, ["--store", "/nix/store", "--substituter", "file:///nonexistent"]);
  const client = snapshotsClient(sn.socket);
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(call, { minLength: 1, maxLength: 6 }),
        fc.array(word, { maxLength: 2 }),
        async (calls, filters) => {
          for (const c of calls) {
            const r = await rpc(client, c.method, c.req);
            assert.ok(
              OK_CODES.has(r.err),
              `${c.method} ${JSON.stringify(c.req)}: code ${r.err} ${r.details ?? ""}`,
            );
          }
          const code = await list(client, filters);
          assert.ok(OK_CODES.has(code), `List ${JSON.stringify(filters)}: code ${code}`);
        },
      ),
      { numRuns: Math.ceil(FUZZ_RUNS / 3), interruptAfterTimeLimit: FUZZ_MS },
    );
    assert.equal((await rpc(client, "Stat", { key: "\u0000probe" })).err, 5, tail(sn.logFile));
    assert.deepEqual(readdirSync(dir).sort(), ["root", "sn.sock", "snapshotter.log"]);
  } finally {
    client.close();
    await stopSnapshotter(sn);
  }
  assert.deepEqual(mountsUnder(dir), [], "mounts left after the snapshotter stopped");
});
