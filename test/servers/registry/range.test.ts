// Byte ranges read the same way (RFC 9110) on the registry's blob GETs and the binary cache's uncompressed NARs,
// both served by one server as `nixoci serve` does: one satisfiable range gets 206, a range set with no
// satisfiable range 416 with "Content-Range: bytes */SIZE", anything the server does not take (invalid, other
// units, several ranges, HEAD, a stale If-Range) the whole representation with 200.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { parseNarInfo } from "../../../src/nix/narinfo.js";
import { sha256Digest } from "../../../src/oci/digest.js";
import {
  binaryCacheRoutes,
  type BinaryCacheHandler,
} from "../../../src/servers/registry/binary-cache-endpoint.js";
import { parseRange } from "../../../src/servers/registry/http-range.js";
import { LocalStore } from "../../../src/store/local-store.js";
import { buildFixtures } from "../../support/fixtures.js";
import { request, startServer, type TestServer } from "../../support/registry-server.js";
import { run } from "../../support/run.js";

const store = new LocalStore();
let routes: BinaryCacheHandler;
let srv: TestServer;
/** The two endpoints: a path, the representation's bytes, and its strong ETag if it has one. */
const endpoints: { name: string; path: string; bytes: Buffer; etag?: string }[] = [];

before(async () => {
  routes = binaryCacheRoutes({ store, compression: "none" });
  srv = await startServer({ routes: [routes] });
  const blob = randomBytes(1000);
  const digest = sha256Digest(blob);
  const up = await request(srv.host, "POST", `/v2/ranges/blob/blobs/uploads/?digest=${digest}`, {
    body: blob,
  });
  assert.equal(up.status, 201);
  endpoints.push({
    name: "registry blob",
    path: `/v2/ranges/blob/blobs/${digest}`,
    bytes: blob,
    etag: `"${digest}"`,
  });

  const path = buildFixtures().greeting;
  const hashPart = path.slice("/nix/store/".length, "/nix/store/".length + 32);
  const ni = await request(srv.host, "GET", `/${hashPart}.narinfo`);
  assert.equal(ni.status, 200);
  const info = parseNarInfo(ni.body.toString(), { input: "test", expectedHashPart: hashPart });
  endpoints.push({
    name: "binary cache NAR",
    path: `/${info.url}`,
    bytes: run("nix-store", ["--dump", path]),
  });
});
after(async () => {
  await srv?.stop();
  routes?.close();
  store.close();
});

test("one satisfiable range: 206 with that part (units compared case-insensitively)", async () => {
  for (const e of endpoints) {
    const size = e.bytes.length;
    const cases: [string, number, number][] = [
      ["bytes=0-9", 0, 9],
      ["Bytes=0-9", 0, 9],
      ["BYTES=10-", 10, size - 1],
      ["bytes=-5", size - 5, size - 1],
      [`bytes=5-${"9".repeat(20)}`, 5, size - 1],
      // The only satisfiable range of a set.
      [`bytes=${size}-,0-3`, 0, 3],
    ];
    for (const [range, a, b] of cases) {
      const res = await request(srv.host, "GET", e.path, { headers: { Range: range } });
      assert.equal(res.status, 206, `${e.name}: ${range}`);
      assert.equal(res.headers["content-range"], `bytes ${a}-${b}/${size}`, `${e.name}: ${range}`);
      assert.deepEqual(res.body, e.bytes.subarray(a, b + 1), `${e.name}: ${range}`);
    }
  }
});

test("no satisfiable range: 416 with Content-Range bytes */SIZE on both endpoints", async () => {
  for (const e of endpoints) {
    const size = e.bytes.length;
    for (const range of [
      `bytes=${size}-`,
      `bytes=${size + 10}-${size + 20}`,
      "bytes=-0",
      // Beyond 2^53 is beyond the end all the same.
      `bytes=${"9".repeat(20)}-`,
      // A range set none of whose ranges is satisfiable.
      `bytes=${size}-,${size + 10}-${size + 20}`,
    ]) {
      const res = await request(srv.host, "GET", e.path, { headers: { Range: range } });
      assert.equal(res.status, 416, `${e.name}: ${range}: ${res.status}`);
      assert.equal(res.headers["content-range"], `bytes */${size}`, `${e.name}: ${range}`);
    }
  }
});

test("ranges the server does not take: the whole representation with 200, on both endpoints", async () => {
  for (const e of endpoints) {
    const cases: [string, Record<string, string>][] = [
      ["GET", { Range: "bytes=9-1" }], // invalid: last before first
      ["GET", { Range: "bytes=abc" }],
      ["GET", { Range: "bytes=" }],
      ["GET", { Range: "bytes 0-9" }],
      ["GET", { Range: "items=0-9" }],
      ["GET", { Range: "bytes=0-1,5-6" }], // several parts: no multipart responses
      ["GET", { Range: "bytes=0-1,9-1" }], // one invalid range spoils the set
      ["HEAD", { Range: "bytes=0-9" }], // ranges are defined for GET only
      ["GET", { Range: "bytes=0-9", "If-Range": '"not-this-one"' }],
      ["GET", { Range: "bytes=0-9", "If-Range": "Wed, 21 Oct 2015 07:28:00 GMT" }],
    ];
    for (const [method, headers] of cases) {
      const what = `${e.name}: ${method} ${JSON.stringify(headers)}`;
      const res = await request(srv.host, method, e.path, { headers });
      assert.equal(res.status, 200, what);
      assert.equal(res.headers["content-range"], undefined, what);
      assert.equal(res.headers["content-length"], String(e.bytes.length), what);
      if (method === "GET") assert.deepEqual(res.body, e.bytes, what);
    }
    if (e.etag) {
      const res = await request(srv.host, "GET", e.path, {
        headers: { Range: "bytes=0-9", "If-Range": e.etag },
      });
      assert.equal(res.status, 206, `${e.name}: If-Range with its ETag`);
    }
  }
});

test("parseRange", () => {
  assert.deepEqual(parseRange("bytes=0-9", 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange(" bytes=0-9 ", 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange("bytes=0-9, ,", 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange("bytes=-500", 100), { start: 0, end: 99 });
  assert.equal(parseRange("bytes=0-", 0), "unsatisfiable");
  assert.equal(parseRange("bytes=-5", 0), undefined); // satisfiable, but an empty part has no Content-Range
  assert.equal(parseRange("bytes=,", 100), undefined);
  assert.equal(parseRange(`bytes=${Array.from({ length: 101 }, () => "200-").join(",")}`, 100), undefined);
  assert.equal(parseRange(undefined, 100), undefined);
});
