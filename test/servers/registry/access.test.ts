// The one access decision of `nixoci serve` (access.ts) on the real server with every route it has: registry
// API, binary cache endpoint, the page, /metrics, /healthz. With --auth-pull nothing but /healthz and the token
// endpoint answers without credentials; Basic credentials (an htpasswd user, or a token as the password) and
// Bearer tokens open them. Nix itself reads the closed binary cache with a netrc file.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { decideAccess, routeNeed, type AccessPolicy } from "../../../src/servers/registry/access.js";
import { parseAuthSpec } from "../../../src/servers/registry/auth.js";
import {
  binaryCacheRoutes,
  type BinaryCacheHandler,
} from "../../../src/servers/registry/binary-cache-endpoint.js";
import { parseRoute } from "../../../src/servers/registry/routes.js";
import { registryMetrics } from "../../../src/servers/registry/metrics.js";
import { opsRoutes } from "../../../src/servers/registry/ops.js";
import { parseSecretKey } from "../../../src/nix/signature.js";
import { LocalStore } from "../../../src/store/local-store.js";
import { pushImage } from "../../../src/outputs/push.js";
import { makeHtpasswdLine } from "../../support/daemons.js";
import { buildFixtures, generateCacheKey, makeTempDir } from "../../support/fixtures.js";
import { runText } from "../../support/run.js";
import { makeImage } from "../../support/make-image.js";
import { request, startServer, type TestServer } from "../../support/registry-server.js";

process.env.XDG_CACHE_HOME = makeTempDir("registry-access-xdg");
process.env.DOCKER_CONFIG = makeTempDir("registry-access-no-docker-config");

const USER = "alice";
const PASSWORD = "open-sesame:42";
const PULL_TOKEN = "pull-token-0123456789abcdef";
const basic = (user: string, password: string): string =>
  "Basic " + Buffer.from(`${user}:${password}`).toString("base64");

const fx = buildFixtures();
const work = makeTempDir("registry-access");
const key = generateCacheKey("nixoci-access-test-1", work);
const store = new LocalStore();
const hashPart = (p: string): string => p.slice("/nix/store/".length, "/nix/store/".length + 32);

function authFiles(): { htpasswd: string; tokens: string } {
  const line = makeHtpasswdLine(USER, PASSWORD);
  assert.ok(line, "htpasswd (apache2-utils) or python3's crypt is needed to make bcrypt entries");
  const htpasswd = join(work, "htpasswd");
  writeFileSync(htpasswd, `${line}\n`);
  const tokens = join(work, "tokens");
  writeFileSync(tokens, `${PULL_TOKEN} pull\n`);
  return { htpasswd, tokens };
}

/** A server as `nixoci serve` puts it together: the binary cache and the operational routes as extra routes. */
async function serve(requirePull: boolean): Promise<TestServer & { cache: BinaryCacheHandler }> {
  const { htpasswd, tokens } = authFiles();
  const cache = binaryCacheRoutes({ store, signKey: parseSecretKey(key.secretKey) });
  const srv = await startServer({
    // Many wrong passwords are sent on purpose: no 429 here (auth-checks.test.ts tests the limit).
    auth: parseAuthSpec(`htpasswd:${htpasswd},tokens:${tokens}`, { requirePull, maxFailures: 1000 }),
    routes: [
      cache,
      opsRoutes({
        metrics: registryMetrics(),
        health: () => ({ ok: true }),
        recentImages: () => [{ name: "hello", tag: "latest", digest: "sha256:00", builtAt: "now" }],
      }),
    ],
  });
  return { ...srv, cache };
}

/** Every read route outside /v2, with a real path of the store behind the cache ones. */
async function readRoutes(host: string, auth: string): Promise<string[]> {
  const narinfo = await request(host, "GET", `/${hashPart(fx.hello)}.narinfo`, {
    headers: auth ? { Authorization: auth } : {},
  });
  assert.equal(narinfo.status, 200);
  const url = /^URL: (\S+)$/m.exec(narinfo.body.toString())?.[1];
  assert.ok(url, "the narinfo names its NAR");
  return [
    "/nix-cache-info",
    `/${hashPart(fx.hello)}.narinfo`,
    `/${url}`,
    `/${hashPart(fx.hello)}.ls`,
    "/",
    "/metrics",
  ];
}

test("the decision table", () => {
  const closed: AccessPolicy = { auth: true, requirePull: true };
  const open: AccessPolicy = { auth: true, requirePull: false };
  const none: AccessPolicy = { auth: false, requirePull: false };
  const at = (method: string, path: string, policy: AccessPolicy) =>
    decideAccess(method, path, parseRoute(path), policy);
  for (const path of ["/nix-cache-info", "/x.narinfo", "/nar/x.nar.zst", "/", "/metrics", "/nothing/here"]) {
    assert.equal(routeNeed("GET", path, undefined), "read", path);
    assert.deepEqual(at("GET", path, closed), { open: false, action: "pull", challenge: "basic" }, path);
    assert.deepEqual(at("GET", path, open), { open: true }, path);
  }
  assert.deepEqual(at("GET", "/healthz", closed), { open: true });
  assert.deepEqual(at("GET", "/v2/token", closed), { open: true });
  assert.deepEqual(at("GET", "/v2/", open), { open: false, action: "pull", challenge: "registry" });
  assert.deepEqual(at("GET", "/v2/a/b/manifests/v1", open), { open: true });
  assert.deepEqual(at("HEAD", "/v2/a/b/blobs/sha256:00", closed), {
    open: false,
    action: "pull",
    repo: "a/b",
    challenge: "registry",
  });
  for (const [method, path] of [
    ["PUT", "/v2/a/manifests/v1"],
    ["DELETE", "/v2/a/manifests/v1"],
    ["DELETE", "/v2/a/blobs/sha256:00"],
    ["POST", "/v2/a/blobs/uploads/"],
    ["GET", "/v2/a/blobs/uploads/some-uuid"],
  ])
    assert.deepEqual(at(method, path, open), {
      open: false,
      action: "push",
      repo: "a",
      challenge: "registry",
    });
  assert.deepEqual(at("PUT", "/v2/a/manifests/v1", none), { open: true });
});

describe("--auth-pull closes every route but /healthz", () => {
  let srv: TestServer & { cache: BinaryCacheHandler };
  before(async () => {
    srv = await serve(true);
    const image = await makeImage({ hello: "closed\n" });
    await pushImage(
      image,
      { registry: srv.host, repository: "closed/img", tag: "v1" },
      { pushRecord: false, creds: `${USER}:${PASSWORD}` },
    );
  });
  after(async () => {
    await srv?.stop();
    srv?.cache.close();
  });

  test("401 without credentials, 200 with Basic or Bearer ones", async () => {
    const routes = [
      ...(await readRoutes(srv.host, basic(USER, PASSWORD))),
      "/v2/",
      "/v2/_catalog",
      "/v2/closed/img/tags/list",
      "/v2/closed/img/manifests/v1",
    ];
    for (const path of routes) {
      for (const method of ["GET", "HEAD"]) {
        const what = `${method} ${path}`;
        const anon = await request(srv.host, method, path);
        assert.equal(anon.status, 401, what);
        const challenge = String(anon.headers["www-authenticate"]);
        // Outside the registry API the challenge is Basic: what Nix (netrc), browsers and Prometheus answer.
        if (!path.startsWith("/v2")) assert.equal(challenge, 'Basic realm="nixoci"', what);
        else assert.match(challenge, /^Bearer realm=/, what);
        assert.equal(
          (await request(srv.host, method, path, { headers: { Authorization: basic(USER, "x") } })).status,
          401,
          what,
        );
        for (const auth of [basic(USER, PASSWORD), basic("ci", PULL_TOKEN), `Bearer ${PULL_TOKEN}`]) {
          const ok = await request(srv.host, method, path, { headers: { Authorization: auth } });
          assert.equal(ok.status, 200, `${what} with ${auth.split(" ")[0]}`);
        }
      }
    }
    // An issued token (what docker and skopeo use) opens the binary cache too.
    const issued = await request(
      srv.host,
      "GET",
      "/v2/token?service=nixoci&scope=repository:closed/img:pull",
      {
        headers: { Authorization: basic(USER, PASSWORD) },
      },
    );
    const token = (issued.json as { token: string }).token;
    assert.equal(
      (await request(srv.host, "GET", "/nix-cache-info", { headers: { Authorization: `Bearer ${token}` } }))
        .status,
      200,
    );
    // Unknown paths: 401 too (nothing about what exists); with credentials, 404.
    assert.equal((await request(srv.host, "GET", "/no/such/thing")).status, 401);
    assert.equal((await request(srv.host, "GET", "/v2/foo")).status, 401);
    assert.equal((await request(srv.host, "POST", "/v2/closed/img/tags/list")).status, 401);
    const known = await request(srv.host, "POST", "/v2/closed/img/tags/list", {
      headers: { Authorization: basic(USER, PASSWORD) },
    });
    assert.equal(known.status, 405);
    assert.equal(
      (
        await request(srv.host, "GET", "/no/such/thing", {
          headers: { Authorization: basic(USER, PASSWORD) },
        })
      ).status,
      404,
    );
  });

  test("/healthz and the token endpoint stay open", async () => {
    assert.equal((await request(srv.host, "GET", "/healthz")).status, 200);
    assert.equal((await request(srv.host, "HEAD", "/healthz")).status, 200);
    assert.equal((await request(srv.host, "GET", "/v2/token?service=nixoci")).status, 200);
  });

  test("nix copy --from the closed cache: refused without credentials, copies with a netrc file", async () => {
    const nix = (args: string[]): Promise<string> =>
      new Promise((resolve, reject) => {
        execFile(
          "nix",
          ["--extra-experimental-features", "nix-command", ...args],
          {
            env: { ...process.env, XDG_CACHE_HOME: makeTempDir("registry-access-nix-xdg") },
            maxBuffer: 1 << 28,
          },
          (err, stdout, stderr) =>
            err ? reject(new Error(`nix ${args.join(" ")}: ${stderr}`)) : resolve(stdout),
        );
      });
    const url = `http://${srv.host}`;
    const trust = ["--option", "trusted-public-keys", key.publicKey, "--option", "require-sigs", "true"];
    await assert.rejects(
      nix(["copy", "--from", url, "--to", join(work, "dest-anon"), ...trust, fx.hello]),
      /401|Unauthorized|does not appear to be a binary cache/i,
    );
    const netrc = join(work, "netrc");
    const [hostname] = srv.host.split(":");
    writeFileSync(netrc, `machine ${hostname} login ${USER} password ${PASSWORD}\n`);
    const netrcArgs = ["--option", "netrc-file", netrc];
    const netrcTokenFile = join(work, "netrc-token");
    writeFileSync(netrcTokenFile, `machine ${hostname} login ci password ${PULL_TOKEN}\n`);
    const dest = join(work, "dest");
    await nix(["copy", "--from", url, "--to", dest, ...trust, ...netrcArgs, fx.hello]);
    const closure = runText("nix-store", ["-qR", fx.hello]).split("\n").sort();
    assert.deepEqual(runText("nix-store", ["--store", dest, "-qR", fx.hello]).split("\n").sort(), closure);
    // A token as the netrc password works the same.
    const dest2 = join(work, "dest-token");
    await nix([
      "copy",
      "--from",
      url,
      "--to",
      dest2,
      ...trust,
      "--option",
      "netrc-file",
      netrcTokenFile,
      fx.hello,
    ]);
    assert.deepEqual(runText("nix-store", ["--store", dest2, "-qR", fx.hello]).split("\n").sort(), closure);
  });
});

describe("--auth without --auth-pull: reads stay open", () => {
  let srv: TestServer & { cache: BinaryCacheHandler };
  before(async () => {
    srv = await serve(false);
  });
  after(async () => {
    await srv?.stop();
    srv?.cache.close();
  });

  test("the binary cache, the page and /metrics answer without credentials; the API root does not", async () => {
    for (const path of await readRoutes(srv.host, "")) {
      assert.equal((await request(srv.host, "GET", path)).status, 200, path);
    }
    assert.equal((await request(srv.host, "GET", "/healthz")).status, 200);
    assert.equal((await request(srv.host, "GET", "/v2/")).status, 401);
    assert.equal((await request(srv.host, "POST", "/v2/x/blobs/uploads/")).status, 401);
  });
});
