// Authenticated pushes: docker-registry with htpasswd (Basic), and a token-auth front (Bearer) before it.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { parseChallenges } from "../../src/outputs/registry-auth.js";
import type { BuiltImage } from "../../src/oci/image.js";
import { parseOutputRef, writeOutput } from "../../src/outputs/outputs.js";
import { pushImage } from "../../src/outputs/push.js";
import { NixociError } from "../../src/util/errors.js";
import { makeHtpasswdLine, startRegistry, type Registry } from "../support/daemons.js";
import { makeTempDir } from "../support/fixtures.js";
import { runText } from "../support/run.js";
import { makeImage } from "../support/make-image.js";

process.env.XDG_CACHE_HOME = makeTempDir("oci-xdg");
// No credentials from the machine's own Docker config.
process.env.DOCKER_CONFIG = makeTempDir("oci-no-docker-config");

const USER = "nixoci";
const PASSWORD = "s3cret:with:colons";

function dockerConfig(entries: Record<string, unknown>): string {
  const dir = makeTempDir("oci-docker-config");
  writeFileSync(join(dir, "config.json"), JSON.stringify({ auths: entries }));
  return dir;
}

const b64 = (s: string): string => Buffer.from(s).toString("base64");

test("WWW-Authenticate parsing", () => {
  assert.deepEqual(
    parseChallenges(
      'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"',
    ),
    [
      {
        scheme: "bearer",
        params: {
          realm: "https://auth.example.com/token",
          service: "registry.example.com",
          scope: "repository:a/b:pull,push",
        },
      },
    ],
  );
  assert.deepEqual(parseChallenges('Basic realm="x", Bearer realm="y",service=z'), [
    { scheme: "basic", params: { realm: "x" } },
    { scheme: "bearer", params: { realm: "y", service: "z" } },
  ]);
  assert.deepEqual(parseChallenges('Basic realm="a \\"quoted\\" realm"'), [
    { scheme: "basic", params: { realm: 'a "quoted" realm' } },
  ]);
});

// A missing htpasswd is a failure, not a skip: this test fails, and so does startRegistry (cancelling the suite).
test("htpasswd makes the bcrypt entries the Basic-auth registry needs", () => {
  const line = makeHtpasswdLine(USER, PASSWORD);
  assert.ok(line, "no bcrypt htpasswd entry could be made: install apache2-utils (htpasswd)");
  assert.match(line, new RegExp(`^${USER}:\\$2[aby]\\$\\d{2}\\$`));
});

describe("htpasswd (Basic) registry", () => {
  let registry: Registry;
  let image: BuiltImage;
  before(async () => {
    registry = await startRegistry({ htpasswd: { user: USER, password: PASSWORD } });
    image = await makeImage();
  });
  after(async () => {
    await registry?.stop();
  });

  test("without credentials: a clear error", { timeout: 60_000 }, async () => {
    await assert.rejects(
      writeOutput(image, parseOutputRef(`docker://${registry.host}/nixoci/auth:v1`), {}),
      (err: unknown) => {
        assert.ok(err instanceof NixociError);
        assert.match(
          err.message,
          new RegExp(`^${registry.host}/nixoci/auth: authentication required \\(401 UNAUTHORIZED`),
        );
        assert.match(err.message, /--creds/);
        return true;
      },
    );
  });

  test("wrong password: authentication failed", { timeout: 60_000 }, async () => {
    await assert.rejects(
      writeOutput(image, parseOutputRef(`docker://${registry.host}/nixoci/auth:v1`), {
        creds: `${USER}:nope`,
      }),
      new RegExp(`${registry.host}/nixoci/auth: .*authentication failed`),
    );
  });

  test("with --creds", { timeout: 60_000 }, async () => {
    const r = await writeOutput(image, parseOutputRef(`docker://${registry.host}/nixoci/auth:v1`), {
      creds: `${USER}:${PASSWORD}`,
    });
    assert.equal(r.manifestDigest, image.manifest.digest);
    const info = JSON.parse(
      runText("skopeo", [
        "inspect",
        "--tls-verify=false",
        "--creds",
        `${USER}:${PASSWORD}`,
        `docker://${registry.host}/nixoci/auth:v1`,
      ]),
    ) as { Digest: string };
    assert.equal(info.Digest, image.manifest.digest);
  });

  test(
    "with DOCKER_CONFIG's config.json (auth, and username/password, and a URL key)",
    { timeout: 60_000 },
    async () => {
      for (const [i, entries] of [
        { [registry.host]: { auth: b64(`${USER}:${PASSWORD}`) } },
        { [`http://${registry.host}/v2/`]: { username: USER, password: PASSWORD } },
      ].entries()) {
        const env = { ...process.env, DOCKER_CONFIG: dockerConfig(entries) };
        const r = await pushImage(
          image,
          { registry: registry.host, repository: "nixoci/cfg", tag: `v${i}` },
          { env, pushRecord: false },
        );
        assert.equal(r.manifestDigest, image.manifest.digest);
      }
      // Through writeOutput, which reads process.env.
      const saved = process.env.DOCKER_CONFIG;
      process.env.DOCKER_CONFIG = dockerConfig({ [registry.host]: { auth: b64(`${USER}:${PASSWORD}`) } });
      try {
        await writeOutput(image, parseOutputRef(`docker://${registry.host}/nixoci/cfg:v9`), {});
      } finally {
        process.env.DOCKER_CONFIG = saved;
      }
      // A malformed auth entry is reported against the file.
      const bad = dockerConfig({ [registry.host]: { auth: b64("no-colon") } });
      await assert.rejects(
        pushImage(
          image,
          { registry: registry.host, repository: "nixoci/cfg", tag: "x" },
          { env: { DOCKER_CONFIG: bad } },
        ),
        /config\.json: auths\[.*\]\.auth is not base64 of "user:password"/,
      );
    },
  );
});

/**
 * A token-auth front for a registry, the way Docker Hub and most registries work: /v2/ requests need
 * `Authorization: Bearer <token>`, else 401 with a Bearer challenge; GET /token (with Basic credentials) hands out
 * tokens; authorized requests are forwarded to the backend registry unchanged.
 */
async function startTokenFront(backend: string): Promise<{
  host: string;
  tokenRequests: Array<{ scopes: string[]; basic: boolean }>;
  relativeLocations(): number;
  close(): Promise<void>;
}> {
  const tokens = new Set<string>();
  let relativeLocations = 0;
  const tokenRequests: Array<{ scopes: string[]; basic: boolean }> = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (url.pathname === "/token") {
      const basic = req.headers.authorization === `Basic ${b64(`${USER}:${PASSWORD}`)}`;
      tokenRequests.push({ scopes: url.searchParams.getAll("scope"), basic });
      if (!basic || url.searchParams.get("service") !== "nixoci-test") {
        res.writeHead(401, { "Content-Type": "application/json" });
        return res.end('{"details":"bad credentials"}');
      }
      const token = randomBytes(12).toString("hex");
      tokens.add(token);
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify({ access_token: token, expires_in: 300 }));
    }
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? "");
    if (!m || !tokens.has(m[1])) {
      const repo = /^\/v2\/(.+?)\/(blobs|manifests)\//.exec(url.pathname)?.[1];
      res.writeHead(401, {
        "Content-Type": "application/json",
        "WWW-Authenticate":
          `Bearer realm="http://${host}/token",service="nixoci-test"` +
          (repo ? `,scope="repository:${repo}:pull,push"` : ""),
      });
      return res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
    }
    const headers = { ...req.headers };
    delete headers.authorization;
    const [bhost, bport] = backend.split(":");
    const preq = http.request(
      { host: bhost, port: Number(bport), method: req.method, path: req.url, headers },
      (pres) => {
        // Relative Location headers (allowed by the spec; docker-registry itself sends absolute ones).
        const h = { ...pres.headers };
        if (typeof h.location === "string") {
          const rel = new URL(h.location, `http://${host}`);
          h.location = rel.pathname + rel.search;
          relativeLocations++;
        }
        res.writeHead(pres.statusCode ?? 502, h);
        pres.pipe(res);
      },
    );
    preq.on("error", () => res.destroy());
    req.pipe(preq);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    host,
    tokenRequests,
    relativeLocations: () => relativeLocations,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe("token (Bearer) authentication", () => {
  let registry: Registry;
  let front: Awaited<ReturnType<typeof startTokenFront>>;
  let image: BuiltImage;
  before(async () => {
    registry = await startRegistry();
    front = await startTokenFront(registry.host);
    image = await makeImage();
  });
  after(async () => {
    await front?.close();
    await registry?.stop();
  });

  test("fetches a token with the credentials, caches it, and pushes", { timeout: 60_000 }, async () => {
    const r = await pushImage(
      image,
      { registry: front.host, repository: "nixoci/tok", tag: "v1" },
      // Small chunks: the PATCH path too, following relative Locations.
      { creds: `${USER}:${PASSWORD}`, pushRecord: false, monolithicLimit: 1024, chunkSize: 256 << 10 },
    );
    assert.equal(r.manifestDigest, image.manifest.digest);
    assert.ok(front.relativeLocations() > image.layers.length);
    assert.ok(front.tokenRequests.every((t) => t.basic));
    assert.ok(front.tokenRequests.some((t) => t.scopes.includes("repository:nixoci/tok:pull,push")));
    // One token for the whole push (the /v2/ check has no scope; every later request shares one scope set).
    assert.ok(front.tokenRequests.length <= 2, JSON.stringify(front.tokenRequests));
    // The backend has it.
    const info = JSON.parse(
      runText("skopeo", ["inspect", "--tls-verify=false", `docker://${registry.host}/nixoci/tok:v1`]),
    ) as { Digest: string };
    assert.equal(info.Digest, image.manifest.digest);
  });

  test(
    "a cross-repository mount asks for a token with pull on the source too",
    { timeout: 60_000 },
    async () => {
      const r = await pushImage(
        image,
        { registry: front.host, repository: "nixoci/tok-copy", tag: "v1" },
        { creds: `${USER}:${PASSWORD}`, pushRecord: false, mountFrom: ["nixoci/tok"] },
      );
      assert.equal(r.mounted.length, 1 + image.layers.length);
      assert.ok(
        front.tokenRequests.some(
          (t) =>
            t.scopes.includes("repository:nixoci/tok-copy:pull,push") &&
            t.scopes.includes("repository:nixoci/tok:pull"),
        ),
        JSON.stringify(front.tokenRequests),
      );
    },
  );

  test("a refused token request names the failure", { timeout: 60_000 }, async () => {
    await assert.rejects(
      pushImage(
        image,
        { registry: front.host, repository: "nixoci/tok", tag: "v2" },
        { creds: `${USER}:wrong`, pushRecord: false },
      ),
      /authentication failed: token server http:\/\/127\.0\.0\.1:\d+ answered 401/,
    );
    await assert.rejects(
      pushImage(image, { registry: front.host, repository: "nixoci/tok", tag: "v2" }, { pushRecord: false }),
      /authentication required/,
    );
  });
});

test("docker config.json lookup ignores other hosts", async () => {
  const dir = makeTempDir("oci-cfg-other");
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "config.json"),
    JSON.stringify({ auths: { "other.example:5000": { auth: b64("a:b") } } }),
  );
  const { dockerConfigCredentials } = await import("../../src/outputs/registry-auth.js");
  assert.equal(await dockerConfigCredentials("127.0.0.1:5000", { DOCKER_CONFIG: dir }), undefined);
  assert.deepEqual(await dockerConfigCredentials("other.example:5000", { DOCKER_CONFIG: dir }), {
    username: "a",
    password: "b",
  });
});
