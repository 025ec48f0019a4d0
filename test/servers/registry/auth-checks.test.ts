// How `nixoci serve` checks passwords (F3 of issue 11): an unknown user costs a comparison at the file's highest
// bcrypt cost (the dummy hash), verified credentials are cached (no second comparison; forgotten when the file
// changes), identical concurrent checks share one comparison, failures are limited per client address (429
// TOOMANYREQUESTS with Retry-After, while other clients still get in), and requests without credentials are
// served while comparisons run (they run in worker threads). No timings are asserted here: bench/auth.ts
// measures them.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";
import bcrypt from "bcryptjs";
import {
  bcryptCost,
  dummyCost,
  dummyHash,
  parseAuthSpec,
  parseHtpasswd,
} from "../../../src/servers/registry/auth.js";
import { BcryptBusy, BcryptPool, bcryptCompare } from "../../../src/servers/registry/bcrypt-pool.js";
import { clientKey, FailureLimit } from "../../../src/servers/registry/failure-limit.js";
import { TrustedProxies } from "../../../src/servers/registry/client-address.js";
import { pushImage } from "../../../src/outputs/push.js";
import { makeTempDir } from "../../support/fixtures.js";
import { until } from "../../support/poll.js";
import { startServer, type Res, type TestServer } from "../../support/registry-server.js";
import { makeImage } from "../../support/make-image.js";

process.env.XDG_CACHE_HOME = makeTempDir("registry-auth-checks-xdg");
process.env.DOCKER_CONFIG = makeTempDir("registry-auth-checks-no-docker-config");

const basic = (user: string, password: string): string =>
  "Basic " + Buffer.from(`${user}:${password}`).toString("base64");

/** A request from a chosen local address (127.0.0.x: another client as far as the server can tell). */
function requestFrom(
  from: string,
  host: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<Res> {
  const [hostname, port] = host.split(":");
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: hostname, port: Number(port), method, path, headers, agent: false, localAddress: from },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const body = Buffer.concat(chunks);
          const out: Res = { status: res.statusCode ?? 0, headers: res.headers, body };
          try {
            out.json = JSON.parse(body.toString());
            out.code = (out.json as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
          } catch {
            // not JSON
          }
          resolve(out);
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

/** A compare that counts: every call, the hashes it was given, and how many are running or waiting. */
function countingCompare(): {
  compare: (password: string, hash: string) => Promise<boolean>;
  hashes: string[];
  running: () => number;
} {
  const hashes: string[] = [];
  let running = 0;
  return {
    hashes,
    running: () => running,
    compare: async (password, hash) => {
      hashes.push(hash);
      running++;
      try {
        return await bcryptCompare(password, hash);
      } finally {
        running--;
      }
    },
  };
}

test("the dummy hash has the file's highest cost", () => {
  const users = parseHtpasswd(
    [
      `low:${bcrypt.hashSync("a", 4)}`,
      `high:${bcrypt.hashSync("b", 7)}`,
      `mid:${bcrypt.hashSync("c", 5).replace(/^\$2b\$/, "$2y$")}`, // as htpasswd -B writes
    ].join("\n"),
  );
  assert.equal(dummyCost(users), 7);
  assert.equal(dummyCost(new Map()), 10, "no users: bcryptjs's default cost");
  for (const cost of [4, 7, 12, 13]) {
    const h = dummyHash(cost);
    assert.equal(bcryptCost(h), cost);
    assert.equal(parseHtpasswd(`x:${h}`).get("x"), h, "a well-formed bcrypt hash");
    assert.equal(bcrypt.compareSync("", h), false);
  }
  assert.notEqual(dummyHash(7), dummyHash(7), "random");
});

test("the failure limit: per address (IPv6 by /64), per window, bounded", () => {
  let now = 1_000_000;
  const limit = new FailureLimit({ max: 3, windowMs: 60_000, maxClients: 100, now: () => now });
  for (let i = 0; i < 3; i++) {
    assert.equal(limit.blocked("a"), undefined);
    limit.fail("a");
  }
  assert.equal(limit.blocked("a"), 60);
  assert.equal(limit.begin("a"), 60);
  assert.equal(limit.blocked("b"), undefined);
  now += 59_500;
  assert.equal(limit.blocked("a"), 1);
  now += 500;
  assert.equal(limit.blocked("a"), undefined, "the window is over");
  // Checks in progress count: no more than `max` at once.
  assert.equal(limit.begin("c"), undefined);
  assert.equal(limit.begin("c"), undefined);
  assert.equal(limit.begin("c"), undefined);
  assert.equal(limit.begin("c"), 1);
  limit.end("c");
  assert.equal(limit.begin("c"), undefined);
  for (let i = 0; i < 3; i++) limit.end("c");
  // Bounded: a flood of addresses keeps at most maxClients entries.
  for (let i = 0; i < 1000; i++) limit.fail(`10.0.${i >> 8}.${i & 255}`);
  assert.ok(limit.size <= 100, `${limit.size} entries`);
  assert.equal(clientKey("::ffff:127.0.0.1"), "127.0.0.1");
  assert.equal(clientKey("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
  assert.equal(clientKey("2001:db8:1:2::9"), "2001:db8:1:2::/64");
  assert.equal(clientKey("2001:db8::1"), "2001:db8:0:0::/64");
  assert.equal(clientKey("::1"), "0:0:0:0::/64");
});

test("the bcrypt pool: comparisons in worker threads, a bounded queue", async () => {
  const pool = new BcryptPool({ workers: 1, maxQueue: 2 });
  try {
    const hash = bcrypt.hashSync("pw", 4);
    const all = [pool.compare("pw", hash), pool.compare("no", hash), pool.compare("pw", "not a hash")];
    await assert.rejects(pool.compare("pw", hash), BcryptBusy);
    assert.deepEqual(await Promise.all(all), [true, false, false]);
    assert.equal(pool.pending, 0);
  } finally {
    await pool.close();
  }
});

describe("password checks on the server", () => {
  let dir: string;
  let htpasswd: string;
  let srv: TestServer;
  let counter: ReturnType<typeof countingCompare>;
  const aliceHash = bcrypt.hashSync("alice-pw", 4);
  before(async () => {
    dir = makeTempDir("registry-auth-checks");
    htpasswd = join(dir, "htpasswd");
    // Two costs: the dummy hash must have the higher one.
    writeFileSync(htpasswd, `alice:${aliceHash}\nbob:${bcrypt.hashSync("bob-pw", 6)}\n`);
    counter = countingCompare();
    srv = await startServer({
      auth: parseAuthSpec(`htpasswd:${htpasswd}`, {
        requirePull: true,
        compare: counter.compare,
        maxFailures: 1000,
      }),
    });
  });
  after(async () => {
    await srv?.stop();
  });

  const login = (auth: string) => requestFrom("127.0.0.1", srv.host, "GET", "/v2/", { Authorization: auth });

  test("an unknown user is compared with a hash of the file's highest cost", async () => {
    const before = counter.hashes.length;
    assert.equal((await login(basic("mallory", "guess"))).status, 401);
    assert.equal(counter.hashes.length, before + 1, "one comparison");
    assert.equal(bcryptCost(counter.hashes[before]), 6);
    assert.equal((await login(basic("alice", "guess"))).status, 401);
    assert.equal(counter.hashes[before + 1], aliceHash, "a wrong password: the user's own hash");
  });

  test("verified credentials are cached; identical concurrent checks share one comparison", async () => {
    const before = counter.hashes.length;
    assert.equal((await login(basic("alice", "alice-pw"))).status, 200);
    assert.equal(counter.hashes.length, before + 1);
    for (let i = 0; i < 3; i++) assert.equal((await login(basic("alice", "alice-pw"))).status, 200);
    assert.equal(counter.hashes.length, before + 1, "cache hits: no second comparison");
    const together = await Promise.all(Array.from({ length: 5 }, () => login(basic("bob", "bob-pw"))));
    assert.deepEqual(
      together.map((r) => r.status),
      [200, 200, 200, 200, 200],
    );
    assert.equal(counter.hashes.length, before + 2, "five identical checks at once: one comparison");
  });

  test("a changed htpasswd file clears the cache", async () => {
    assert.equal((await login(basic("alice", "alice-pw"))).status, 200); // cached now
    writeFileSync(htpasswd, `alice:${bcrypt.hashSync("new-pw", 4)}\n# changed\n`);
    // The file is looked at every 2 s at most.
    await until("the new password to work", 10_000, async () =>
      assert.equal((await login(basic("alice", "new-pw"))).status, 200),
    );
    assert.equal((await login(basic("alice", "alice-pw"))).status, 401, "the old password is forgotten");
    assert.equal((await login(basic("bob", "bob-pw"))).status, 401, "a removed user is forgotten");
  });
});

describe("failed checks are limited per client", () => {
  let srv: TestServer;
  let counter: ReturnType<typeof countingCompare>;
  before(async () => {
    const htpasswd = join(makeTempDir("registry-auth-limit"), "htpasswd");
    writeFileSync(htpasswd, `alice:${bcrypt.hashSync("alice-pw", 4)}\n`);
    counter = countingCompare();
    srv = await startServer({
      auth: parseAuthSpec(`htpasswd:${htpasswd}`, {
        requirePull: false,
        compare: counter.compare,
        maxFailures: 3,
        failureWindowMs: 60_000,
      }),
    });
  });
  after(async () => {
    await srv?.stop();
  });

  test("429 with Retry-After after 3 failures from one address; another address gets in", async () => {
    const push = (from: string, auth?: string) =>
      requestFrom(from, srv.host, "POST", "/v2/lim/img/blobs/uploads/", auth ? { Authorization: auth } : {});
    for (let i = 0; i < 3; i++)
      assert.equal((await push("127.0.0.1", basic("alice", `guess-${i}`))).status, 401);
    const compares = counter.hashes.length;
    const limited = await push("127.0.0.1", basic("alice", "guess-3"));
    assert.equal(limited.status, 429);
    assert.equal(limited.code, "TOOMANYREQUESTS");
    const retry = Number(limited.headers["retry-after"]);
    assert.ok(Number.isInteger(retry) && retry >= 1 && retry <= 60, `Retry-After: ${retry}`);
    // Refused unchecked, even the right password: no comparison at all.
    assert.equal((await push("127.0.0.1", basic("alice", "alice-pw"))).status, 429);
    assert.equal((await push("127.0.0.1", basic("mallory", "x"))).status, 429);
    assert.equal(counter.hashes.length, compares, "no comparison for a limited client");
    // Another client is not affected; the limited one still pulls anonymously (pulls are open here).
    assert.equal((await push("127.0.0.2", basic("alice", "alice-pw"))).status, 202);
    assert.equal((await requestFrom("127.0.0.1", srv.host, "GET", "/v2/_catalog")).status, 200);
    // Without credentials it is a 401 as usual (a challenge, not a guess).
    assert.equal((await push("127.0.0.1")).status, 401);
  });
});

test("trusted proxies: X-Forwarded-For is read right to left, only from a trusted peer, up to the first untrusted hop", () => {
  const proxies = new TrustedProxies(["127.0.0.1", "10.0.0.0/8", "fd00::/8"]);
  assert.equal(proxies.size, 3);
  assert.ok(proxies.trusts("::ffff:127.0.0.1"), "IPv4-mapped peer");
  assert.ok(proxies.trusts("10.1.2.3") && proxies.trusts("fd12::1"));
  assert.ok(!proxies.trusts("127.0.0.2") && !proxies.trusts("fe80::1") && !proxies.trusts(undefined));
  // An untrusted peer: its header is ignored.
  assert.equal(proxies.clientOf("192.0.2.9", "203.0.113.5"), "192.0.2.9");
  assert.equal(proxies.clientOf("::ffff:192.0.2.9", undefined), "192.0.2.9");
  // A trusted peer: the rightmost hop it does not trust (a client cannot push itself left of that).
  assert.equal(proxies.clientOf("127.0.0.1", "203.0.113.5"), "203.0.113.5");
  assert.equal(proxies.clientOf("127.0.0.1", "1.1.1.1, 203.0.113.5, 10.0.0.7"), "203.0.113.5");
  assert.equal(proxies.clientOf("127.0.0.1", ["1.1.1.1", "203.0.113.5,10.0.0.7"]), "203.0.113.5");
  assert.equal(proxies.clientOf("127.0.0.1", "[2001:db8::1]"), "2001:db8::1");
  // Every hop trusted: the leftmost; a malformed hop stops the walk at the last trusted one.
  assert.equal(proxies.clientOf("127.0.0.1", "10.0.0.1, 10.0.0.2"), "10.0.0.1");
  assert.equal(proxies.clientOf("127.0.0.1", "203.0.113.5, not-an-ip, 10.0.0.2"), "10.0.0.2");
  assert.equal(proxies.clientOf("127.0.0.1", ""), "127.0.0.1");
  // No proxies: the peer, whatever the header.
  assert.equal(new TrustedProxies([]).clientOf("127.0.0.1", "203.0.113.5"), "127.0.0.1");
  for (const bad of ["localhost", "10.0.0.0/33", "10.0.0.0/x", "::1/129", "1.2.3.4/8/8", ""])
    assert.throws(
      () => new TrustedProxies([bad]),
      (err: Error) =>
        err.message === `--trusted-proxy: not an IP address or ADDRESS/BITS network: ${JSON.stringify(bad)}`,
      bad,
    );
});

describe("behind a trusted proxy, failures count against the forwarded client", () => {
  let srv: TestServer;
  before(async () => {
    const htpasswd = join(makeTempDir("registry-auth-proxy"), "htpasswd");
    writeFileSync(htpasswd, `alice:${bcrypt.hashSync("alice-pw", 4)}\n`);
    srv = await startServer({
      auth: parseAuthSpec(`htpasswd:${htpasswd}`, {
        requirePull: false,
        compare: countingCompare().compare,
        maxFailures: 3,
        failureWindowMs: 60_000,
      }),
      trustedProxies: new TrustedProxies(["127.0.0.1"]),
    });
  });
  after(async () => {
    await srv?.stop();
  });

  test("clients behind 127.0.0.1 are told apart by X-Forwarded-For; others' headers are ignored", async () => {
    const push = (from: string, forwardedFor: string, password: string) =>
      requestFrom(from, srv.host, "POST", "/v2/prox/img/blobs/uploads/", {
        Authorization: basic("alice", password),
        "X-Forwarded-For": forwardedFor,
      });
    for (let i = 0; i < 3; i++)
      assert.equal((await push("127.0.0.1", "203.0.113.5", `guess-${i}`)).status, 401);
    assert.equal((await push("127.0.0.1", "203.0.113.5", "alice-pw")).status, 429, "the guessing client");
    // Another client through the same proxy is not limited; nor can the guesser escape by prepending an address.
    assert.equal((await push("127.0.0.1", "203.0.113.6", "alice-pw")).status, 202);
    assert.equal((await push("127.0.0.1", "198.51.100.1, 203.0.113.5", "alice-pw")).status, 429);
    // A peer that is not a trusted proxy is its own client: its X-Forwarded-For does not spend another's budget.
    for (let i = 0; i < 3; i++)
      assert.equal((await push("127.0.0.2", "203.0.113.6", `guess-${i}`)).status, 401);
    assert.equal(
      (await push("127.0.0.2", "203.0.113.7", "alice-pw")).status,
      429,
      "127.0.0.2 itself is limited",
    );
    assert.equal((await push("127.0.0.1", "203.0.113.6", "alice-pw")).status, 202, "203.0.113.6 is not");
    // The request log names the forwarded client, or the untrusted peer.
    await until("the request records", 10_000, () => assert.ok(srv.requests.length >= 11));
    const clients = srv.requests.map((r) => r.client);
    assert.equal(clients[0], "203.0.113.5");
    assert.ok(clients.includes("127.0.0.2") && !clients.includes("203.0.113.7"), clients.join(" "));
  });
});

describe("requests without credentials are served while password checks run", () => {
  let srv: TestServer;
  let counter: ReturnType<typeof countingCompare>;
  before(async () => {
    const htpasswd = join(makeTempDir("registry-auth-spray"), "htpasswd");
    // Cost 11: each comparison is a few hundred ms of CPU (htpasswd -B -C 11).
    writeFileSync(htpasswd, `alice:${bcrypt.hashSync("alice-pw", 11)}\n`);
    counter = countingCompare();
    srv = await startServer({
      auth: parseAuthSpec(`htpasswd:${htpasswd}`, {
        requirePull: false,
        compare: counter.compare,
        maxFailures: 1000,
      }),
    });
    const image = await makeImage({ hello: "spray\n" });
    await pushImage(
      image,
      { registry: srv.host, repository: "spray/img", tag: "v1" },
      { pushRecord: false, creds: "alice:alice-pw" },
    );
  });
  after(async () => {
    await srv?.stop();
  });

  test("an anonymous pull is answered before the password checks queued ahead of it end", async () => {
    const N = 8;
    const before = counter.hashes.length;
    // Distinct wrong passwords: no two checks can share a comparison.
    const spray = Array.from({ length: N }, (_, i) =>
      requestFrom("127.0.0.1", srv.host, "GET", "/v2/", { Authorization: basic("alice", `wrong-${i}`) }),
    );
    await until("every password check to have started", 30_000, () =>
      assert.equal(counter.hashes.length - before, N),
    );
    const pull = await requestFrom("127.0.0.1", srv.host, "GET", "/v2/spray/img/manifests/v1", {
      Accept: "application/vnd.oci.image.manifest.v1+json",
    });
    const stillRunning = counter.running();
    assert.equal(pull.status, 200);
    assert.ok(
      stillRunning > 0,
      "the anonymous pull waited for every password check (the event loop was blocked by bcrypt)",
    );
    assert.deepEqual(
      (await Promise.all(spray)).map((r) => r.status),
      Array<number>(N).fill(401),
    );
  });
});
