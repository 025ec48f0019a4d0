// Slow clients of `nixoci serve` (issue 11): a request body trickled byte by byte is ended (408, connection
// closed) once it brings less than the minimum per window, while an upload that keeps flowing takes as long as
// it needs; a request head sent slowly is ended at the head timeout. The limits are made small here so the
// tests are quick; nothing about time is asserted, the tests wait (bounded) for the outcome.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as http from "node:http";
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { until } from "../../support/poll.js";
import { request, startServer, type TestServer } from "../../support/registry-server.js";

describe("slow request bodies and heads", () => {
  let srv: TestServer;
  before(async () => {
    srv = await startServer({ bodyProgress: { windowMs: 400, minBytes: 4096 }, headersTimeoutMs: 1000 });
  });
  after(async () => {
    await srv?.stop();
  });

  const startUpload = async (repo: string): Promise<string> => {
    const r = await request(srv.host, "POST", `/v2/${repo}/blobs/uploads/`);
    assert.equal(r.status, 202);
    return String(r.headers.location);
  };

  test("a body trickled at a few bytes a second is ended with 408", { timeout: 60_000 }, async () => {
    const location = await startUpload("slow/trickle");
    const [hostname, port] = srv.host.split(":");
    let status: number | undefined;
    let closed = false;
    let sent = 0;
    const req = http.request({
      host: hostname,
      port: Number(port),
      method: "PATCH",
      path: location,
      agent: false,
      headers: { "Content-Type": "application/octet-stream", "Content-Length": "1000000" },
    });
    req.on("response", (res) => {
      status = res.statusCode;
      res.resume();
    });
    req.on("error", () => undefined); // the server closes the connection
    req.on("close", () => (closed = true));
    req.flushHeaders();
    // One byte every 20 ms: 50 bytes a second, far below 4 KiB per 400 ms, and never idle.
    const trickle = (async () => {
      while (!closed && sent < 1_000_000) {
        req.write(Buffer.from("x"));
        sent++;
        await sleep(20);
      }
    })();
    await until("the server to end the trickled request", 30_000, () => assert.ok(closed, "still open"), 50);
    await trickle;
    assert.ok(sent < 1_000_000, "ended before the body was complete");
    assert.equal(status, 408);
    const info = srv.requests.find((r) => r.method === "PATCH" && r.path === location.split("?")[0]);
    assert.equal(info?.status, 408);
  });

  test("an upload that keeps flowing takes as long as it needs", { timeout: 60_000 }, async () => {
    const location = await startUpload("slow/steady");
    const [hostname, port] = srv.host.split(":");
    const chunk = Buffer.alloc(64 << 10, 7);
    const chunks = 40; // 2.5 MiB, sent over several windows
    const digest = createHash("sha256");
    for (let i = 0; i < chunks; i++) digest.update(chunk);
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = http.request(
        {
          host: hostname,
          port: Number(port),
          method: "PATCH",
          path: location,
          agent: false,
          headers: {
            "Content-Type": "application/octet-stream",
            "Content-Length": String(chunk.length * chunks),
          },
        },
        resolve,
      );
      req.on("error", reject);
      void (async () => {
        for (let i = 0; i < chunks; i++) {
          req.write(chunk);
          await sleep(50); // 64 KiB every 50 ms: slow, but far above the minimum
        }
        req.end();
      })();
    });
    res.resume();
    assert.equal(res.statusCode, 202);
    const put = await request(
      srv.host,
      "PUT",
      `${String(res.headers.location)}${String(res.headers.location).includes("?") ? "&" : "?"}digest=sha256:${digest.digest("hex")}`,
    );
    assert.equal(put.status, 201);
  });

  test("a request head sent slowly is ended at the head timeout", { timeout: 60_000 }, async () => {
    const [hostname, port] = srv.host.split(":");
    const sock = connect(Number(port), hostname);
    let closed = false;
    let answer = "";
    sock.on("data", (d: Buffer) => (answer += d.toString("latin1")));
    sock.on("error", () => undefined);
    sock.on("close", () => (closed = true));
    sock.write("GET /v2/ HTTP/1.1\r\nHost: x\r\n");
    const drip = (async () => {
      for (let i = 0; !closed && i < 600; i++) {
        sock.write(`X-Slow-${i}: y\r\n`);
        await sleep(50);
      }
    })();
    await until("the server to end the slow head", 30_000, () => assert.ok(closed, "still open"), 50);
    await drip;
    assert.match(answer, /^HTTP\/1\.1 408 /);
  });
});
