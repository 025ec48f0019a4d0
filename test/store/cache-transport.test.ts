// The HTTP side of binary caches against servers that misbehave the ways real ones do: a body that trickles for
// longer than the stall timeout (it must complete: the bound is on silence, not on the whole download), a body
// that stops arriving (a one-line error naming the URL and "stalled", within the bound), a server that closes
// the connection mid-body (an error naming the URL and saying the cache closed it, not a bare "aborted"),
// and a response head that never comes.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { brotliCompressSync, gzipSync } from "node:zlib";
import { join } from "node:path";
import { HttpTransport, openTransport, stalledDownloadTimeoutMs } from "../../src/store/cache-transport.js";

const servers: http.Server[] = [];
after(() => {
  for (const s of servers) {
    s.close();
    s.closeAllConnections();
  }
});

async function serve(handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler);
  servers.push(server);
  server.listen(0, "127.0.0.1");
  await new Promise((ok) => server.once("listening", ok));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function readAll(t: HttpTransport, name: string): Promise<Buffer> {
  const body = await t.getStream(name);
  assert.ok(body, "the cache has it");
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** The rejection message of `p` (fails if it resolves). */
async function failure(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail("expected a failure");
}

test("a body that keeps flowing completes however long it takes in all", async () => {
  // 12 chunks 100 ms apart: 1.2 s in all against a 400 ms stall timeout.
  const url = await serve((_req, res) => {
    res.writeHead(200, { "Content-Length": 12 * 1000 });
    let sent = 0;
    const timer = setInterval(() => {
      res.write(Buffer.alloc(1000, sent));
      if (++sent === 12) {
        clearInterval(timer);
        res.end();
      }
    }, 100);
  });
  const t = new HttpTransport(url, { stallTimeoutMs: 400 });
  const data = await readAll(t, "nar/slow.nar");
  assert.equal(data.length, 12_000);
  assert.equal(data[11_999], 11);
});

test("a body that stops arriving fails as stalled, naming the URL", async () => {
  const url = await serve((_req, res) => {
    res.writeHead(200, { "Content-Length": 10_000 });
    res.write(Buffer.alloc(4000)); // and nothing more, the connection left open
  });
  const t = new HttpTransport(url, { stallTimeoutMs: 300 });
  const message = await failure(readAll(t, "nar/stuck.nar"));
  assert.equal(message, `${url}/nar/stuck.nar: stalled: no data for 0.3 s after 4000 of 10000 bytes`);
});

test("a server that closes the connection mid-body: the error says so and names the URL", async () => {
  const url = await serve((req, res) => {
    res.writeHead(200, { "Content-Length": 10_000 });
    res.write(Buffer.alloc(2500), () => req.socket.destroy());
  });
  const t = new HttpTransport(url, { stallTimeoutMs: 30_000 });
  const message = await failure(readAll(t, "nar/cut.nar"));
  assert.match(
    message,
    /^http:\/\/127\.0\.0\.1:\d+\/nar\/cut\.nar: the cache closed the connection after 2500 of 10000 bytes/,
  );
  assert.doesNotMatch(message, /\n/);
});

test("a narinfo read as text is watched the same way", async () => {
  const url = await serve((_req, res) => {
    res.writeHead(200, { "Content-Length": 100 });
    res.write("StorePath: /nix/store/");
  });
  const t = new HttpTransport(url, { stallTimeoutMs: 300 });
  assert.match(
    await failure(t.getText("x.narinfo")),
    /x\.narinfo: stalled: no data for 0\.3 s after 22 of 100 bytes$/,
  );
});

test("a response head that never comes fails after the head timeout, with retries, naming the URL", async () => {
  let requests = 0;
  const url = await serve(() => {
    requests++; // never answered
  });
  const t = new HttpTransport(url, { headTimeoutMs: 200 });
  assert.equal(await failure(t.getText("nix-cache-info")), `${url}/nix-cache-info: no response within 0.2 s`);
  assert.equal(requests, 3, "tried three times");
});

test("NIXOCI_STALLED_DOWNLOAD_TIMEOUT: seconds; nonsense is refused by name", () => {
  assert.equal(stalledDownloadTimeoutMs({}), 60_000);
  assert.equal(stalledDownloadTimeoutMs({ NIXOCI_STALLED_DOWNLOAD_TIMEOUT: "2.5" }), 2500);
  for (const bad of ["0", "-1", "soon"])
    assert.throws(
      () => stalledDownloadTimeoutMs({ NIXOCI_STALLED_DOWNLOAD_TIMEOUT: bad }),
      /NIXOCI_STALLED_DOWNLOAD_TIMEOUT: not a positive number of seconds/,
    );
});

test("a narinfo that never ends (or a huge file) is refused past 16 MiB, not read into memory", async () => {
  const chunk = Buffer.alloc(1 << 20, "a");
  const url = await serve((_req, res) => {
    res.writeHead(200, { "Content-Type": "text/x-nix-narinfo" });
    const more = (): void => {
      while (!res.destroyed && res.write(chunk));
      if (!res.destroyed) res.once("drain", more);
    };
    more();
  });
  const t = new HttpTransport(url, { stallTimeoutMs: 30_000 });
  assert.equal(
    await failure(t.getText("x.narinfo")),
    `${url}/x.narinfo: larger than 16 MiB: not a nix-cache-info or narinfo file`,
  );
  const dir = mkdtempSync(join(tmpdir(), "nixoci-huge-narinfo-"));
  try {
    const file = join(dir, "x.narinfo");
    writeFileSync(file, "");
    truncateSync(file, 1 << 30); // sparse: no disk used
    assert.match(
      await failure(openTransport(`file://${dir}`).getText("x.narinfo")),
      /x\.narinfo: larger than 16 MiB/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("credentials in an http URL go as Basic auth, and no message shows them", async () => {
  const seen: (string | undefined)[] = [];
  const url = await serve((req, res) => {
    seen.push(req.headers.authorization);
    if (req.url === "/nix-cache-info") res.end("StoreDir: /nix/store\n");
    else {
      res.statusCode = 500;
      res.end();
    }
  });
  const withCreds = url.replace("http://", "http://ci%40example:s3cret@");
  const t = openTransport(withCreds);
  assert.equal(await t.getText("nix-cache-info"), "StoreDir: /nix/store\n");
  assert.equal(seen[0], `Basic ${Buffer.from("ci@example:s3cret").toString("base64")}`);
  const message = await failure(t.getText("x.narinfo"));
  assert.match(message, /^http:\/\/127\.0\.0\.1:\d+\/x\.narinfo: HTTP 500/);
  assert.doesNotMatch(message, /s3cret/);
  assert.doesNotMatch(
    await failure(Promise.resolve().then(() => openTransport(`${withCreds}?bad=1`))),
    /s3cret/,
  );
});

test("redirects are followed; credentials go to the cache's own origin only; a loop is refused by name", async () => {
  const seen: Array<[string, string | undefined]> = [];
  const other = await serve((req, res) => {
    seen.push([`other${req.url}`, req.headers.authorization]);
    res.end("moved here\n");
  });
  const url = await serve((req, res) => {
    seen.push([req.url!, req.headers.authorization]);
    if (req.url === "/a.narinfo") res.writeHead(302, { Location: "/b.narinfo" }).end();
    else if (req.url === "/b.narinfo") res.end("same origin\n");
    else if (req.url === "/c.narinfo") res.writeHead(307, { Location: `${other}/c.narinfo` }).end();
    else res.writeHead(301, { Location: req.url }).end(); // forever
  });
  const t = openTransport(url.replace("http://", "http://u:pw@"));
  const auth = `Basic ${Buffer.from("u:pw").toString("base64")}`;
  assert.equal(await t.getText("a.narinfo"), "same origin\n");
  assert.equal(await t.getText("c.narinfo"), "moved here\n");
  assert.deepEqual(seen, [
    ["/a.narinfo", auth],
    ["/b.narinfo", auth],
    ["/c.narinfo", auth],
    ["other/c.narinfo", undefined],
  ]);
  assert.equal(await failure(t.getText("loop.narinfo")), `${url}/loop.narinfo: more than 10 redirects`);
});

test("a body sent with a Content-Encoding (gzip, br: files stored compressed) is decoded; a bad one is an error", async () => {
  const text = "StorePath: /nix/store/x\n".repeat(50);
  const url = await serve((req, res) => {
    if (req.url === "/gz.ls") res.writeHead(200, { "Content-Encoding": "gzip" }).end(gzipSync(text));
    else if (req.url === "/br.ls")
      res.writeHead(200, { "Content-Encoding": "br" }).end(brotliCompressSync(text));
    else if (req.url === "/bad.ls") res.writeHead(200, { "Content-Encoding": "gzip" }).end("not gzip at all");
    else res.writeHead(200, { "Content-Encoding": "zz" }).end(text);
  });
  const t = new HttpTransport(url, { stallTimeoutMs: 30_000 });
  assert.equal(await t.getText("gz.ls"), text);
  assert.equal(await t.getText("br.ls"), text);
  assert.match(await failure(t.getText("bad.ls")), /\/bad\.ls: bad gzip data: /);
  assert.equal(await failure(t.getText("zz.ls")), `${url}/zz.ls: unsupported Content-Encoding "zz"`);
});

test("many requests to one cache share a few kept-alive connections", async () => {
  const sockets = new Set<unknown>();
  const url = await serve((req, res) => {
    sockets.add(req.socket);
    res.end(`${req.url}\n`);
  });
  const t = new HttpTransport(url);
  for (let round = 0; round < 5; round++) {
    const names = Array.from({ length: 20 }, (_, i) => `p${round}-${i}.narinfo`);
    const got = await Promise.all(names.map((n) => t.getText(n)));
    assert.deepEqual(
      got,
      names.map((n) => `/${n}\n`),
    );
  }
  assert.ok(sockets.size <= 32, `${sockets.size} connections for 100 requests`);
  assert.ok(sockets.size < 100, "connections are reused");
});
