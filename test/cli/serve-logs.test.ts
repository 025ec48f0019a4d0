// What `nixoci serve` writes on stderr, as a user sees it (issue 13, item 12): JSON lines when stderr is not a
// terminal, text lines and a start-up banner when it is (a pseudo-terminal from script(1)); request lines with the
// client's address and user agent; a client speaking TLS to the plain-HTTP port only at debug level.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { nixoci, ROOT } from "../support/cli.js";
import { freePort } from "../support/daemons.js";
import { generateCacheKey, makeTempDir } from "../support/fixtures.js";
import { GiveUp, until } from "../support/poll.js";
import { startNixociServe, type ServeProcess } from "../support/serve.js";

const EXAMPLES = join(ROOT, "examples/packages.nix");
const TLS_TEXT =
  "client 127.0.0.1 spoke TLS to a plain-HTTP listener (docker's first try; clients need insecure-registries or --tls-verify=false)";

/** A real TLS ClientHello to the plain-HTTP port; resolves with the client's error (the answer is no TLS). */
function tlsProbe(host: string): Promise<string> {
  const [hostname, port] = host.split(":");
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: hostname, port: Number(port), rejectUnauthorized: false });
    socket.once("secureConnect", () => {
      socket.destroy();
      resolve("handshake completed");
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** Raw bytes to the port; resolves with the first line of the answer. */
function rawRequest(host: string, bytes: string): Promise<string> {
  const [hostname, port] = host.split(":");
  return new Promise((resolve, reject) => {
    let answer = "";
    const socket = netConnect(Number(port), hostname, () => socket.write(bytes));
    socket.on("data", (d) => (answer += d));
    socket.once("error", reject);
    socket.once("close", () => resolve(answer.split("\r\n")[0]));
  });
}

async function get(host: string, path: string, userAgent: string): Promise<number> {
  const res = await fetch(`http://${host}${path}`, { headers: { "user-agent": userAgent } });
  await res.arrayBuffer();
  return res.status;
}

async function stop(s: ServeProcess): Promise<void> {
  s.proc.kill("SIGTERM");
  assert.equal(await s.exited, 0);
}

/** The JSON records of a log, without their time (checked to be ISO 8601) and with durations as "MS". */
function records(log: string): Record<string, unknown>[] {
  return log
    .trimEnd()
    .split("\n")
    .map((line) => {
      const { time, ...rest } = JSON.parse(line) as Record<string, unknown>;
      assert.match(String(time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      if (typeof rest.ms === "number" && rest.ms > 0) rest.ms = "MS";
      return rest;
    });
}

/** The storage upkeep's first round is logged whenever it finishes: checked, then left out of the order. */
function withoutUpkeep<T extends Record<string, unknown>>(recs: T[]): T[] {
  const upkeep = recs.filter((r) => r.msg === "storage upkeep");
  assert.deepEqual(upkeep, [{ level: "info", msg: "storage upkeep", temporaries: [], uploads: 0 }]);
  return recs.filter((r) => r.msg !== "storage upkeep");
}

/** Text lines with their clock as "T" (checked) and request durations as "Nms". */
function textLines(log: string): string[] {
  return log
    .trimEnd()
    .split("\n")
    .map((line) => {
      assert.match(line, /^\d\d:\d\d:\d\d (DEBUG|INFO |WARN |ERROR) /);
      return `T${line.slice(8)}`.replace(/ \d+(\.\d)?ms /, " Nms ");
    });
}

const UPKEEP_TEXT = "T INFO  storage upkeep temporaries=[] uploads=0";
const textWithoutUpkeep = (lines: string[]): string[] => {
  assert.equal(lines.filter((l) => l === UPKEEP_TEXT).length, 1, lines.join("\n"));
  return lines.filter((l) => l !== UPKEEP_TEXT);
};

test("stderr not a terminal: JSON lines as before and no banner; requests name the client and its user agent; a TLS probe is not logged at info", async () => {
  const storage = makeTempDir("serve-logs-json");
  const s = await startNixociServe(storage);
  assert.equal(await tlsProbe(s.host), "ERR_SSL_WRONG_VERSION_NUMBER");
  // Other requests the parser refuses are logged as before (with the client now).
  assert.equal(await rawRequest(s.host, "BAD\x01 / HTTP/1.1\r\n\r\n"), "HTTP/1.1 400 Bad Request");
  assert.equal(await get(s.host, "/v2/", "skopeo/1.13 (logs test)"), 200);
  await until("the request logged", 10_000, () => assert.match(s.log(), /"route":"base"/));
  await stop(s);
  assert.deepEqual(withoutUpkeep(records(s.log())), [
    {
      level: "info",
      msg: "listening",
      address: s.host,
      storage,
      resolver: "store paths in /nix/store",
      binaryCache: true,
    },
    {
      level: "info",
      msg: "request",
      method: "",
      path: "",
      status: 400,
      bytes: 0,
      ms: 0,
      route: "client-error",
      error: "HPE_INVALID_METHOD",
      client: "127.0.0.1",
    },
    {
      level: "info",
      msg: "request",
      method: "GET",
      path: "/v2/",
      status: 200,
      bytes: 2,
      ms: "MS",
      route: "base",
      client: "127.0.0.1",
      userAgent: "skopeo/1.13 (logs test)",
    },
    { level: "info", msg: "shutting down", signal: "SIGTERM", builds: { running: 0, queued: 0 } },
    { level: "info", msg: "stopped" },
  ]);
});

test("a TLS ClientHello on the plain-HTTP port is one debug line naming the client (JSON and text)", async () => {
  const json = await startNixociServe(makeTempDir("serve-logs-tls"), ["--log-level", "debug"]);
  assert.equal(await tlsProbe(json.host), "ERR_SSL_WRONG_VERSION_NUMBER");
  await until("the probe logged", 10_000, () => assert.match(json.log(), /TLS/));
  await stop(json);
  assert.deepEqual(
    records(json.log()).filter((r) => r.level === "debug"),
    [{ level: "debug", msg: "client spoke TLS to a plain-HTTP listener", client: "127.0.0.1" }],
  );

  const text = await startNixociServe(makeTempDir("serve-logs-tls-text"), [
    "--log-level",
    "debug",
    "--log-format",
    "text",
  ]);
  assert.equal(await tlsProbe(text.host), "ERR_SSL_WRONG_VERSION_NUMBER");
  await until("the probe logged", 10_000, () => assert.match(text.log(), /TLS/));
  await stop(text);
  assert.deepEqual(
    textLines(text.log()).filter((l) => l.startsWith("T DEBUG")),
    [`T DEBUG ${TLS_TEXT}`],
  );
});

test("--log-format text on a pipe: one human line a record (requests: method, path, status, time, client, user agent), no banner", async () => {
  const storage = makeTempDir("serve-logs-text");
  const s = await startNixociServe(storage, ["--log-format", "text"]);
  assert.equal(await get(s.host, "/v2/", "skopeo/1.13"), 200);
  assert.equal(await get(s.host, "/v2/no-such/name/tags/list", "containerd/1.6.20 go"), 404);
  await until("the requests logged", 10_000, () => assert.match(s.log(), /NAME_UNKNOWN/));
  await stop(s);
  assert.deepEqual(textWithoutUpkeep(textLines(s.log())), [
    `T INFO  listening address=${s.host} storage=${storage} resolver="store paths in /nix/store" binaryCache=true`,
    "T INFO  GET /v2/ 200 Nms 127.0.0.1 skopeo/1.13",
    'T INFO  GET /v2/no-such/name/tags/list 404 Nms 127.0.0.1 "containerd/1.6.20 go" error=NAME_UNKNOWN',
    'T INFO  shutting down signal=SIGTERM builds={"running":0,"queued":0}',
    "T INFO  stopped",
  ]);
});

test("--log-format that is no format: a usage error naming the choices, for serve, snapshotter and image-service", () => {
  for (const cmd of [
    ["serve"],
    ["snapshotter", "--address", "/tmp/x.sock", "--root", "/tmp/x"],
    ["image-service", "--address", "/tmp/x.sock", "--containerd", "/tmp/c.sock"],
  ]) {
    const r = nixoci([...cmd, "--log-format", "yaml"]);
    assert.equal(r.stderr, 'nixoci: --log-format: unknown format "yaml" (text or json)\n', cmd[0]);
    assert.equal(r.status, 2, cmd[0]);
    const help = nixoci([cmd[0], "--help"]);
    assert.equal(help.status, 0);
    assert.match(
      help.text,
      /^ +--log-format text\|json +log lines for people \(time, level, message, key=value\)/m,
    );
  }
});

/**
 * `nixoci serve ARGS` with stderr (and stdout) on a pseudo-terminal, as from a shell: script(1) runs it and copies
 * the terminal's output to its stdout ("\r\n" line ends, turned back into "\n" here).
 */
async function serveOnTerminal(args: string[]): Promise<{
  output: () => string;
  stop: () => Promise<number | null>;
}> {
  const quote = (a: string): string => `'${a.replace(/'/g, `'\\''`)}'`;
  const cmd = ["exec", process.execPath, join(ROOT, "bin/nixoci.js"), "serve", ...args].map((a, i) =>
    i === 0 ? a : quote(a),
  );
  // stdin stays open: script(1) would pass an end of input on to the terminal.
  const script = spawn("script", ["-qec", cmd.join(" "), "/dev/null"], { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  script.stdout.on("data", (d) => (out += d));
  script.stderr.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((r) => script.once("exit", (code) => r(code)));
  const output = () => out.replace(/\r\n/g, "\n");
  try {
    await until("serve on a terminal to listen", 30_000, () => {
      if (script.exitCode !== null) throw new GiveUp(`exited with ${script.exitCode}: ${output()}`);
      assert.match(output(), / INFO {2}listening |"msg":"listening"/);
    });
  } catch (err) {
    script.kill("SIGKILL");
    throw err;
  }
  // script(1)'s child is nixoci (exec): SIGTERM it as a user's Ctrl-C or kill would reach it.
  const child = Number(readFileSync(`/proc/${script.pid}/task/${script.pid}/children`, "utf8").trim());
  return {
    output,
    stop: async () => {
      process.kill(child, "SIGTERM");
      const code = await exited;
      script.stdin.destroy();
      return code;
    },
  };
}

test("on a terminal (script(1)): a start-up banner with the real address, the resolver, storage and the key, then text logs", async () => {
  const dir = makeTempDir("serve-logs-tty");
  const storage = join(dir, "storage");
  const key = generateCacheKey("logs-test-1", dir);
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const s = await serveOnTerminal([
    "--listen",
    host,
    "--storage",
    storage,
    "--nix-file",
    EXAMPLES,
    "--sign-key",
    key.secretKeyFile,
  ]);
  assert.equal(await get(host, "/v2/", "docker/24.0.7 go/go1.20.10"), 200);
  await until("the request logged", 10_000, () => assert.match(s.output(), /GET \/v2\/ 200/));
  assert.equal(await s.stop(), 0);
  const version = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string })
    .version;
  const revision = /, revision ([0-9a-f]+)\n/.exec(s.output())?.[1];
  assert.ok(revision, s.output());
  const banner = [
    `nixoci serve ${version}: an on-demand registry of Nix package images`,
    `  listening     http://${host} (plain HTTP)`,
    `  packages      nix file ${EXAMPLES}, revision ${revision}`,
    `  storage       ${storage}`,
    `  store         /nix/store`,
    `  binary cache  http://${host}, public key ${key.publicKey}`,
    `  access        open to anyone who reaches it (--auth htpasswd:FILE asks pushes for credentials)`,
    `try:`,
    `  docker pull ${host}/shell/hello`,
    `  skopeo copy --src-tls-verify=false docker://${host}/shell/hello oci:hello:latest`,
    `  nix --extra-experimental-features nix-command copy --from http://${host} --option trusted-public-keys '${key.publicKey}' /nix/store/...`,
    `plain HTTP: docker pulls from ${host} as is; skopeo and podman need --tls-verify=false, ctr --plain-http`,
    `more at http://${host}/ (naming, the binary cache, recent images); Ctrl-C stops the server`,
  ];
  const lines = s.output().trimEnd().split("\n");
  assert.deepEqual(lines.slice(0, banner.length), banner);
  assert.deepEqual(textWithoutUpkeep(textLines(lines.slice(banner.length).join("\n"))), [
    `T INFO  listening address=${host} storage=${storage} resolver="nix file ${EXAMPLES}" binaryCache=true`,
    'T INFO  meta-package shell falls back to packages the set has packages=["bash","coreutils"] lacking=["bashInteractive"]',
    'T INFO  GET /v2/ 200 Nms 127.0.0.1 "docker/24.0.7 go/go1.20.10"',
    'T INFO  shutting down signal=SIGTERM builds={"running":0,"queued":0}',
    "T INFO  stopped",
  ]);
});

test("the banner of a server on every address, with a public host, credentials and no binary cache", async () => {
  const dir = makeTempDir("serve-logs-tty-public");
  const htpasswd = join(dir, "htpasswd");
  writeFileSync(htpasswd, "");
  const port = await freePort();
  const s = await serveOnTerminal([
    "--listen",
    `0.0.0.0:${port}`,
    "--storage",
    join(dir, "storage"),
    "--public-host",
    "192.0.2.10:5000",
    "--auth",
    `htpasswd:${htpasswd}`,
    "--auth-pull",
    "--no-binary-cache",
    "--log-format",
    "json",
  ]);
  assert.equal(await s.stop(), 0);
  const lines = s.output().trimEnd().split("\n");
  assert.deepEqual(lines.slice(0, 13), [
    `nixoci serve ${(JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version}: an on-demand registry of Nix package images`,
    `  listening     http://0.0.0.0:${port} (plain HTTP)`,
    `  packages      store paths in /nix/store`,
    `  storage       ${join(dir, "storage")}`,
    `  store         /nix/store`,
    `  binary cache  off (--no-binary-cache)`,
    `  access        pulls and pushes need credentials`,
    `try:`,
    `  docker pull 192.0.2.10:5000/HASH-NAME`,
    `  skopeo copy --src-tls-verify=false docker://192.0.2.10:5000/HASH-NAME oci:hello:latest`,
    `  (names are store path base names: HASH-NAME of a path in the store, several as NAME/NAME)`,
    `plain HTTP: docker needs { "insecure-registries": ["192.0.2.10:5000"] } in /etc/docker/daemon.json; skopeo and podman --tls-verify=false, ctr --plain-http`,
    `more at http://192.0.2.10:5000/ (naming, the binary cache, recent images); Ctrl-C stops the server`,
  ]);
  // --log-format json on a terminal: the banner is for the person, the records stay JSON.
  assert.deepEqual(withoutUpkeep(records(lines.slice(13).join("\n"))), [
    {
      level: "info",
      msg: "listening",
      address: `0.0.0.0:${port}`,
      storage: join(dir, "storage"),
      resolver: "store paths in /nix/store",
      binaryCache: false,
    },
    { level: "info", msg: "shutting down", signal: "SIGTERM", builds: { running: 0, queued: 0 } },
    { level: "info", msg: "stopped" },
  ]);
});
