// Names on `nixoci serve` (issue 13, items 1 and 6), as a user meets them: the server started straight on the example
// package set (no --meta) pulls `shell/hello` with the built-in shell falling back to the packages the set has; the
// page at / offers only names that work there (`shell/` when it is on, architecture prefixes Nix builds for);
// unknown packages get a "did you mean" in the OCI error body (docker pull shows it); and skopeo list-tags lists
// the tags an on-demand name pulls by, without building it, or the pull's 404.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defaultArch } from "../../src/image/spec.js";
import { compareTags } from "../../src/oci/reference.js";
import { hashNixSources } from "../../src/resolve/nix-eval.js";
import { systemForArch } from "../../src/resolve/resolver.js";
import { ROOT } from "../support/cli.js";
import { DOCKER_CLI, startDockerd, type Dockerd } from "../support/daemons.js";
import { makeTempDir } from "../support/fixtures.js";
import { until } from "../support/poll.js";
import { runText } from "../support/run.js";
import { startNixociServe, type ServeProcess } from "../support/serve.js";

const EXAMPLES = join(ROOT, "examples/packages.nix");
const work = makeTempDir("serve-names");
const own = defaultArch();
const other = own === "amd64" ? "arm64" : "amd64";
/** Nix builds for this machine's system only (no extra-platforms, no remote builders), whatever nix.conf says. */
const NATIVE_ONLY = { NIX_CONFIG: "extra-platforms =\nbuilders =" };

let server: ServeProcess;
let dockerd: Dockerd;
const servers: ServeProcess[] = [];

async function serve(args: string[], env: NodeJS.ProcessEnv = NATIVE_ONLY): Promise<ServeProcess> {
  const s = await startNixociServe(join(work, `storage-${servers.length}`), args, { env });
  servers.push(s);
  return s;
}

function skopeo(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("skopeo", args, { encoding: "utf8", timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function listTags(host: string, name: string): { status: number | null; tags?: string[]; stderr: string } {
  const r = skopeo(["list-tags", "--tls-verify=false", `docker://${host}/${name}`]);
  if (r.status !== 0) return { status: r.status, stderr: r.stderr };
  const out = JSON.parse(r.stdout) as { Repository: string; Tags: string[] };
  assert.equal(out.Repository, `${host}/${name}`);
  return { status: 0, tags: out.Tags, stderr: r.stderr };
}

function inspect(
  host: string,
  ref: string,
): { Digest: string; Architecture: string; Labels: Record<string, string> } {
  return JSON.parse(runText("skopeo", ["inspect", "--tls-verify=false", `docker://${host}/${ref}`]));
}

async function get(host: string, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://${host}${path}`);
  return { status: res.status, body: await res.text() };
}

/** The JSON log lines of a server that have this message. */
function logged(s: ServeProcess, msg: string): Record<string, unknown>[] {
  return s
    .log()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg);
}

/**
 * Polls until the lines logged as `msg`, each cut to the fields `expected` names, are `expected`: the lines after
 * "listening" may still be in the pipe, which this process reads only while its event loop runs.
 */
async function untilLogged(s: ServeProcess, msg: string, expected: Record<string, unknown>[]): Promise<void> {
  const fields = Object.keys(expected[0] ?? {});
  await until(`"${msg}" to be logged`, 10_000, () =>
    assert.deepEqual(
      logged(s, msg).map((line) => Object.fromEntries(fields.map((f) => [f, line[f]]))),
      expected,
    ),
  );
}

before(async () => {
  [server, dockerd] = await Promise.all([serve(["--nix-file", EXAMPLES]), startDockerd()]);
});
after(async () => {
  for (const s of servers) {
    s.proc.kill("SIGTERM");
    await s.exited;
  }
  await dockerd?.stop();
});

test("started on the example set without --meta: shell/hello pulls, the built-in shell being bash and coreutils (logged)", async () => {
  const image = inspect(server.host, "shell/hello");
  assert.equal(image.Labels["dev.nixoci.packages"], "bash coreutils hello");
  await untilLogged(server, "meta-package shell falls back to packages the set has", [
    { level: "info", packages: ["bash", "coreutils"], lacking: ["bashInteractive"] },
  ]);
  dockerd.docker(["pull", "-q", `${server.host}/shell/hello`]);
  assert.equal(
    dockerd.docker(["run", "--rm", `${server.host}/shell/hello`, "bash", "-c", "hello | wc -l"]).toString(),
    "1\n",
  );
});

test("the page offers shell/ with its packages, and no architecture prefix Nix cannot build for", async () => {
  const page = await get(server.host, "/");
  assert.equal(page.status, 200);
  assert.ok(page.body.includes(`docker pull ${server.host}/shell/hello\n`), page.body);
  assert.ok(
    page.body.includes(
      `<li><code>shell</code> first (<code>${server.host}/shell/PKG</code>) is a meta-package: a shell and the core utilities (here <code>bash</code>, <code>coreutils</code>), so the image can be entered interactively.</li>`,
    ),
    page.body,
  );
  assert.ok(page.body.includes(`<li>Images are built for <code>${own}</code>.</li>`), page.body);
  assert.ok(!page.body.includes("architecture prefix"), page.body);
  assert.ok(!page.body.includes(`/${other}/`), page.body);

  // And the prefix it does not offer answers 404 naming the architecture, before any build.
  const expected = JSON.stringify({
    errors: [
      {
        code: "NAME_UNKNOWN",
        message: `this server builds no images for ${other} (it builds for ${own})`,
        detail: { architecture: other, architectures: [own] },
      },
    ],
  });
  assert.deepEqual(await get(server.host, `/v2/${other}/hello/manifests/latest`), {
    status: 404,
    body: expected,
  });
  const r = skopeo(["inspect", "--tls-verify=false", `docker://${server.host}/${other}/hello`]);
  assert.equal(r.status, 1);
  assert.match(
    r.stderr,
    new RegExp(`name unknown: this server builds no images for ${other} \\(it builds for ${own}\\)"\\n$`),
  );
  assert.deepEqual(
    logged(server, "build-start").filter((l) => l.arch === other),
    [],
  );
});

test("an architecture Nix builds for (extra-platforms) is offered on the page and pulls", async () => {
  const s = await serve(["--nix-file", EXAMPLES], {
    NIX_CONFIG: `extra-platforms = ${systemForArch(other)}\nbuilders =`,
  });
  const page = await get(s.host, "/");
  const arches = [own, other].sort();
  assert.ok(
    page.body.includes(
      `<li>An architecture prefix builds for another platform: <code>${s.host}/${other}/shell/hello</code> (${arches.map((a) => `<code>${a}</code>`).join(", ")}); without one, a multi-platform index of the architectures that have all the packages, from which clients pick their own (a client that takes a single manifest only gets the server's own, <code>${own}</code>).</li>`,
    ),
    page.body,
  );
  assert.equal(inspect(s.host, `${other}/hello`).Architecture, other);
});

test("an unknown package: the OCI error body says which, with a did you mean; docker pull shows it", async () => {
  const body = JSON.stringify({
    errors: [
      {
        code: "NAME_UNKNOWN",
        message: 'unknown package "helo" (did you mean hello?)',
        detail: { packages: ["helo"], suggestions: { helo: "hello" }, source: "nix file <server path>" },
      },
    ],
  });
  assert.deepEqual(await get(server.host, "/v2/helo/manifests/latest"), { status: 404, body });
  const pull = spawnSync(DOCKER_CLI, ["-H", `unix://${dockerd.host}`, "pull", `${server.host}/helo`], {
    encoding: "utf8",
  });
  assert.equal(pull.status, 1);
  assert.equal(
    pull.stderr,
    `Error response from daemon: repository ${server.host}/helo not found: name unknown: unknown package "helo" (did you mean hello?)\n`,
  );
  // Several: each named, each with its own suggestion when it has one.
  const several = await get(server.host, "/v2/hello/gerp/zzz/manifests/latest");
  assert.equal(several.status, 404);
  assert.equal(
    (JSON.parse(several.body) as { errors: { message: string }[] }).errors[0].message,
    'unknown packages "gerp" (did you mean grep?), "zzz"',
  );
});

test("skopeo list-tags: a name not built yet lists latest and the current revision without building it", async () => {
  const revision = await hashNixSources(EXAMPLES);
  assert.deepEqual(listTags(server.host, "grep/sed"), { status: 0, tags: [revision, "latest"], stderr: "" });
  assert.deepEqual(
    logged(server, "build-start").filter((l) => l.repo === "grep/sed"),
    [],
  );
  // Both pull, as the same image.
  const byTag = inspect(server.host, `grep/sed:${revision}`);
  assert.equal(inspect(server.host, "sed/grep:latest").Digest, byTag.Digest);
  assert.deepEqual(listTags(server.host, "grep/sed").tags, [revision, "latest"]);
  assert.deepEqual(listTags(server.host, `${own}/shell/hello`).tags, [revision, "latest"]);
});

test("skopeo list-tags of a name that would not resolve: 404 NAME_UNKNOWN with the pull's error", async () => {
  for (const name of ["helo", "hello/gerp/zzz", `${other}/hello`]) {
    const r = listTags(server.host, name);
    assert.equal(r.status, 1, name);
    assert.match(r.stderr, /fetching tags list: invalid status code from registry 404 \(Not Found\)"\n$/);
    const tags = await get(server.host, `/v2/${name}/tags/list`);
    const pull = await get(server.host, `/v2/${name}/manifests/latest`);
    assert.equal(tags.status, 404);
    assert.deepEqual(tags, pull);
  }
});

test("a nixpkgs checkout: list-tags also names the revisions built before that still pull", async () => {
  const repo = join(work, "nixpkgs");
  mkdirSync(repo);
  copyFileSync(EXAMPLES, join(repo, "default.nix"));
  const git = (...args: string[]) =>
    runText("git", ["-C", repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", ...args]);
  git("init", "-q");
  git("add", "default.nix");
  git("commit", "-q", "-m", "A");
  const a = git("rev-parse", "HEAD");
  const s = await serve(["--nixpkgs", repo]);
  assert.deepEqual(listTags(s.host, "hello").tags, [a, "latest"]);
  const built = inspect(s.host, "hello:latest");
  git("commit", "-q", "--allow-empty", "-m", "B");
  const b = git("rev-parse", "HEAD");
  await until("latest to follow the new commit", 30_000, () =>
    assert.deepEqual(listTags(s.host, "hello").tags, [a, b, "latest"].sort(compareTags)),
  );
  // A still pulls: from the cache, without a build.
  const builds = logged(s, "build-start").length;
  assert.equal(inspect(s.host, `hello:${a}`).Digest, built.Digest);
  assert.equal(logged(s, "build-start").length, builds);
  // A revision built for other packages is no tag of this name.
  assert.deepEqual(listTags(s.host, "grep").tags, [b, "latest"]);
});

test("a set with no shell at all: the built-in shell is off (a warning), the page does not offer it", async () => {
  const nixFile = join(work, "just-hello.nix");
  writeFileSync(
    nixFile,
    `{
      hello = derivation {
        name = "hello"; system = builtins.currentSystem; builder = "/bin/sh";
        args = [ "-c" "echo hi > $out" ];
      };
    }\n`,
  );
  const s = await serve(["--nix-file", nixFile]);
  await untilLogged(s, "meta-package shell is off: the set has none of its packages", [
    {
      level: "warn",
      lacking: ["bashInteractive", "bash", "busybox", "coreutils"],
      fix: "--meta shell=PKG,...",
    },
  ]);
  const page = await get(s.host, "/");
  assert.ok(page.body.includes(`docker pull ${s.host}/hello\n`), page.body);
  assert.ok(!page.body.includes("shell"), page.body);
  // `shell` is then a package name like any other.
  const r = await get(s.host, "/v2/shell/hello/manifests/latest");
  assert.equal(r.status, 404);
  assert.equal(
    (JSON.parse(r.body) as { errors: { message: string }[] }).errors[0].message,
    'unknown package "shell"',
  );
});
