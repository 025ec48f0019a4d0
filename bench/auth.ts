// Auth benchmark: what password checks cost `nixoci serve` (F3 of issue 11). The tests check the mechanisms
// (the dummy hash's cost, the cache, the limit, requests served while checks run); the times are measured here.
//
//   1. GET /v2/ with a wrong password for an existing user vs an unknown user (htpasswd at cost 12, as
//      `htpasswd -B -C 12` writes): with the dummy hash at the file's cost the two should be alike.
//   2. The right password: the first request (a bcrypt comparison) vs the next ones (cached).
//   3. An anonymous manifest pull, idle and while 10 clients send wrong passwords as fast as they are answered
//      (the failure limit lifted, so every guess costs a comparison), with comparisons in worker threads (now)
//      against bcryptjs's async API on the main thread (before; its 100 ms slices stall every other request).
//   4. The same spraying with the default failure limit (10 a minute per address): how many guesses got a
//      comparison, how many were refused with 429.
// Spraying goes on for 5 s (and at least 3 pulls) while anonymous pulls are made 100 ms apart. Medians and
// p90s; nothing is asserted.
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import bcrypt from "bcryptjs";
import { parseAuthSpec, type AuthOptions } from "../src/servers/registry/auth.js";
import { createRegistryServer } from "../src/servers/registry/server.js";
import { RegistryStorage } from "../src/servers/registry/storage.js";
import { median } from "./common.js";

const COST = 12;
const RUNS = Number(process.env.NIXOCI_BENCH_AUTH_RUNS) || 9;
const SPRAYERS = 10;
/** How long the spraying goes on while anonymous pulls are measured. */
const SPRAY_MS = 5000;
const MANIFEST = Buffer.from(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {
      mediaType: "application/vnd.oci.empty.v1+json",
      digest: "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
      size: 2,
    },
    layers: [],
  }),
);

const basic = (user: string, password: string): string =>
  "Basic " + Buffer.from(`${user}:${password}`).toString("base64");

function p90(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.9))];
}

const ms = (x: number) => `${x.toFixed(1)} ms`;

function row(what: string, xs: number[], note = ""): void {
  console.log(
    `${what.padEnd(64)}${ms(median(xs)).padStart(11)}${("p90 " + ms(p90(xs))).padStart(16)}  n=${xs.length} ${note}`.trimEnd(),
  );
}

function get(
  port: number,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: Buffer,
  localAddress?: string,
): Promise<{ status: number; ms: number }> {
  const start = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, method, path, headers, agent: false, localAddress },
      (res) => {
        res.resume();
        res.on("end", () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - start }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

interface Served {
  port: number;
  close(): Promise<void>;
}

async function serve(work: string, opts: Omit<AuthOptions, "requirePull">): Promise<Served> {
  const storage = new RegistryStorage(mkdtempSync(join(work, "storage-")));
  const server = createRegistryServer({
    storage,
    auth: parseAuthSpec(`htpasswd:${join(work, "htpasswd")}`, { requirePull: false, ...opts }),
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  // An image to pull: the empty config blob and a manifest, pushed with the password.
  const auth = { Authorization: basic("alice", "alice-pw") };
  const up = await new Promise<string>((res, rej) => {
    const req = http.request(
      { host: "127.0.0.1", port, method: "POST", path: "/v2/bench/img/blobs/uploads/", headers: auth },
      (r) => {
        r.resume();
        r.on("end", () => res(String(r.headers.location)));
      },
    );
    req.on("error", rej);
    req.end();
  });
  const digest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
  const put = await get(
    port,
    "PUT",
    `${up}${up.includes("?") ? "&" : "?"}digest=${digest}`,
    { ...auth, "Content-Length": "2" },
    Buffer.from("{}"),
  );
  if (put.status !== 201) throw new Error(`blob upload: ${put.status}`);
  const m = await get(
    port,
    "PUT",
    "/v2/bench/img/manifests/v1",
    { ...auth, "Content-Type": "application/vnd.oci.image.manifest.v1+json" },
    MANIFEST,
  );
  if (m.status !== 201) throw new Error(`manifest push: ${m.status}`);
  return {
    port,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

const pull = (port: number) =>
  get(port, "GET", "/v2/bench/img/manifests/v1", { Accept: "application/vnd.oci.image.manifest.v1+json" });

/** Anonymous pulls one after the other (100 ms apart) for at least SPRAY_MS and at least `count` of them. */
async function pulls(port: number, count: number): Promise<number[]> {
  const start = performance.now();
  const xs: number[] = [];
  while (xs.length < count || performance.now() - start < SPRAY_MS) {
    xs.push((await pull(port)).ms);
    await new Promise((r) => setTimeout(r, 100));
  }
  return xs;
}

/** 1 and 2. */
async function checkTimes(work: string): Promise<void> {
  const s = await serve(work, { maxFailures: 1_000_000 });
  try {
    const wrong: number[] = [];
    const unknown: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      wrong.push((await get(s.port, "GET", "/v2/", { Authorization: basic("alice", `guess-${i}`) })).ms);
      unknown.push((await get(s.port, "GET", "/v2/", { Authorization: basic(`nobody-${i}`, "guess") })).ms);
    }
    row(`wrong password, existing user (cost ${COST})`, wrong);
    row("unknown user (dummy hash at the file's cost)", unknown);
  } finally {
    await s.close();
  }
  const firsts: number[] = [];
  const cached: number[] = [];
  for (let i = 0; i < 3; i++) {
    const c = await serve(work, {});
    try {
      // serve() pushed with the password: a fresh user name is needed for an uncached first check.
      firsts.push((await get(c.port, "GET", "/v2/", { Authorization: basic("bob", "bob-pw") })).ms);
      for (let j = 0; j < RUNS; j++)
        cached.push((await get(c.port, "GET", "/v2/", { Authorization: basic("bob", "bob-pw") })).ms);
    } finally {
      await c.close();
    }
  }
  row("right password, first request (a comparison)", firsts);
  row("right password, later requests (cached)", cached);
}

/** 3 and 4. Sprayers send distinct wrong passwords back to back until stopped. */
async function spray(
  s: Served,
  addresses: string[],
): Promise<{ stop: () => Promise<{ answered: number; refused: number }> }> {
  let stopped = false;
  let answered = 0;
  let refused = 0;
  let n = 0;
  const loops = addresses.map(async (from) => {
    while (!stopped) {
      const r = await get(
        s.port,
        "GET",
        "/v2/",
        { Authorization: basic("alice", `spray-${n++}`) },
        undefined,
        from,
      );
      if (r.status === 429) refused++;
      else answered++;
    }
  });
  return {
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
      return { answered, refused };
    },
  };
}

async function anonymousUnderSpray(work: string): Promise<void> {
  const variants: Array<[string, Omit<AuthOptions, "requirePull">]> = [
    ["now: worker threads", { maxFailures: 1_000_000 }],
    ["before: main thread", { maxFailures: 1_000_000, compare: (p, h) => bcrypt.compare(p, h) }],
  ];
  for (const [name, opts] of variants) {
    const s = await serve(work, opts);
    try {
      const idle: number[] = [];
      for (let i = 0; i < RUNS; i++) idle.push((await pull(s.port)).ms);
      row(`anonymous pull, idle; ${name}`, idle);
      const sprayer = await spray(s, Array<string>(SPRAYERS).fill("127.0.0.1"));
      const busy = await pulls(s.port, 3);
      const { answered } = await sprayer.stop();
      row(`anonymous pull, ${SPRAYERS} clients spraying; ${name}`, busy, `(${answered} guesses checked)`);
    } finally {
      await s.close();
    }
  }
  // The default limit: 10 failures a minute per address.
  for (const addresses of [
    Array<string>(SPRAYERS).fill("127.0.0.1"),
    Array.from({ length: SPRAYERS }, (_, i) => `127.0.0.${i + 2}`),
  ]) {
    const s = await serve(work, {});
    try {
      const sprayer = await spray(s, addresses);
      const busy = await pulls(s.port, 3);
      const { answered, refused } = await sprayer.stop();
      const from = new Set(addresses).size;
      row(
        `anonymous pull, ${SPRAYERS} sprayers from ${from} address${from > 1 ? "es" : ""}, default limit`,
        busy,
        `(${answered} guesses checked, ${refused} refused with 429)`,
      );
    } finally {
      await s.close();
    }
  }
}

export async function benchAuth(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), "nixoci-bench-auth-"));
  try {
    writeFileSync(
      join(work, "htpasswd"),
      `alice:${bcrypt.hashSync("alice-pw", COST)}\nbob:${bcrypt.hashSync("bob-pw", COST)}\n`,
    );
    console.log(`\nAuth: password checks of nixoci serve (htpasswd at bcrypt cost ${COST}; median, p90)`);
    await checkTimes(work);
    await anonymousUnderSpray(work);
  } finally {
    if (!process.env.NIXOCI_KEEP_TMP) rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await benchAuth();
