// A request body written somewhere that fails mid-way (the disk fills during an upload): the server must still be
// able to answer. With the request piped straight into the failing pipeline the request, and so its socket, was
// destroyed: the client got a reset instead of the answer. detachedBody keeps the request and drops the rest.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { detachedBody } from "../../src/util/streams.js";

/** A sink that takes `room` bytes and then fails as a full disk does. */
function sinkWithRoom(room: number): Writable {
  let taken = 0;
  return new Writable({
    write(chunk: Buffer, _enc, done) {
      taken += chunk.length;
      if (taken <= room) return done();
      done(Object.assign(new Error("no space left on device"), { code: "ENOSPC" }));
    },
  });
}

/** Sends `bodyBytes` in one PUT on a keep-alive agent; resolves with the status and body the server sent. */
function put(port: number, agent: http.Agent, bodyBytes: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { port, host: "127.0.0.1", method: "PUT", path: "/", agent, headers: { "Content-Length": bodyBytes } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(Buffer.alloc(bodyBytes, 1));
  });
}

test("a body whose sink fails mid-way: the client gets the answer, the connection carries the next request", async () => {
  const seen: string[] = [];
  const server = http.createServer((req, res) => {
    pipeline(detachedBody(req), sinkWithRoom(256 << 10)).then(
      () => res.end("stored"),
      (err: NodeJS.ErrnoException) => {
        seen.push(String(err.code));
        assert.equal(req.destroyed, false, "the request is not destroyed with the pipeline");
        res.writeHead(507).end("full");
      },
    );
  });
  server.listen(0, "127.0.0.1");
  await new Promise((ok) => server.once("listening", ok));
  const { port } = server.address() as AddressInfo;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set<unknown>();
  server.on("connection", (s) => sockets.add(s));
  try {
    assert.deepEqual(await put(port, agent, 8 << 20), { status: 507, body: "full" });
    assert.deepEqual(await put(port, agent, 1024), { status: 200, body: "stored" });
    assert.deepEqual(seen, ["ENOSPC"]);
    assert.equal(
      sockets.size,
      1,
      "the second request reused the connection: the rest of the body was drained",
    );
  } finally {
    agent.destroy();
    server.close();
    server.closeAllConnections();
  }
});

test("a client that goes away mid-body: the error reaches whoever reads the detached body", async () => {
  let failure: Promise<unknown> | undefined;
  let arrived!: () => void;
  const started = new Promise<void>((ok) => (arrived = ok));
  const server = http.createServer((req) => {
    failure = pipeline(
      detachedBody(req),
      new Writable({
        write(_c, _e, done) {
          arrived();
          done();
        },
      }),
    ).then(
      () => "ended",
      (err: Error) => err.message,
    );
  });
  server.listen(0, "127.0.0.1");
  await new Promise((ok) => server.once("listening", ok));
  const { port } = server.address() as AddressInfo;
  try {
    const req = http.request({
      port,
      host: "127.0.0.1",
      method: "PUT",
      headers: { "Content-Length": 1 << 20 },
    });
    req.on("error", () => undefined);
    req.write(Buffer.alloc(1024));
    await started;
    req.destroy();
    assert.match(String(await failure), /aborted|closed the connection/);
  } finally {
    server.close();
    server.closeAllConnections();
  }
});
