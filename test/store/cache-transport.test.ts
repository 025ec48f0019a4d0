// The HTTP side of binary caches against servers that misbehave the ways real ones do: a body that trickles for
// longer than the stall timeout (it must complete: the bound is on silence, not on the whole download), a body
// that stops arriving (a one-line error naming the URL and "stalled", within the bound), a server that closes
// the connection mid-body (an error naming the URL and saying the cache closed it, not undici's "terminated"),
// and a response head that never comes.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
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
