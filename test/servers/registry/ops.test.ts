// Metrics (Prometheus text format 0.0.4), structured logs, and the operational routes: /healthz, /metrics and
// the HTML index page (well-formed, self-contained, every untrusted string escaped).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createLogger, parseLogLevel } from "../../../src/util/logger.js";
import { logRequest } from "../../../src/servers/registry/request-log.js";
import { Metrics, METRICS_CONTENT_TYPE, registryMetrics } from "../../../src/servers/registry/metrics.js";
import {
  escapeHtml,
  opsRoutes,
  requestObserver,
  type OpsRoutesOptions,
} from "../../../src/servers/registry/ops.js";

// --- A strict reader of the text exposition format, to check what render() writes. ---

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Family {
  help: string;
  type: string;
  samples: Sample[];
}

function parseLabels(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/y;
  let m: RegExpExecArray | null;
  while (re.lastIndex < s.length && (m = re.exec(s))) {
    assert.ok(!(m[1] in out), `label ${m[1]} repeated`);
    out[m[1]] = m[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
  }
  assert.equal(re.lastIndex, s.length, `malformed labels {${s}}`);
  return out;
}

function parseExposition(text: string): Map<string, Family> {
  assert.ok(text.endsWith("\n"), "ends with a newline");
  const families = new Map<string, Family>();
  let current: Family | undefined;
  let currentName = "";
  for (const line of text.slice(0, -1).split("\n")) {
    if (line === "") continue; // the format allows empty lines (prom-client writes one between families)
    let m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      assert.ok(!families.has(m[1]), `${m[1]} declared twice`);
      currentName = m[1];
      current = { help: m[2], type: "", samples: [] };
      families.set(m[1], current);
      continue;
    }
    m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (m) {
      assert.equal(m[1], currentName, "TYPE follows its HELP");
      current!.type = m[2];
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `malformed line ${JSON.stringify(line)}`);
    const [, name, labels, value] = m;
    assert.ok(current, "sample before any HELP");
    const suffixes = current.type === "histogram" ? ["_bucket", "_sum", "_count"] : [""];
    assert.ok(
      suffixes.some((suf) => name === currentName + suf),
      `${name} belongs to ${currentName}`,
    );
    const v = value === "+Inf" ? Infinity : value === "-Inf" ? -Infinity : Number(value);
    // Prometheus reads values with Go's ParseFloat: NaN in any case (prom-client writes "Nan").
    assert.ok(!Number.isNaN(v) || /^nan$/i.test(value), `value ${value}`);
    current.samples.push({ name, labels: labels ? parseLabels(labels) : {}, value: v });
  }
  return families;
}

function sampleValue(
  f: Family | undefined,
  name: string,
  labels: Record<string, string>,
): number | undefined {
  // Label order does not matter to Prometheus (prom-client writes `le` first).
  const key = (l: Record<string, string>): string => JSON.stringify(Object.entries(l).sort());
  return f?.samples.find((s) => s.name === name && key(s.labels) === key(labels))?.value;
}

test("metrics render as text format 0.0.4 with the declared labels and prom-client's process metrics", async () => {
  const m = new Metrics();
  const c = m.counter("t_requests_total", "Requests.\nSecond line with a \\ backslash.", ["method", "code"]);
  const h = m.histogram("t_duration_seconds", "Durations.", ["route"], [0.1, 0.5, 1]);
  c.inc({ method: "GET", code: "200" });
  c.inc({ code: 200, method: "GET" }, 2);
  c.inc({ method: 'we"ird\\\nvalue', code: "500" });
  for (const v of [0.05, 0.1, 0.3, 0.7, 2, 5]) h.observe({ route: "manifest" }, v);

  const text = await m.render();
  const fams = parseExposition(text);
  assert.equal(fams.get("t_requests_total")!.help, "Requests.\\nSecond line with a \\\\ backslash.");
  assert.equal(fams.get("t_requests_total")!.type, "counter");
  assert.equal(
    sampleValue(fams.get("t_requests_total"), "t_requests_total", { method: "GET", code: "200" }),
    3,
  );
  assert.equal(
    sampleValue(fams.get("t_requests_total"), "t_requests_total", { method: 'we"ird\\\nvalue', code: "500" }),
    1,
  );
  const hist = fams.get("t_duration_seconds")!;
  assert.deepEqual(
    hist.samples.filter((s) => s.name === "t_duration_seconds_bucket").map((b) => [b.labels.le, b.value]),
    [
      ["0.1", 2],
      ["0.5", 3],
      ["1", 4],
      ["+Inf", 6],
    ],
  );
  assert.equal(sampleValue(hist, "t_duration_seconds_count", { route: "manifest" }), 6);
  // What operators expect from any daemon: CPU, memory, file descriptors, event-loop lag, heap.
  for (const name of [
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "nodejs_eventloop_lag_seconds",
    "nodejs_heap_size_used_bytes",
  ])
    assert.ok(fams.has(name), `${name} is exported`);
  assert.ok(sampleValue(fams.get("process_resident_memory_bytes"), "process_resident_memory_bytes", {})! > 0);
  // Without them: only the daemon's own.
  const bare = new Metrics({ processMetrics: false });
  bare.gauge("t_in_flight", "In flight.").inc();
  assert.deepEqual([...parseExposition(await bare.render()).keys()], ["t_in_flight"]);
});

test("metric misuse is an error, not a silent new series", () => {
  const m = new Metrics({ processMetrics: false });
  const c = m.counter("x_total", "X.", ["a"]);
  assert.throws(() => c.inc({ b: "1" }), /label/);
  assert.throws(() => c.inc({ a: "1" }, -1), /decrease/);
  assert.throws(() => m.counter("x_total", "again"), /already been registered/);
  assert.throws(() => m.counter("bad-name", "X."), /Invalid metric name/);
  assert.throws(() => m.histogram("h", "H.", ["le"]), /reserved/);
});

test("registryMetrics has the standard set, and counts requests as the server reports them", async () => {
  const m = registryMetrics();
  m.observeRequest({ method: "GET", route: "manifest", status: 200, bytes: 1234, durationMs: 12 });
  m.observeRequest({ method: "GET", route: "manifest", status: 200, bytes: 66, durationMs: 3000 });
  m.observeRequest({ method: "BREW", route: "other", status: 405, bytes: 0, durationMs: 1 });
  m.imageCache.inc({ result: "hit" });
  m.imageBuilds.inc({ result: "success" });
  m.imageBuildDuration.observe({}, 42);
  m.binaryCacheBytes.inc({}, 500);
  m.buildsInProgress.inc();
  const fams = parseExposition(await m.render());
  const types: Record<string, string> = {
    nixoci_http_requests_total: "counter",
    nixoci_http_request_duration_seconds: "histogram",
    nixoci_http_response_bytes_total: "counter",
    nixoci_image_builds_total: "counter",
    nixoci_image_build_duration_seconds: "histogram",
    nixoci_image_cache_total: "counter",
    nixoci_binary_cache_bytes_total: "counter",
    nixoci_builds_in_progress: "gauge",
  };
  for (const [name, type] of Object.entries(types)) assert.equal(fams.get(name)?.type, type, name);
  const req = fams.get("nixoci_http_requests_total");
  assert.equal(
    sampleValue(req, "nixoci_http_requests_total", { method: "GET", route: "manifest", status: "200" }),
    2,
  );
  assert.equal(
    sampleValue(req, "nixoci_http_requests_total", { method: "OTHER", route: "other", status: "405" }),
    1,
  );
  assert.equal(
    sampleValue(fams.get("nixoci_http_response_bytes_total"), "nixoci_http_response_bytes_total", {
      route: "manifest",
    }),
    1300,
  );
  const dur = fams.get("nixoci_http_request_duration_seconds");
  assert.equal(
    sampleValue(dur, "nixoci_http_request_duration_seconds_bucket", { route: "manifest", le: "0.025" }),
    1,
  );
  assert.equal(
    sampleValue(dur, "nixoci_http_request_duration_seconds_bucket", { route: "manifest", le: "+Inf" }),
    2,
  );
  assert.ok(
    Math.abs(sampleValue(dur, "nixoci_http_request_duration_seconds_sum", { route: "manifest" })! - 3.012) <
      1e-9,
  );
  const cache = fams.get("nixoci_image_cache_total");
  assert.equal(sampleValue(cache, "nixoci_image_cache_total", { result: "hit" }), 1);
  // Known outcomes are exported at 0 before they happen.
  assert.equal(sampleValue(cache, "nixoci_image_cache_total", { result: "coalesced" }), 0);
  assert.equal(
    sampleValue(fams.get("nixoci_image_builds_total"), "nixoci_image_builds_total", { result: "failure" }),
    0,
  );
  assert.equal(
    sampleValue(fams.get("nixoci_binary_cache_bytes_total"), "nixoci_binary_cache_bytes_total", {}),
    500,
  );
  assert.equal(sampleValue(fams.get("nixoci_builds_in_progress"), "nixoci_builds_in_progress", {}), 1);
  assert.equal(
    sampleValue(
      fams.get("nixoci_image_build_duration_seconds"),
      "nixoci_image_build_duration_seconds_bucket",
      {
        le: "60",
      },
    ),
    1,
  );
});

test("logs are one JSON object per line with time, level and msg first", () => {
  const lines: string[] = [];
  const stream = { write: (s: string) => lines.push(s) };
  const now = () => new Date("2024-05-06T07:08:09.010Z");
  const log = createLogger({ level: "info", stream, now });
  log.debug("hidden");
  log.info("request", { method: "GET", path: "/v2/", status: 200, bytes: 10, ms: 1.5 });
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = cyclic;
  log.error("boom", {
    err: Object.assign(new Error("bad\nthing"), { code: "EBAD" }),
    n: 10n,
    cyclic,
    level: "spoofed",
    msg: "spoofed",
  });
  log.child({ repo: "shell/hello" }).warn("slow", { ms: 9000 });
  assert.equal(lines.length, 3);
  for (const l of lines) {
    assert.ok(l.endsWith("\n") && !l.slice(0, -1).includes("\n"), "one line each");
  }
  const [a, b, c] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(Object.keys(a).slice(0, 3), ["time", "level", "msg"]);
  assert.deepEqual(a, {
    time: "2024-05-06T07:08:09.010Z",
    level: "info",
    msg: "request",
    method: "GET",
    path: "/v2/",
    status: 200,
    bytes: 10,
    ms: 1.5,
  });
  assert.equal(b.level, "error");
  assert.equal(b.msg, "boom");
  assert.deepEqual(b.err, { name: "Error", message: "bad\nthing", code: "EBAD" });
  assert.equal(b.n, "10");
  assert.deepEqual(b.cyclic, { a: 1, self: "[circular]" });
  assert.deepEqual(c, {
    time: "2024-05-06T07:08:09.010Z",
    level: "warn",
    msg: "slow",
    repo: "shell/hello",
    ms: 9000,
  });

  const quiet: string[] = [];
  createLogger({ level: "silent", stream: { write: (s: string) => quiet.push(s) } }).error("x");
  assert.deepEqual(quiet, []);
  assert.equal(parseLogLevel("warn"), "warn");
  assert.equal(parseLogLevel("loud"), undefined);

  // Request lines, as the server's onRequest reports them.
  lines.length = 0;
  logRequest(log, {
    method: "GET",
    path: "/v2/x/manifests/latest",
    route: "manifest",
    status: 503,
    bytes: 0,
    durationMs: 2.25,
    repo: "x",
    error: new Error("no"),
  });
  logRequest(log, {
    method: "GET",
    path: "/" + "a".repeat(5000),
    route: "other",
    status: 404,
    bytes: 9,
    durationMs: 1,
  });
  const [e, long] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(e, {
    time: "2024-05-06T07:08:09.010Z",
    level: "error",
    msg: "request",
    method: "GET",
    path: "/v2/x/manifests/latest",
    status: 503,
    bytes: 0,
    ms: 2.25,
    route: "manifest",
    repo: "x",
    error: "no",
  });
  assert.equal(long.level, "info");
  assert.ok((long.path as string).length < 600);
});

test("request lines in text: method, path, status, duration, client, user agent (clipped, quoted, escaped)", () => {
  const lines: string[] = [];
  const now = () => new Date(2024, 4, 6, 7, 8, 9);
  const log = createLogger({
    level: "debug",
    format: "text",
    stream: { write: (s: string) => lines.push(s) },
    now,
  });
  const ua = `evil\u009b2J ${"x".repeat(300)}`;
  logRequest(log, {
    method: "GET",
    path: "/v2/x/blobs/sha256:ab",
    route: "blob",
    status: 200,
    bytes: 5,
    durationMs: 1234.5,
    client: "::1",
    userAgent: ua,
  });
  logRequest(log, {
    method: "",
    path: "",
    route: "client-error",
    status: 400,
    bytes: 0,
    durationMs: 0,
    error: "HPE_INVALID_METHOD",
  });
  logRequest(log, {
    method: "",
    path: "",
    route: "tls-probe",
    status: 400,
    bytes: 0,
    durationMs: 0,
    error: "HPE_INVALID_METHOD",
    client: "10.1.2.3",
  });
  assert.deepEqual(lines, [
    `07:08:09 INFO  GET /v2/x/blobs/sha256:ab 200 1235ms ::1 "evil\\u009b2J ${"x".repeat(248)}…"\n`,
    "07:08:09 INFO  - - 400 0.0ms - - error=HPE_INVALID_METHOD\n",
    "07:08:09 DEBUG client 10.1.2.3 spoke TLS to a plain-HTTP listener (docker's first try; clients need insecure-registries or --tls-verify=false)\n",
  ]);
});

// --- The routes, on a real HTTP server. ---

const servers: http.Server[] = [];
after(() => {
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
});

async function serveOps(opts: OpsRoutesOptions): Promise<string> {
  const routes = opsRoutes(opts);
  const server = http.createServer((req, res) => {
    if (!routes(req, res)) {
      res.writeHead(418);
      res.end();
    }
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A request with node:http (fetch cannot set Host). */
function get(
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: init.method ?? "GET", headers: init.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          text: Buffer.concat(chunks).toString("utf8"),
        }),
      );
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(init.body);
  });
}

/**
 * A small well-formedness check of the page: every non-void element closed in order, attributes quoted,
 * no scripts, no external resources, no raw "<" or ">" in text.
 */
function checkHtml(html: string): void {
  assert.match(html, /^<!DOCTYPE html>\n<html lang="en">/);
  const VOID = new Set(["meta", "link", "br", "hr", "img", "input", "wbr"]);
  const stack: string[] = [];
  const body = html.replace(/^<!DOCTYPE html>/, "").replace(/<style>[^<]*<\/style>/, "<style></style>");
  const re = /<(\/?)([a-z][a-z0-9]*)((?:\s+[a-z-]+(?:="[^"<>]*")?)*)\s*>/gy;
  let pos = 0;
  while (pos < body.length) {
    const lt = body.indexOf("<", pos);
    const text = body.slice(pos, lt < 0 ? body.length : lt);
    assert.ok(!text.includes(">"), `raw ">" in text near ${JSON.stringify(text.slice(0, 60))}`);
    assert.ok(!/&(?!(#\d+|[a-z]+);)/.test(text), `unescaped "&" in ${JSON.stringify(text.slice(0, 60))}`);
    if (lt < 0) break;
    re.lastIndex = lt;
    const m = re.exec(body);
    assert.ok(m, `malformed tag at ${JSON.stringify(body.slice(lt, lt + 60))}`);
    const [, close, name, attrs] = m;
    assert.notEqual(name, "script");
    assert.ok(!/\s(src|href)="(https?:)?\/\//.test(attrs), `external resource in <${name}${attrs}>`);
    assert.ok(!/\son[a-z]+=/.test(attrs), "event handler attribute");
    if (close) assert.equal(stack.pop(), name, `</${name}> closes the open element`);
    else if (!VOID.has(name)) stack.push(name);
    pos = re.lastIndex;
  }
  assert.deepEqual(stack, [], "every element closed");
}

test("/healthz answers 200 or 503 as health() says", async () => {
  let healthy = true;
  const base = await serveOps({
    metrics: new Metrics(),
    health: () => (healthy ? { ok: true } : { ok: false, details: { storage: "unwritable" } }),
    recentImages: () => [],
  });
  let r = await get(`${base}/healthz`);
  assert.equal(r.status, 200);
  assert.match(r.headers["content-type"]!, /^application\/json/);
  assert.deepEqual(JSON.parse(r.text), { status: "ok" });
  healthy = false;
  r = await get(`${base}/healthz`);
  assert.equal(r.status, 503);
  assert.deepEqual(JSON.parse(r.text), { status: "unavailable", details: { storage: "unwritable" } });
  const head = await get(`${base}/healthz`, { method: "HEAD" });
  assert.equal(head.status, 503);
  assert.equal(head.text, "");

  const throwing = await serveOps({
    metrics: new Metrics(),
    health: () => {
      throw new Error("db gone");
    },
    recentImages: () => [],
  });
  r = await get(`${throwing}/healthz`);
  assert.equal(r.status, 503);
  assert.equal(JSON.parse(r.text).status, "unavailable");
});

test("/metrics serves the registry's metrics; other methods are 405; other paths fall through", async () => {
  const metrics = registryMetrics();
  const observe = requestObserver({ metrics });
  const base = await serveOps({ metrics, health: () => ({ ok: true }), recentImages: () => [] });
  observe({ method: "GET", path: "/v2/", route: "base", status: 200, bytes: 2, durationMs: 1 });
  let r = await get(`${base}/metrics`);
  assert.equal(r.status, 200);
  assert.equal(r.headers["content-type"], METRICS_CONTENT_TYPE);
  const fams = parseExposition(r.text);
  assert.equal(
    sampleValue(fams.get("nixoci_http_requests_total"), "nixoci_http_requests_total", {
      method: "GET",
      route: "base",
      status: "200",
    }),
    1,
  );
  observe({ method: "GET", path: "/v2/", route: "base", status: 200, bytes: 2, durationMs: 1 });
  r = await get(`${base}/metrics?x=1`);
  assert.match(r.text, /^nixoci_http_requests_total\{method="GET",route="base",status="200"\} 2$/m);

  for (const path of ["/metrics", "/healthz", "/"]) {
    const p = await get(`${base}${path}`, { method: "POST", body: "x" });
    assert.equal(p.status, 405, path);
  }
  for (const path of ["/v2/", "/metrics/", "/index.html", "/healthz/x"]) {
    assert.equal((await get(`${base}${path}`)).status, 418, path);
  }
});

test("the index page explains pulling and the binary cache, lists images, and escapes everything", async () => {
  const evil = `<script>alert("x")</script>`;
  const base = await serveOps({
    metrics: new Metrics(),
    health: () => ({ ok: true }),
    recentImages: () => [
      {
        name: "shell/hello",
        tag: "latest",
        digest: "sha256:" + "ab".repeat(32),
        builtAt: "2024-05-06T07:08:09Z",
        packages: ["hello", "bash"],
      },
      {
        name: evil,
        tag: `"><img src=x onerror=alert(1)>`,
        digest: `sha256:${evil}`,
        builtAt: evil,
        packages: [evil],
      },
    ],
    title: `nixoci & <friends>`,
    packagesHelp: `Packages come from nixpkgs <unstable> & "friends".\n\nSecond paragraph.`,
    publicKey: "cache.example-1:AAAA+/BBBB=",
    naming: {
      metaPackages: { shell: ["bash", "coreutils"], py: ["python3Packages.requests", evil] },
      prefixArchitectures: ["amd64", "arm64"],
      defaultArch: "amd64",
    },
  });
  const r = await get(`${base}/`, { headers: { Host: "registry.example:5000" } });
  assert.equal(r.status, 200);
  assert.equal(r.headers["content-type"], "text/html; charset=utf-8");
  assert.match(String(r.headers["content-security-policy"]), /default-src 'none'/);
  const html = r.text;
  checkHtml(html);
  assert.ok(!html.includes("<script"), "no script element");
  assert.ok(!html.includes("<img"), "no injected element");
  assert.ok(html.includes(escapeHtml(evil)));
  assert.ok(html.includes("&#60;script&#62;alert(&#34;x&#34;)&#60;/script&#62;"));
  assert.ok(html.includes("<title>nixoci &#38; &#60;friends&#62;</title>"));
  assert.ok(html.includes("nixpkgs &#60;unstable&#62; &#38; &#34;friends&#34;."));
  // What a user needs, with the host the request came to.
  for (const needle of [
    "docker pull registry.example:5000/shell/hello",
    "skopeo copy --src-tls-verify=false docker://registry.example:5000/shell/hello",
    "ctr images pull --plain-http registry.example:5000/shell/hello",
    "copy --from http://registry.example:5000",
    "trusted-public-keys &#39;cache.example-1:AAAA+/BBBB=&#39;",
    "registry.example:5000/shell/hello:latest",
    "hello bash",
    "sha256:abababababab",
    "is a meta-package: a shell and the core utilities (here <code>bash</code>, <code>coreutils</code>)",
    `<li>Meta-packages stand for several packages: <code>py</code> (<code>python3Packages.requests</code>, <code>${escapeHtml(evil)}</code>).</li>`,
    "<li>An architecture prefix builds for another platform: <code>registry.example:5000/arm64/shell/hello</code> (<code>amd64</code>, <code>arm64</code>); without one, a multi-platform index of the architectures that have all the packages, from which clients pick their own (a client that takes a single manifest only gets the server's own, <code>amd64</code>).</li>",
  ]) {
    assert.ok(html.includes(needle), `page mentions ${needle}`);
  }

  // A hostile Host header is not echoed; a configured host wins over the header.
  const h = await get(`${base}/`, { headers: { Host: `x"><script>` } });
  assert.ok(!h.text.includes("<script"));
  assert.ok(h.text.includes("docker pull HOST/shell/hello"));
  const fixed = await serveOps({
    metrics: new Metrics(),
    health: () => ({ ok: true }),
    recentImages: () => {
      throw new Error("index unavailable");
    },
    host: "nix.example",
    scheme: "https",
    binaryCache: false,
  });
  const f = await get(`${fixed}/`);
  assert.equal(f.status, 200);
  checkHtml(f.text);
  // Told nothing about the names that work there, the page offers no meta-package and no prefix.
  assert.ok(f.text.includes("docker pull nix.example/hello\n"));
  assert.ok(!f.text.includes("shell"));
  assert.ok(!f.text.includes("architecture prefix"));
  assert.ok(!f.text.includes("--plain-http"), "no plain-HTTP advice for an https registry");
  assert.ok(!f.text.includes("nix-command copy"), "no binary cache section when it is not served");
  assert.ok(f.text.includes("None yet."));
  const head = await get(`${fixed}/`, { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(head.text, "");
});

test("the index page suggests an image the set really makes (no hello, no shell: its own package)", async () => {
  const base = await serveOps({
    metrics: new Metrics(),
    health: () => ({ ok: true }),
    recentImages: () => [],
    naming: { metaPackages: {}, prefixArchitectures: ["amd64"], defaultArch: "amd64", example: "figlet" },
  });
  const html = (await get(`${base}/`, { headers: { Host: "registry.example:5000" } })).text;
  assert.ok(html.includes("docker pull registry.example:5000/figlet"), html);
  assert.ok(
    html.includes("docker run --rm -it registry.example:5000/figlet\n") ||
      html.includes("docker run --rm -it registry.example:5000/figlet<"),
    "no hello command for an image without it",
  );
  assert.ok(!html.includes("/hello"), "no hello anywhere");
});
