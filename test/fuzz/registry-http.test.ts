// Fuzzing the registry's HTTP door: generated requests (method, a path near the routes, headers near the ones
// clients send, a small body) against the real server in this process. No request may get a 5xx or take the
// server down, and nothing may be written outside its storage directory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { RegistryStorage } from "../../src/servers/registry/storage.js";
import { makeTempDir } from "../support/fixtures.js";
import { FUZZ_MS, FUZZ_RUNS, mutated } from "../support/fuzz.js";
import { request, startServer } from "../support/registry-server.js";

const DIGEST = "sha256:" + "0".repeat(64);
const PATHS = [
  "/v2/",
  "/v2/_catalog?n=2&last=a",
  "/v2/fuzz/app/manifests/latest",
  `/v2/fuzz/app/manifests/${DIGEST}`,
  `/v2/fuzz/app/blobs/${DIGEST}`,
  "/v2/fuzz/app/blobs/uploads/",
  `/v2/fuzz/app/blobs/uploads/?mount=${DIGEST}&from=other/repo`,
  `/v2/fuzz/app/blobs/uploads/?digest=${DIGEST}`,
  "/v2/fuzz/app/tags/list?n=1&last=b",
  `/v2/fuzz/app/referrers/${DIGEST}?artifactType=a/b`,
  "/v2/../../etc/passwd",
  "/v2/fuzz/%2e%2e/manifests/x",
].map((s) => Buffer.from(s));

const headerValue = fc.oneof(
  fc.constantFrom(
    "bytes=0-10",
    "bytes=-5",
    "bytes=100-",
    "0-99",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "*/*",
    "Basic Zm9vOmJhcg==",
    "Bearer x",
    "",
  ),
  fc.string({ maxLength: 40 }).filter((s) => /^[\x20-\x7e]*$/.test(s)),
);

const requests = fc.record({
  method: fc.constantFrom("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"),
  path: mutated(PATHS).map((b) => Buffer.from(b).toString("latin1")),
  headers: fc.dictionary(
    fc.constantFrom("Range", "Content-Type", "Accept", "Content-Range", "Authorization", "If-None-Match"),
    headerValue,
    { maxKeys: 3 },
  ),
  body: fc.option(fc.uint8Array({ maxLength: 256 }), { nil: undefined }),
});

test("fuzz: generated requests get no 5xx, the server stays up, nothing is written outside its storage", async () => {
  const parent = makeTempDir("fuzz-http");
  const server = await startServer({ storage: new RegistryStorage(join(parent, "storage")) });
  try {
    await fc.assert(
      fc.asyncProperty(requests, async (r) => {
        // Paths the HTTP client itself refuses (control characters, spaces) are not requests a server can get.
        if (!/^[\x21-\x7e]*$/.test(r.path) || !r.path.startsWith("/")) return;
        const res = await request(server.host, r.method, r.path, {
          headers: r.headers,
          body: r.body && Buffer.from(r.body),
        });
        assert.ok(
          res.status < 500,
          `${r.method} ${r.path} ${JSON.stringify(r.headers)}: ${res.status} ${res.body}`,
        );
      }),
      { numRuns: FUZZ_RUNS, interruptAfterTimeLimit: FUZZ_MS },
    );
    assert.equal((await request(server.host, "GET", "/v2/")).status, 200);
    // The storage directory itself appears only once a request wrote something.
    assert.deepEqual(
      readdirSync(parent).filter((n) => n !== "storage"),
      [],
      "entries beside the storage directory",
    );
  } finally {
    await server.stop();
  }
});
