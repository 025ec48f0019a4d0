// Registry auth of `nixoci serve`: htpasswd (Basic), tokens (Bearer) and the token endpoint, with raw requests
// and real clients (our pusher, skopeo, ctr, docker login/push/pull).
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { parseChallenges } from "../../../src/outputs/registry-auth.js";
import { writeDockerArchive } from "../../../src/outputs/archive.js";
import type { BuiltImage } from "../../../src/oci/image.js";
import { writeOciLayout } from "../../../src/outputs/layout.js";
import { OCI_MANIFEST } from "../../../src/oci/media-types.js";
import { pushImage } from "../../../src/outputs/push.js";
import { parseAuthSpec, parseHtpasswd, parseTokens } from "../../../src/servers/registry/auth.js";
import { NixociError } from "../../../src/util/errors.js";
import {
  DOCKER_CLI,
  makeHtpasswdLine,
  startContainerd,
  startDockerd,
  type Containerd,
  type Dockerd,
} from "../../support/daemons.js";
import { makeTempDir } from "../../support/fixtures.js";
import { makeImage } from "../../support/make-image.js";
import { exec, request, startServer, type TestServer } from "../../support/registry-server.js";

process.env.XDG_CACHE_HOME = makeTempDir("registry-auth-xdg");
process.env.DOCKER_CONFIG = makeTempDir("registry-auth-no-docker-config");

const USER = "alice";
const PASSWORD = "s3cret:with:colons";
const PUSH_TOKEN = "push-token-0123456789abcdef";
const PULL_TOKEN = "pull-token-0123456789abcdef";

const basic = (user: string, password: string): string =>
  "Basic " + Buffer.from(`${user}:${password}`).toString("base64");

function authFiles(): { htpasswd: string; tokens: string } {
  const dir = makeTempDir("registry-auth-files");
  const line = makeHtpasswdLine(USER, PASSWORD);
  assert.ok(line, "htpasswd (apache2-utils) or python3's crypt is needed to make bcrypt entries");
  const htpasswd = join(dir, "htpasswd");
  writeFileSync(htpasswd, `# users\n${line}\n\n`);
  const tokens = join(dir, "tokens");
  writeFileSync(tokens, `# tokens\n${PUSH_TOKEN}\n${PULL_TOKEN} pull\n`);
  return { htpasswd, tokens };
}

const code = (r: { json?: unknown }): string | undefined =>
  (r.json as { errors?: Array<{ code: string }> } | undefined)?.errors?.[0]?.code;

test("auth spec and files", () => {
  const { htpasswd, tokens } = authFiles();
  assert.ok(parseAuthSpec(`htpasswd:${htpasswd}`, { requirePull: false }));
  const both = parseAuthSpec(`htpasswd:${htpasswd},tokens:${tokens}`, { requirePull: true });
  assert.ok(both.handleTokenRequest, "a token endpoint with tokens");
  assert.equal(parseAuthSpec(`htpasswd:${htpasswd}`, { requirePull: true }).handleTokenRequest, undefined);
  for (const bad of ["", "basic:/x", `htpasswd:${htpasswd},htpasswd:${htpasswd}`, "htpasswd:/no/such/file"])
    assert.throws(() => parseAuthSpec(bad, { requirePull: false }), NixociError, bad);
  assert.throws(() => parseHtpasswd("bob:$apr1$abc$def\n", "f"), /f:1: user "bob" has no bcrypt hash/);
  assert.throws(() => parseHtpasswd("no-colon\n"), NixociError);
  assert.deepEqual(
    [...parseTokens("# c\n\nabcdefgh\nijklmnop pull\nqrstuvwx push\n")],
    [
      ["abcdefgh", "push"],
      ["ijklmnop", "pull"],
      ["qrstuvwx", "push"],
    ],
  );
  assert.throws(() => parseTokens("short\n"), NixociError);
  assert.throws(() => parseTokens("abcdefgh admin\n"), NixociError);
});

describe("htpasswd (Basic), pulls open", () => {
  let srv: TestServer;
  let image: BuiltImage;
  before(async () => {
    const { htpasswd } = authFiles();
    [srv, image] = await Promise.all([
      startServer({ auth: parseAuthSpec(`htpasswd:${htpasswd}`, { requirePull: false }) }),
      makeImage(),
    ]);
  });
  after(async () => {
    await srv?.stop();
  });

  test("the API root challenges; pushes need the password; pulls do not", { timeout: 120_000 }, async () => {
    const root = await request(srv.host, "GET", "/v2/");
    assert.equal(root.status, 401);
    assert.equal(root.headers["www-authenticate"], 'Basic realm="nixoci"');
    assert.equal(code(root), "UNAUTHORIZED");
    assert.equal(
      (await request(srv.host, "GET", "/v2/", { headers: { Authorization: basic(USER, PASSWORD) } })).status,
      200,
    );
    assert.equal(
      (await request(srv.host, "GET", "/v2/", { headers: { Authorization: basic(USER, "wrong") } })).status,
      401,
    );

    const anon = await request(srv.host, "POST", "/v2/auth/img/blobs/uploads/");
    assert.equal(anon.status, 401);
    assert.equal(anon.headers["www-authenticate"], 'Basic realm="nixoci"');
    assert.equal(code(anon), "UNAUTHORIZED");
    const wrong = await request(srv.host, "POST", "/v2/auth/img/blobs/uploads/", {
      headers: { Authorization: basic(USER, "wrong") },
    });
    assert.equal(wrong.status, 401);
    const unknownUser = await request(srv.host, "PUT", "/v2/auth/img/manifests/v1", {
      headers: { Authorization: basic("mallory", PASSWORD), "Content-Type": OCI_MANIFEST },
      body: image.manifest.bytes,
    });
    assert.equal(unknownUser.status, 401);

    await assert.rejects(
      pushImage(image, { registry: srv.host, repository: "auth/img", tag: "v1" }, { pushRecord: false }),
      /authentication required/,
    );
    const r = await pushImage(
      image,
      { registry: srv.host, repository: "auth/img", tag: "v1" },
      { pushRecord: false, creds: `${USER}:${PASSWORD}` },
    );
    assert.equal(r.manifestDigest, image.manifest.digest);

    // Anonymous pulls: raw, and skopeo without credentials.
    const m = await request(srv.host, "GET", "/v2/auth/img/manifests/v1");
    assert.equal(m.status, 200);
    assert.deepEqual(m.body, image.manifest.bytes);
    const info = JSON.parse(
      await exec("skopeo", ["inspect", "--tls-verify=false", `docker://${srv.host}/auth/img:v1`]),
    ) as { Digest: string };
    assert.equal(info.Digest, image.manifest.digest);
    // Deletes are pushes.
    assert.equal((await request(srv.host, "DELETE", "/v2/auth/img/manifests/v1")).status, 401);
  });

  test("skopeo pushes with --dest-creds", { timeout: 120_000 }, async () => {
    const layout = join(makeTempDir("registry-auth-layout"), "layout");
    await writeOciLayout(image, layout, "v1");
    const copy = (creds?: string): Promise<string> =>
      exec("skopeo", [
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        ...(creds ? ["--dest-creds", creds] : []),
        `oci:${layout}:v1`,
        `docker://${srv.host}/auth/skopeo:v1`,
      ]);
    await assert.rejects(copy(), /401|unauthorized|authentication required/i);
    await assert.rejects(copy(`${USER}:nope`), /401|unauthorized|authentication required/i);
    await copy(`${USER}:${PASSWORD}`);
    assert.equal((await request(srv.host, "HEAD", "/v2/auth/skopeo/manifests/v1")).status, 200);
  });
});

describe("htpasswd (Basic), pulls need auth", () => {
  let srv: TestServer;
  let containerd: Containerd;
  let image: BuiltImage;
  before(async () => {
    const { htpasswd } = authFiles();
    [srv, containerd, image] = await Promise.all([
      startServer({ auth: parseAuthSpec(`htpasswd:${htpasswd}`, { requirePull: true }) }),
      startContainerd(),
      makeImage({ hello: "private\n" }),
    ]);
    await pushImage(
      image,
      { registry: srv.host, repository: "private/img", tag: "v1" },
      { pushRecord: false, creds: `${USER}:${PASSWORD}` },
    );
  });
  after(async () => {
    await Promise.all([srv?.stop(), containerd?.stop()]);
  });

  test(
    "anonymous and wrong-password pulls: 401; skopeo and ctr with credentials",
    { timeout: 180_000 },
    async () => {
      for (const path of ["/v2/private/img/manifests/v1", "/v2/private/img/tags/list", "/v2/_catalog"]) {
        const res = await request(srv.host, "GET", path);
        assert.equal(res.status, 401, path);
        assert.equal(code(res), "UNAUTHORIZED");
        assert.equal(res.headers["www-authenticate"], 'Basic realm="nixoci"');
        const wrong = await request(srv.host, "GET", path, { headers: { Authorization: basic(USER, "x") } });
        assert.equal(wrong.status, 401, path);
        const ok = await request(srv.host, "GET", path, {
          headers: { Authorization: basic(USER, PASSWORD) },
        });
        assert.equal(ok.status, 200, path);
      }
      await assert.rejects(
        exec("skopeo", ["inspect", "--tls-verify=false", `docker://${srv.host}/private/img:v1`]),
        /401|unauthorized|authentication required/i,
      );
      const info = JSON.parse(
        await exec("skopeo", [
          "inspect",
          "--tls-verify=false",
          "--creds",
          `${USER}:${PASSWORD}`,
          `docker://${srv.host}/private/img:v1`,
        ]),
      ) as { Digest: string };
      assert.equal(info.Digest, image.manifest.digest);
      const ref = `${srv.host}/private/img:v1`;
      const ctr = (args: string[]): Promise<string> => exec("ctr", ["-a", containerd.address, ...args]);
      await assert.rejects(ctr(["images", "pull", "--plain-http", ref]));
      await ctr(["images", "pull", "--plain-http", "--user", `${USER}:${PASSWORD}`, ref]);
      assert.equal(await ctr(["run", "--rm", ref, "nixoci-auth-ctr"]), "private\n");
    },
  );
});

describe("tokens and the token endpoint", () => {
  let srv: TestServer;
  let open: TestServer;
  let dockerd: Dockerd;
  let image: BuiltImage;
  before(async () => {
    const { htpasswd, tokens } = authFiles();
    [srv, open, dockerd, image] = await Promise.all([
      startServer({ auth: parseAuthSpec(`htpasswd:${htpasswd},tokens:${tokens}`, { requirePull: true }) }),
      startServer({ auth: parseAuthSpec(`tokens:${tokens}`, { requirePull: false }) }),
      startDockerd(),
      makeImage({ hello: "token\n" }),
    ]);
  });
  after(async () => {
    await Promise.all([srv?.stop(), open?.stop(), dockerd?.stop()]);
  });

  test("Bearer challenges and static tokens", { timeout: 60_000 }, async () => {
    const root = await request(srv.host, "GET", "/v2/");
    assert.equal(root.status, 401);
    const [ch] = parseChallenges(String(root.headers["www-authenticate"]));
    assert.equal(ch.scheme, "bearer");
    assert.equal(ch.params.realm, `http://${srv.host}/v2/token`);
    assert.equal(ch.params.service, "nixoci");
    const push = await request(srv.host, "POST", "/v2/tok/img/blobs/uploads/");
    assert.equal(push.status, 401);
    assert.equal(
      parseChallenges(String(push.headers["www-authenticate"]))[0].params.scope,
      "repository:tok/img:pull,push",
    );
    const pull = await request(srv.host, "GET", "/v2/tok/img/manifests/v1");
    assert.equal(
      parseChallenges(String(pull.headers["www-authenticate"]))[0].params.scope,
      "repository:tok/img:pull",
    );

    const bearer = (t: string): Record<string, string> => ({ Authorization: `Bearer ${t}` });
    const up = await request(srv.host, "POST", "/v2/tok/img/blobs/uploads/", { headers: bearer(PUSH_TOKEN) });
    assert.equal(up.status, 202);
    assert.equal(
      (await request(srv.host, "DELETE", String(up.headers.location), { headers: bearer(PUSH_TOKEN) }))
        .status,
      204,
    );
    const denied = await request(srv.host, "POST", "/v2/tok/img/blobs/uploads/", {
      headers: bearer(PULL_TOKEN),
    });
    assert.equal(denied.status, 403);
    assert.equal(code(denied), "DENIED");
    const bad = await request(srv.host, "GET", "/v2/tok/img/tags/list", {
      headers: bearer("not-a-token-at-all"),
    });
    assert.equal(bad.status, 401);
    assert.match(String(bad.headers["www-authenticate"]), /error="invalid_token"/);
    // A token as the password of Basic credentials (what docker login stores) works too.
    assert.equal(
      (await request(srv.host, "GET", "/v2/", { headers: { Authorization: basic("ci", PULL_TOKEN) } }))
        .status,
      200,
    );
  });

  test("the token endpoint", { timeout: 60_000 }, async () => {
    const tokenFor = async (
      auth: string | undefined,
      scope: string,
    ): Promise<{ status: number; token?: string }> => {
      const res = await request(
        srv.host,
        "GET",
        `/v2/token?service=nixoci&scope=${encodeURIComponent(scope)}`,
        {
          headers: auth ? { Authorization: auth } : {},
        },
      );
      const j = res.json as { token?: string; access_token?: string; expires_in?: number } | undefined;
      if (res.status === 200) {
        assert.equal(j?.token, j?.access_token);
        assert.equal(j?.expires_in, 900);
      }
      return { status: res.status, token: j?.token };
    };
    // Anonymous: a token that counts as no credentials (pulls need auth here).
    const anon = await tokenFor(undefined, "repository:tok/img:pull");
    assert.equal(anon.status, 200);
    const anonPull = await request(srv.host, "GET", "/v2/tok/img/tags/list", {
      headers: { Authorization: `Bearer ${anon.token}` },
    });
    assert.equal(anonPull.status, 401);
    assert.equal((await tokenFor(basic(USER, "wrong"), "repository:tok/img:pull")).status, 401);
    const pushTok = await tokenFor(basic(USER, PASSWORD), "repository:tok/img:pull,push");
    assert.equal(pushTok.status, 200);
    const up = await request(srv.host, "POST", "/v2/tok/img/blobs/uploads/", {
      headers: { Authorization: `Bearer ${pushTok.token}` },
    });
    assert.equal(up.status, 202);
    // Only what was asked: a pull scope gives a pull token.
    const pullTok = await tokenFor(basic(USER, PASSWORD), "repository:tok/img:pull");
    const refused = await request(srv.host, "POST", "/v2/tok/img/blobs/uploads/", {
      headers: { Authorization: `Bearer ${pullTok.token}` },
    });
    assert.equal(refused.status, 403);
    // Pull-only credentials never get push.
    const viaPullToken = await tokenFor(basic("ci", PULL_TOKEN), "repository:tok/img:pull,push");
    assert.equal(
      (
        await request(srv.host, "POST", "/v2/tok/img/blobs/uploads/", {
          headers: { Authorization: `Bearer ${viaPullToken.token}` },
        })
      ).status,
      403,
    );
    // A tampered token is refused.
    const t = String(pushTok.token);
    const tampered = t.slice(0, -2) + (t.endsWith("AA") ? "BB" : "AA");
    assert.equal(
      (await request(srv.host, "GET", "/v2/", { headers: { Authorization: `Bearer ${tampered}` } })).status,
      401,
    );
  });

  test("our pusher and skopeo go through the token endpoint", { timeout: 120_000 }, async () => {
    await assert.rejects(
      pushImage(
        image,
        { registry: srv.host, repository: "tok/img", tag: "v1" },
        { pushRecord: false, creds: `ci:${PULL_TOKEN}` },
      ),
      /DENIED/,
    );
    const r = await pushImage(
      image,
      { registry: srv.host, repository: "tok/img", tag: "v1" },
      { pushRecord: false, creds: `${USER}:${PASSWORD}` },
    );
    assert.equal(r.manifestDigest, image.manifest.digest);
    const r2 = await pushImage(
      image,
      { registry: srv.host, repository: "tok/img2", tag: "v1" },
      { pushRecord: false, creds: `ci:${PUSH_TOKEN}`, mountFrom: ["tok/img"] },
    );
    assert.equal(r2.mounted.length, 3);
    const info = JSON.parse(
      await exec("skopeo", [
        "inspect",
        "--tls-verify=false",
        "--creds",
        `ci:${PULL_TOKEN}`,
        `docker://${srv.host}/tok/img:v1`,
      ]),
    ) as { Digest: string };
    assert.equal(info.Digest, image.manifest.digest);
    await assert.rejects(
      exec("skopeo", ["inspect", "--tls-verify=false", `docker://${srv.host}/tok/img:v1`]),
    );
  });

  test(
    "docker login, push and pull; anonymous docker pull where pulls are open",
    { timeout: 300_000 },
    async () => {
      const docker = (args: string[], input?: string): Promise<string> =>
        exec(DOCKER_CLI, ["-H", `unix://${dockerd.host}`, ...args], {
          env: { DOCKER_CONFIG: join(dirname(dockerd.host), "cli") },
          input: input === undefined ? undefined : Buffer.from(input),
        });
      const file = join(makeTempDir("registry-auth-docker"), "img.tar");
      await writeDockerArchive(image, file, ["nixoci/token:v1"]);
      await docker(["load", "-i", file]);
      const ref = `${srv.host}/docker/tok:v1`;
      await docker(["tag", "nixoci/token:v1", ref]);
      // Refused at once: docker retries a refused token request (for a minute), not a 401 of the registry. So
      // every token request docker made got a token (an anonymous one), and the registry itself refused.
      const from = srv.requests.length;
      await assert.rejects(docker(["push", ref]), /unauthorized|authentication required/i);
      const during = srv.requests.slice(from);
      const tokenRequests = during.filter((r) => r.path === "/v2/token");
      assert.ok(tokenRequests.length > 0, "docker asked the token endpoint");
      assert.deepEqual(
        tokenRequests.filter((r) => r.status !== 200).map((r) => `${r.method} ${r.path} ${r.status}`),
        [],
        "no token request was refused (docker would retry those)",
      );
      assert.ok(
        during.some((r) => r.path !== "/v2/token" && r.status === 401),
        `the registry answered 401: ${during.map((r) => `${r.method} ${r.path} ${r.status}`).join(", ")}`,
      );
      await assert.rejects(docker(["login", "-u", USER, "--password-stdin", srv.host], "wrong"));
      await docker(["login", "-u", USER, "--password-stdin", srv.host], PASSWORD);
      await docker(["push", ref]);
      await docker(["rmi", ref]);
      await docker(["pull", ref]);
      assert.equal(await docker(["run", "--rm", "--network", "none", ref]), "token\n");
      await docker(["logout", srv.host]);

      // Tokens only, pulls open: docker pulls anonymously (with an anonymous token), cannot push.
      await pushImage(
        image,
        { registry: open.host, repository: "open/img", tag: "v1" },
        { pushRecord: false, creds: `x:${PUSH_TOKEN}` },
      );
      const openRef = `${open.host}/open/img:v1`;
      await docker(["pull", openRef]);
      assert.equal(await docker(["run", "--rm", "--network", "none", openRef]), "token\n");
      await docker(["tag", "nixoci/token:v1", `${open.host}/open/other:v1`]);
      await assert.rejects(docker(["push", `${open.host}/open/other:v1`]));
      assert.equal((await request(open.host, "GET", "/v2/open/img/manifests/v1")).status, 200);
    },
  );
});
