// The logger's two formats: JSON lines (as they always were) and the text lines a person reads on a terminal.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  createLogger,
  defaultLogFormat,
  parseLogFormat,
  TEXT,
  type LoggerOptions,
} from "../../src/util/logger.js";

// The text format shows local time: pinned here so the expected lines are exact.
process.env.TZ = "UTC";
const now = () => new Date("2024-05-06T07:08:09.010Z");

function capture(opts: LoggerOptions): { lines: string[]; log: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  return { lines, log: createLogger({ now, ...opts, stream: { write: (s: string) => lines.push(s) } }) };
}

test("text lines: time, level, message, then key=value, values quoted only when they need it", () => {
  const { lines, log } = capture({ format: "text", level: "debug" });
  log.debug("probe");
  log.info("listening", { address: "127.0.0.1:5000", binaryCache: true, n: 10n, skipped: undefined });
  log.warn("pull failed", { image: "nix:0/nix/store/x y", error: 'a "quoted" = thing', empty: "" });
  log.error("stop", {
    error: Object.assign(new Error("disk gone"), { code: "EIO" }),
    removed: ["a", "b"],
    msg: "spoofed",
    level: "spoofed",
  });
  log.child({ repo: "shell/hello" }).info("slow", { ms: 9000, repo: "mine" });
  assert.deepEqual(lines, [
    "07:08:09 DEBUG probe\n",
    "07:08:09 INFO  listening address=127.0.0.1:5000 binaryCache=true n=10\n",
    '07:08:09 WARN  pull failed image="nix:0/nix/store/x y" error="a \\"quoted\\" = thing" empty=""\n',
    '07:08:09 ERROR stop error="disk gone (EIO)" removed=["a","b"]\n',
    "07:08:09 INFO  slow repo=mine ms=9000\n",
  ]);
});

test("text lines never carry a control character to the terminal (C0, DEL, C1), in values, keys or messages", () => {
  const { lines, log } = capture({ format: "text" });
  log.info("evil\u001b[2Jmsg", { ua: "x\u009b31m\u007f", "k\u001bey": "v", nested: { s: "\u0085" } });
  assert.deepEqual(lines, [
    '07:08:09 INFO  evil\\u001b[2Jmsg ua="x\\u009b31m\\u007f" k\\u001bey=v nested={"s":"\\u0085"}\n',
  ]);
});

test("a record's own text line stands for its message and fields; a child's fields still follow", () => {
  const { lines, log } = capture({ format: "text" });
  const fields = { method: "GET", status: 200, [TEXT]: "GET /v2/ 200 1.0ms 127.0.0.1 curl/8\u001b" };
  log.info("request", fields);
  log.child({ server: "a" }).info("request", fields);
  assert.deepEqual(lines, [
    "07:08:09 INFO  GET /v2/ 200 1.0ms 127.0.0.1 curl/8\\u001b\n",
    "07:08:09 INFO  GET /v2/ 200 1.0ms 127.0.0.1 curl/8\\u001b server=a\n",
  ]);
  // The JSON line of the same record is as it always was: the text line is not in it.
  const json = capture({ format: "json" });
  json.log.child({ server: "a" }).info("request", fields);
  assert.deepEqual(json.lines, [
    '{"time":"2024-05-06T07:08:09.010Z","level":"info","msg":"request","server":"a","method":"GET","status":200}\n',
  ]);
});

test("JSON keeps a child's key in its place when a call overrides it (as before text lines existed)", () => {
  const { lines, log } = capture({ format: "json" });
  log.child({ a: 1, b: 2 }).info("m", { c: 3, a: 4 });
  assert.deepEqual(lines, [
    '{"time":"2024-05-06T07:08:09.010Z","level":"info","msg":"m","a":4,"b":2,"c":3}\n',
  ]);
});

test("the default format: text for a terminal, json for anything else; names parse", () => {
  assert.equal(defaultLogFormat({ write: () => true, isTTY: true }), "text");
  assert.equal(defaultLogFormat({ write: () => true }), "json");
  const tty = capture({});
  assert.equal(tty.log.format, "json");
  const lines: string[] = [];
  const log = createLogger({ now, stream: { write: (s: string) => lines.push(s), isTTY: true } });
  log.info("hello", { x: 1 });
  assert.deepEqual(lines, ["07:08:09 INFO  hello x=1\n"]);
  assert.equal(parseLogFormat("text"), "text");
  assert.equal(parseLogFormat("json"), "json");
  assert.equal(parseLogFormat("yaml"), undefined);
  assert.throws(() => createLogger({ format: "yaml" as "json" }), /^Error: logger: unknown format "yaml"$/);
});
