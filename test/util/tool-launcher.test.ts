// Filter programs started by the tool launcher (src/util/tool-launcher.ts): the bytes are the tool's own, in
// order, for many streams at once; a tool that cannot start, fails, stops reading early or is killed is told as a
// child process would tell it; and the launcher never keeps a finished process alive.
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { gunzipSync } from "node:zlib";
import { isalGzipStream } from "../../src/util/compression.js";
import {
  launcherInfo,
  launchTool,
  startToolLauncher,
  type FilterProcess,
} from "../../src/util/tool-launcher.js";
import { ROOT } from "../support/cli.js";
import { makeTempDir } from "../support/fixtures.js";
import { igzipPath, runIgzip } from "../support/isal.js";
import { until } from "../support/poll.js";

// A small process spawns its first tools itself while the launcher starts (see the last test): these tests are
// about the launcher, so it answers before any of them asks for a tool.
before(() => startToolLauncher());

/** Compressible but not trivial input: text with random runs. */
function sample(size: number, seed: number): Buffer {
  const parts: Buffer[] = [];
  let n = 0;
  for (let i = 0; n < size; i++) {
    const b = i % 3 === 0 ? randomBytes(512) : Buffer.from(`line ${seed}.${i} of the sample\n`.repeat(20));
    parts.push(b);
    n += b.length;
  }
  return Buffer.concat(parts).subarray(0, size);
}

async function compress(data: Buffer, level = 3): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from([data.subarray(0, data.length >> 1), data.subarray(data.length >> 1)]),
    isalGzipStream(igzipPath(), { level }),
    async (source: AsyncIterable<Buffer>) => {
      for await (const chunk of source) out.push(chunk);
    },
  );
  return Buffer.concat(out);
}

/** Runs `script` as an ES module in a new Node process; its exit code, stdout and stderr. */
async function runScript(
  script: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number | null; out: string; err: string; pid: number }> {
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "pipe"],
    env,
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  // No timer, no deadline: the test runner's own timeout is the bound, a hang is the failure.
  const code = await new Promise<number | null>((ok) => child.once("exit", ok));
  return { code, out, err, pid: child.pid! };
}

/** Everything a launched tool tells: its output, stdin's error, exit and close. */
function run(p: FilterProcess, input?: Buffer) {
  const out: Buffer[] = [];
  let stderr = "";
  let stdinError: NodeJS.ErrnoException | undefined;
  p.stdout.on("data", (c: Buffer) => out.push(c));
  p.stderr.setEncoding("utf8");
  p.stderr.on("data", (s: string) => (stderr += s));
  p.stdin.on("error", (e: NodeJS.ErrnoException) => (stdinError = e));
  if (input) p.stdin.end(input);
  return new Promise<{
    code: number | null;
    signal: string | null;
    out: Buffer;
    stderr: string;
    stdinError?: NodeJS.ErrnoException;
    error?: NodeJS.ErrnoException;
  }>((resolve) => {
    p.once("error", (error: NodeJS.ErrnoException) =>
      resolve({ code: null, signal: null, out: Buffer.concat(out), stderr, error }),
    );
    p.once("close", (code: number | null, signal: string | null) =>
      resolve({ code, signal, out: Buffer.concat(out), stderr, stdinError }),
    );
  });
}

test("igzip through the launcher gives igzip's own bytes, for many streams at once", async () => {
  const inputs = Array.from({ length: 8 }, (_, i) => sample(1_000_000 + i * 700_000, i));
  const outputs = await Promise.all(inputs.map((d) => compress(d)));
  for (const [i, data] of inputs.entries()) {
    const direct = runIgzip(["-c", "-n", "-3"], data);
    assert.ok(outputs[i].equals(direct), `stream ${i}: the launched igzip's bytes are igzip's`);
    assert.ok(gunzipSync(outputs[i]).equals(data), `stream ${i} round trip`);
    // -n: no name, no time; OS byte 3 (Unix).
    assert.deepEqual([...outputs[i].subarray(3, 10)], [0, 0, 0, 0, 0, 0, 3]);
  }
  // An empty input is a valid empty gzip member.
  assert.equal(gunzipSync(await compress(Buffer.alloc(0))).length, 0);
  await assert.rejects(compress(Buffer.from("x"), 4), /4 is out of range for ISA-L gzip \(0\.\.3\)/);
});

test("a tool that cannot start is an 'error' with spawn's code; through ToolStream a one-line message", async () => {
  const r = await run(launchTool("/nonexistent/igzip", ["-c"]), Buffer.from("data"));
  assert.equal(r.error?.code, "ENOENT");
  await assert.rejects(
    pipeline(Readable.from([Buffer.from("data")]), isalGzipStream("/nonexistent/igzip"), async (s) => {
      for await (const _ of s);
    }),
    /^NixociError: igzip compressor: cannot run \/nonexistent\/igzip \(is Debian's isal package installed\?\): .*ENOENT$/,
  );
});

test("a failing tool: its status and stderr; one that stops reading early: EPIPE on its input", async () => {
  const failed = await run(launchTool(igzipPath(), ["-d", "-c"]), Buffer.from("not gzip data at all\n"));
  assert.notEqual(failed.code, 0);
  assert.match(failed.stderr, /\S/);

  const input = sample(20_000_000, 7);
  const early = await run(launchTool("head", ["-c", "10"]), input);
  assert.equal(early.code, 0);
  // What it wrote, unless the failed write took the connection first: one socket carries a tool's input and
  // output, and Node destroys a socket whose write fails, dropping output still in the kernel's buffer (about 1 in
  // 10 runs here). The tools nixoci runs read their whole input, so their output is never dropped this way.
  assert.ok(
    input.subarray(0, early.out.length).equals(early.out) && early.out.length <= 10,
    `${early.out.length} bytes out, not a prefix of the input's first 10`,
  );
  if (early.out.length < 10)
    assert.equal(early.stdinError?.code, "EPIPE", "output dropped only by a failed write");
  // Input it never read: reported as a pipe reports it (EPIPE, never the socket's ECONNRESET) when the write
  // was still in flight as the tool exited; a write the socket's buffers had taken completes.
  if (early.stdinError) assert.equal(early.stdinError.code, "EPIPE");
});

test("kill() stops the tool: 'exit' with SIGKILL", async () => {
  const p = launchTool("sleep", ["60"]);
  const exited = new Promise<[number | null, string | null]>((ok) =>
    p.once("exit", (code: number | null, signal: string | null) => ok([code, signal])),
  );
  p.stdout.resume();
  // The tool runs once the launcher acknowledged it; kill() before that stops it as soon as it could start.
  setImmediate(() => p.kill("SIGKILL"));
  assert.deepEqual(await exited, [null, "SIGKILL"]);

  // And once it runs: cat has echoed its input, then is killed with its input still open.
  const cat = launchTool("cat", []);
  const echoed = new Promise<string>((ok) => cat.stdout.once("data", (d: Buffer) => ok(d.toString())));
  cat.stdin.write("ping\n");
  assert.equal(await echoed, "ping\n");
  const catExit = new Promise<[number | null, string | null]>((ok) =>
    cat.once("exit", (code: number | null, signal: string | null) => ok([code, signal])),
  );
  cat.stdout.resume();
  cat.kill("SIGKILL");
  assert.deepEqual(await catExit, [null, "SIGKILL"]);
});

test("a process that used the launcher exits by itself, and its launcher goes too, leaving no file", async () => {
  const tmp = makeTempDir("launcher-tmpdir");
  const script = `
    import { isalGzipStream } from ${JSON.stringify(join(ROOT, "dist/src/util/compression.js"))};
    import { launcherInfo, startToolLauncher } from ${JSON.stringify(join(ROOT, "dist/src/util/tool-launcher.js"))};
    import { Readable } from "node:stream";
    import { pipeline } from "node:stream/promises";
    await startToolLauncher();
    let n = 0;
    await pipeline(Readable.from([Buffer.from("hello ".repeat(1000))]), isalGzipStream(${JSON.stringify(igzipPath())}), async (s) => {
      for await (const c of s) n += c.length;
    });
    console.log(JSON.stringify({ n, launcher: await launcherInfo() }));
  `;
  const { code, out, err } = await runScript(script, { ...process.env, TMPDIR: tmp });
  assert.equal(code, 0, err);
  assert.equal(err, "");
  const report = JSON.parse(out) as { n: number; launcher?: { pid: number; socket: string } };
  assert.ok(report.n > 0);
  assert.ok(report.launcher, "the launcher ran");
  assert.ok(report.launcher.socket.startsWith("\0nixoci-launcher-"), "an abstract socket: no file");
  assert.deepEqual(readdirSync(tmp), [], "nothing in TMPDIR");
  await until("the launcher to exit", 10_000, () => {
    assert.throws(() => process.kill(report.launcher!.pid, 0), { code: "ESRCH" });
  });
});

test("a connection without the launcher's token is closed unanswered: nobody else can start tools", async () => {
  await compress(Buffer.from("start the launcher"));
  const info = await launcherInfo();
  assert.ok(info);
  for (const header of [
    { token: "0".repeat(64), id: 999, tool: "touch", args: ["/tmp/nixoci-launcher-intruder"] },
    { id: 998, tool: "touch", args: ["/tmp/nixoci-launcher-intruder"] },
  ]) {
    const sock = net.connect({ path: info.socket });
    const got: Buffer[] = [];
    sock.on("data", (d: Buffer) => got.push(d));
    sock.write(JSON.stringify(header) + "\n");
    await new Promise<void>((ok) => sock.once("close", () => ok()));
    assert.equal(Buffer.concat(got).length, 0, "no ACK");
  }
  assert.equal(existsSync("/tmp/nixoci-launcher-intruder"), false);
});

test("a small process's first tool does not wait for the launcher: spawned here, later ones by the launcher", async () => {
  // Each tool prints its parent's pid: this process for a tool spawned directly, the launcher for a launched one.
  const script = `
    import { launcherInfo, launchTool, startToolLauncher } from ${JSON.stringify(join(ROOT, "dist/src/util/tool-launcher.js"))};
    const parentOf = (p) => new Promise((ok, fail) => {
      let out = "";
      p.stdout.on("data", (d) => (out += d));
      p.once("error", fail);
      p.once("close", (code) => (code === 0 ? ok(Number(out)) : fail(new Error("exit " + code))));
      p.stdin.end();
    });
    const ppid = ["-c", "echo $PPID"];
    const first = await parentOf(launchTool("sh", ppid));
    await startToolLauncher();
    const later = await parentOf(launchTool("sh", ppid));
    console.log(JSON.stringify({ pid: process.pid, first, later, launcher: (await launcherInfo())?.pid }));
  `;
  const { code, out, err } = await runScript(script);
  assert.equal(code, 0, err);
  const r = JSON.parse(out) as { pid: number; first: number; later: number; launcher?: number };
  assert.equal(r.first, r.pid, "the first tool is this process's child");
  assert.ok(r.launcher !== undefined && r.launcher !== r.pid);
  assert.equal(r.later, r.launcher, "a tool after the launcher answered is the launcher's child");
  await until("the launcher to exit with its parent", 10_000, () => {
    assert.throws(() => process.kill(r.launcher!, 0), { code: "ESRCH" });
  });
});

test("a process whose one tool was spawned directly exits without waiting for the launcher it started", async () => {
  // The launcher started in the background holds nothing: the process ends when its own work does, and the
  // launcher (if it got as far as starting) goes with it.
  const script = `
    import { launchTool } from ${JSON.stringify(join(ROOT, "dist/src/util/tool-launcher.js"))};
    const p = launchTool("true", []);
    p.stdout.resume();
    p.stdin.end();
    p.once("close", (code) => console.log(JSON.stringify({ code })));
  `;
  const { code, out, err, pid } = await runScript(script);
  assert.equal(code, 0, err);
  assert.deepEqual(JSON.parse(out), { code: 0 });
  await until("no process left by the child", 10_000, () => {
    const left = readdirSync("/proc").filter((n) => {
      try {
        return (
          /^\d+$/.test(n) &&
          readFileSync(`/proc/${n}/stat`, "utf8").split(") ")[1].split(" ")[1] === String(pid)
        );
      } catch {
        return false;
      }
    });
    assert.deepEqual(left, []);
  });
});

test("a tool spawned directly while the launcher is awaited does not let the process exit before it answers", async () => {
  // startToolLauncher waits for the launcher; a tool asked for meanwhile is spawned from here (the launcher has not
  // answered) and ends at once. The wait must still keep the process alive until the launcher answers.
  const script = `
    import { launcherInfo, launchTool, startToolLauncher } from ${JSON.stringify(join(ROOT, "dist/src/util/tool-launcher.js"))};
    const waited = startToolLauncher();
    const p = launchTool("true", []);
    p.stdout.resume();
    p.stdin.end();
    await waited;
    console.log(JSON.stringify({ launcher: (await launcherInfo())?.pid !== undefined }));
  `;
  const { code, out, err } = await runScript(script);
  assert.equal(code, 0, err);
  assert.deepEqual(JSON.parse(out), { launcher: true });
});
