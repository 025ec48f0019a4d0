// nixoci serve end to end, as a user runs it: a child process serving the example package set, pulled by
// skopeo, ctr and docker; pushed to by skopeo and nixoci build; used as a binary cache by nix itself.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateCacheKey } from "../support/fixtures.js";
import { run, runText, nixCopyRequiringSigs } from "../support/run.js";
import { nixociOk, ROOT } from "../support/cli.js";
import { startContainerd, startDockerd, type Containerd, type Dockerd } from "../support/daemons.js";
import { startNixociServe, TWENTY_PACKAGES, type ServeProcess } from "../support/serve.js";

const EXAMPLES = join(ROOT, "examples/packages.nix");
const work = mkdtempSync(join(tmpdir(), "nixoci-serve-test-"));
const storage = join(work, "storage");
const key = generateCacheKey("serve-test-1", work);
let server: ServeProcess;
let containerd: Containerd;
let dockerd: Dockerd;

/** The server the tests here share: the example packages, a `shell` meta-image, a signed binary cache. */
function startServe(extra: string[] = []): Promise<ServeProcess> {
  return startNixociServe(storage, [
    "--nix-file",
    EXAMPLES,
    "--meta",
    "shell=bash,coreutils",
    "--sign-key",
    key.secretKeyFile,
    ...extra,
  ]);
}

async function stopServe(s: typeof server): Promise<number | null> {
  const done = new Promise<number | null>((r) => s.proc.once("exit", (code) => r(code)));
  s.proc.kill("SIGTERM");
  return done;
}

function http(
  method: string,
  host: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  const [hostname, port] = host.split(":");
  return new Promise((resolve, reject) => {
    const req = request({ hostname, port: Number(port), method, path, headers }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

async function metric(host: string, name: string): Promise<number> {
  const text = (await http("GET", host, "/metrics")).body;
  const line = text
    .split("\n")
    .find((l) => l.startsWith(name + " ") || (l.startsWith(name + "{") && l.includes(name)));
  return line ? Number(line.split(" ").pop()) : 0;
}

before(async () => {
  [server, containerd, dockerd] = await Promise.all([startServe(), startContainerd(), startDockerd()]);
});
after(async () => {
  if (server && server.proc.exitCode === null) await stopServe(server);
  await Promise.allSettled([containerd?.stop(), dockerd?.stop()]);
  run("chmod", ["-R", "u+w", work]);
  rmSync(work, { recursive: true, force: true });
});

test("images of 1, 5 and 20 packages: skopeo inspects and copies them; layers are shared", () => {
  for (const pkgs of [["hello"], ["hello", "grep", "sed", "awk", "bash"], TWENTY_PACKAGES]) {
    const ref = `docker://${server.host}/${pkgs.join("/")}:latest`;
    const inspect = JSON.parse(runText("skopeo", ["inspect", "--tls-verify=false", ref]));
    assert.equal(inspect.Labels["dev.nixoci.packages"], [...pkgs].sort().join(" "));
    const out = join(work, `copy-${pkgs.length}`);
    run("skopeo", ["copy", "--src-tls-verify=false", ref, `oci:${out}:x`]);
    assert.equal(JSON.parse(runText("skopeo", ["inspect", `oci:${out}:x`])).Digest, inspect.Digest);
  }
  // Order and duplicates do not matter: the same image.
  const a = JSON.parse(
    runText("skopeo", ["inspect", "--tls-verify=false", `docker://${server.host}/grep/hello:latest`]),
  );
  const b = JSON.parse(
    runText("skopeo", ["inspect", "--tls-verify=false", `docker://${server.host}/hello/grep/hello:latest`]),
  );
  assert.equal(a.Digest, b.Digest);
});

test("ctr and docker pull images of 1, 5 and 20 packages and run them", () => {
  for (const pkgs of [["hello"], ["hello", "grep", "sed", "awk", "bash"], TWENTY_PACKAGES]) {
    const ref = `${server.host}/${pkgs.join("/")}:latest`;
    containerd.ctr(["images", "pull", "--plain-http", ref]);
    const id = `serve-${pkgs.length}`;
    assert.equal(
      containerd.ctr(["run", "--rm", ref, id, "/bin/hello"]).toString().trim(),
      "Hello from a Nix image served by nixoci!",
    );
    dockerd.docker(["pull", ref]);
    assert.equal(
      dockerd.docker(["run", "--rm", "--network", "none", ref, "/bin/hello"]).toString().trim(),
      "Hello from a Nix image served by nixoci!",
    );
  }
  const bashRef = `${server.host}/hello/bash:latest`;
  containerd.ctr(["images", "pull", "--plain-http", bashRef]);
  assert.equal(
    containerd
      .ctr(["run", "--rm", bashRef, "serve-bash", "/bin/bash", "-c", "echo $((6*7))"])
      .toString()
      .trim(),
    "42",
  );
  dockerd.docker(["pull", `${server.host}/shell/hello`]);
  const out = dockerd
    .docker([
      "run",
      "--rm",
      "--network",
      "none",
      `${server.host}/shell/hello`,
      "/bin/sh",
      "-c",
      "hello; ls /bin | wc -l",
    ])
    .toString();
  assert.match(out, /^Hello from a Nix image served by nixoci!\n\d+\n$/);
});

test("identical concurrent requests coalesce into one build", async () => {
  const name = "/v2/cat/cut/date/hello/manifests/latest";
  const before = await metric(server.host, 'nixoci_image_builds_total{result="success"}');
  const accept = { Accept: "application/vnd.oci.image.manifest.v1+json" };
  const results = await Promise.all(Array.from({ length: 10 }, () => http("GET", server.host, name, accept)));
  assert.ok(
    results.every((r) => r.status === 200),
    results.map((r) => r.status).join(","),
  );
  assert.equal(new Set(results.map((r) => r.headers["docker-content-digest"])).size, 1);
  assert.equal(await metric(server.host, 'nixoci_image_builds_total{result="success"}'), before + 1);
  assert.ok((await metric(server.host, 'nixoci_image_cache_total{result="coalesced"}')) >= 1);
});

test("unknown packages are a 404 naming them; malformed requests get the spec's errors", async () => {
  const unknown = await http("GET", server.host, "/v2/hello/no-such-package/manifests/latest");
  assert.equal(unknown.status, 404);
  assert.match(unknown.body, /NAME_UNKNOWN/);
  assert.match(unknown.body, /no-such-package/);
  const cases: [string, string, number, RegExp?][] = [
    ["GET", "/v2/Hello/manifests/latest", 400, /NAME_INVALID/],
    ["GET", "/v2/hello/../etc/manifests/latest", 404],
    ["GET", "/v2/hello/%2e%2e/manifests/latest", 404],
    ["GET", "/v2/hello/blobs/sha256:xyz", 400, /DIGEST_INVALID/],
    ["GET", "/v2/hello/manifests/sha256:0000", 400, /DIGEST_INVALID/],
    ["GET", `/v2/hello/blobs/sha256:${"0".repeat(64)}`, 404, /BLOB_UNKNOWN/],
    ["GET", "/v2/hello/manifests/bad!tag", 404, /MANIFEST_UNKNOWN/],
    ["GET", "/aaaa.narinfo", 404],
  ];
  for (const [method, path, status, code] of cases) {
    const r = await http(method, server.host, path);
    assert.equal(r.status, status, `${method} ${path}: ${r.status} ${r.body}`);
    if (code) assert.match(r.body, code, `${method} ${path}`);
  }
  const huge = await http("GET", server.host, "/v2/", { "X-Huge": "x".repeat(64 << 10) }).catch(() => ({
    status: 431,
  }));
  assert.equal(huge.status, 431);
  // Range out of bounds on a real blob.
  const manifest = JSON.parse(
    (
      await http("GET", server.host, "/v2/hello/manifests/latest", {
        Accept: "application/vnd.oci.image.manifest.v1+json",
      })
    ).body,
  );
  const layer = manifest.layers[0];
  const range = await http("GET", server.host, `/v2/hello/blobs/${layer.digest}`, {
    Range: `bytes=${layer.size + 10}-${layer.size + 20}`,
  });
  assert.equal(range.status, 416);
  const ok = await http("GET", server.host, `/v2/hello/blobs/${layer.digest}`, { Range: "bytes=0-9" });
  assert.equal(ok.status, 206);
  assert.equal(ok.headers["content-range"], `bytes 0-9/${layer.size}`);
});

test("pushes from skopeo and nixoci build; the binary cache endpoint serves nix copy with signatures", () => {
  const hello = runText("nix-build", ["--no-out-link", EXAMPLES, "-A", "hello"]);
  const layout = join(work, "push-layout");
  nixociOk([
    "build",
    "-q",
    "--entrypoint",
    "/bin/hello",
    hello,
    "-o",
    `oci:${layout}:v1`,
    "-o",
    `docker://${server.host}/pushed/by-nixoci:v1`,
  ]);
  run("skopeo", [
    "copy",
    "--dest-tls-verify=false",
    `oci:${layout}:v1`,
    `docker://${server.host}/pushed/by-skopeo:v1`,
  ]);
  for (const repo of ["pushed/by-nixoci", "pushed/by-skopeo"]) {
    const ref = `${server.host}/${repo}:v1`;
    containerd.ctr(["images", "pull", "--plain-http", ref]);
    assert.equal(
      containerd
        .ctr(["run", "--rm", ref, `run-${repo.replace("/", "-")}`])
        .toString()
        .trim(),
      "Hello from a Nix image served by nixoci!",
    );
  }
  const root = join(work, "nixroot");
  nixCopyRequiringSigs(`http://${server.host}`, root, key.publicKey, [hello]);
  for (const p of runText("nix-store", ["-qR", hello]).split("\n")) {
    assert.ok(run("nix-store", ["--dump", join(root, p)]).equals(run("nix-store", ["--dump", p])), p);
  }
  const other = generateCacheKey("not-the-server-1", work);
  assert.throws(() =>
    nixCopyRequiringSigs(`http://${server.host}`, join(work, "nixroot2"), other.publicKey, [hello]),
  );
});

test("the manifest cache survives a restart: a cached image is served without building; SIGTERM exits cleanly", async () => {
  const name = "/v2/hello/grep/sed/awk/bash/manifests/latest";
  assert.equal(await stopServe(server), 0);
  server = await startServe();
  const head = await http("HEAD", server.host, name, {
    Accept: "application/vnd.oci.image.manifest.v1+json",
  });
  assert.equal(head.status, 200);
  assert.match(String(head.headers["docker-content-digest"]), /^sha256:/);
  assert.equal(await metric(server.host, 'nixoci_image_builds_total{result="success"}'), 0);
  assert.ok((await metric(server.host, 'nixoci_image_cache_total{result="hit"}')) >= 1);
  const page = await http("GET", server.host, "/");
  assert.equal(page.status, 200);
  assert.match(page.body, /docker pull/);
  assert.match(page.body, /hello\/grep|awk\/bash/);
});

test("--auth htpasswd: unauthenticated push is refused, pull stays open", async () => {
  const htpasswd = join(work, "htpasswd");
  writeFileSync(htpasswd, runText("htpasswd", ["-Bbn", "alice", "secret"]) + "\n");
  await stopServe(server);
  server = await startServe(["--auth", `htpasswd:${htpasswd}`]);
  const post = await http("POST", server.host, "/v2/pushed/x/blobs/uploads/");
  assert.equal(post.status, 401);
  assert.match(String(post.headers["www-authenticate"]), /Basic|Bearer/);
  const pull = await http("GET", server.host, "/v2/hello/manifests/latest", {
    Accept: "application/vnd.oci.image.manifest.v1+json",
  });
  assert.equal(pull.status, 200);
  const hello = runText("nix-build", ["--no-out-link", EXAMPLES, "-A", "hello"]);
  nixociOk([
    "build",
    "-q",
    hello,
    "--creds",
    "alice:secret",
    "-o",
    `docker://${server.host}/pushed/authed:v1`,
  ]);
});
