// Driving dockerd's BuildKit the way the docker CLI without buildx cannot: `POST /v1.41/build?version=2` with the
// context streamed as a tar, and the progress stream decoded (its "moby.buildkit.trace" lines carry BuildKit
// StatusResponse protobufs: the last state of each vertex tells cached from executed steps). Also the pieces a
// frontend test or benchmark needs: nixoci's frontend image loaded into a dockerd, and a signed HTTP binary cache
// of this machine's store (`nixoci serve`). Shared by test/buildkit and bench/frontend.ts.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { decode } from "../../src/proto/buildkit.js";
import { ROOT } from "./cli.js";
import { freePort, type Dockerd } from "./daemons.js";
import { generateCacheKey } from "./fixtures.js";

/** A protobuf Timestamp as decoded (unset: null). */
export interface Timestamp {
  seconds: number;
  nanos: number;
}

/** A Timestamp in ms since the epoch; undefined when unset. */
export function timestampMs(t: Timestamp | null | undefined): number | undefined {
  return t ? t.seconds * 1000 + t.nanos / 1e6 : undefined;
}

export interface BuildVertex {
  digest: string;
  name: string;
  cached: boolean;
  error: string;
  started: Timestamp | null;
  completed: Timestamp | null;
}

/** A vertex's named piece of progress (ID "exporting layers", "unpacking to IMAGE", ...): its last state. */
export interface BuildStatus {
  ID: string;
  vertex: string;
  name: string;
  started: Timestamp | null;
  completed: Timestamp | null;
}

export interface BuildResult {
  status: number;
  /** The build's error message (undefined when it succeeded). */
  error?: string;
  imageId?: string;
  /** The last state of each vertex, by digest. */
  vertices: Map<string, BuildVertex>;
  /** The last state of each vertex's pieces of progress, by vertex digest and ID. */
  statuses: Map<string, BuildStatus>;
  /** Step output and stream lines. */
  log: string;
  ms: number;
}

/** The frontend's fetch steps among a build's vertices ("nixoci: fetch layer(s) 1,3: NAMES ..."). */
export function fetchSteps<V extends { name: string }>(vertices: Iterable<V>): V[] {
  return [...vertices].filter((v) => v.name.startsWith("nixoci: fetch layer"));
}

/** The layer numbers fetch steps say they make, sorted (each planned layer must appear exactly once). */
export function fetchedLayerNumbers(vertices: Iterable<{ name: string }>): number[] {
  return fetchSteps(vertices)
    .flatMap((v) => /^nixoci: fetch layers? ([\d,]+):/.exec(v.name)![1].split(",").map(Number))
    .sort((a, b) => a - b);
}

/**
 * An intermittent race of the containerd image store's unpack at export (moby/buildkit#6521, Docker 28/29), not of
 * the build: the build is run once more, and a vertex counts as executed if either run executed it.
 */
const UNPACK_RACE = /failed to prepare extraction snapshot .* parent snapshot .* does not exist/;

/** POST /v1.41/build?version=2 with `context` (a directory) as a streamed tar; never rejects for a failed build. */
export async function dockerBuild(
  d: Dockerd,
  context: string,
  params: Record<string, string>,
  timeoutMs = 900_000,
): Promise<BuildResult> {
  const first = await dockerBuildOnce(d, context, params, timeoutMs);
  if (!first.error || !UNPACK_RACE.test(first.error)) return first;
  const again = await dockerBuildOnce(d, context, params, timeoutMs);
  for (const [digest, v] of first.vertices) if (!v.cached) again.vertices.set(digest, v);
  return { ...again, log: `${first.log}\n(retried: ${first.error})\n${again.log}` };
}

function dockerBuildOnce(
  d: Dockerd,
  context: string,
  params: Record<string, string>,
  timeoutMs: number,
): Promise<BuildResult> {
  const qs = new URLSearchParams({ version: "2", ...params }).toString();
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const tar = spawn("tar", ["-C", context, "-cf", "-", "."], { stdio: ["ignore", "pipe", "inherit"] });
    const req = request(
      {
        socketPath: d.host,
        method: "POST",
        path: `/v1.41/build?${qs}`,
        headers: { "content-type": "application/x-tar" },
        timeout: timeoutMs,
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => {
          const out: BuildResult = {
            status: res.statusCode ?? 0,
            vertices: new Map(),
            statuses: new Map(),
            log: "",
            ms: performance.now() - t0,
          };
          for (const line of text.split("\n")) {
            if (!line.trim()) continue;
            let j: { id?: string; aux?: unknown; error?: string; stream?: string; message?: string };
            try {
              j = JSON.parse(line) as typeof j;
            } catch {
              out.log += line + "\n";
              continue;
            }
            if (j.error) out.error = j.error;
            if (j.message) out.error ??= j.message;
            if (j.stream) out.log += j.stream;
            if (j.id === "moby.image.id") out.imageId = (j.aux as { ID: string }).ID;
            if (j.id === "moby.buildkit.trace" && typeof j.aux === "string") {
              const st = decode<{
                vertexes: BuildVertex[];
                statuses: BuildStatus[];
                logs: Array<{ msg: Buffer }>;
              }>("moby.buildkit.v1.StatusResponse", Buffer.from(j.aux, "base64"));
              for (const v of st.vertexes) out.vertices.set(v.digest, v);
              for (const s of st.statuses) out.statuses.set(`${s.vertex} ${s.ID}`, s);
              for (const l of st.logs) out.log += l.msg.toString("utf8");
            }
          }
          if (out.status !== 200) out.error ??= `HTTP ${out.status}`;
          resolve(out);
        });
      },
    );
    req.on("timeout", () =>
      req.destroy(new Error(`build of ${context}: no answer after ${timeoutMs / 1000} s`)),
    );
    req.on("error", reject);
    tar.on("error", reject);
    tar.stdout.pipe(req);
  });
}

/**
 * A Nix file for the frontend `frontend` (its `# syntax=` line): `sh` derivations run the image's busybox as
 * builder (no nixpkgs offline); `busybox` copies it into the store so the built image can run a shell script.
 * `body` goes after them in the `let`.
 */
export function nixFileFor(frontend: string, body: string): string {
  return [
    `# syntax=${frontend}`,
    "let",
    '  sh = args: derivation { name = args.name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" args.script ]; };',
    '  busybox = sh { name = "busybox"; script = "mkdir -p $out/bin && cp /bin/busybox $out/bin/busybox && ln -s busybox $out/bin/sh"; };',
    body,
    "",
  ].join("\n");
}

/** nixoci's frontend image (scripts/frontend-image.mjs), built and loaded into `d` as `tag`. */
export function loadFrontendImage(d: Dockerd, tag: string, workDir: string): void {
  const archive = join(workDir, "frontend.tar");
  execFileSync(
    process.execPath,
    [join(ROOT, "scripts/frontend-image.mjs"), "--tag", tag, "-o", `docker-archive:${archive}`],
    {
      stdio: ["ignore", "ignore", "inherit"],
    },
  );
  d.docker(["load", "-i", archive]);
  rmSync(archive, { force: true });
}

/** A Nix toolchain image (scripts/nix-toolchain-image.mjs; `nix`: its --nix, default this machine's), put into `d`. */
export function loadNixToolchainImage(d: Dockerd, tag: string, nix?: string): void {
  execFileSync(
    process.execPath,
    [
      join(ROOT, "scripts/nix-toolchain-image.mjs"),
      ...(nix ? ["--nix", nix] : []),
      "--tag",
      tag,
      "--docker-host",
      `unix://${d.host}`,
    ],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
}

export interface BinaryCacheServer {
  url: string;
  publicKey: string;
  stop(): void;
}

/** `nixoci serve` over this machine's store as a signed binary cache on 127.0.0.1 (ready when it answers). */
export async function startBinaryCacheServer(workDir: string, keyName: string): Promise<BinaryCacheServer> {
  const keys = generateCacheKey(keyName, join(workDir, "keys"));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    process.execPath,
    [
      join(ROOT, "bin/nixoci.js"),
      "serve",
      "--listen",
      `127.0.0.1:${port}`,
      "--storage",
      join(workDir, "storage"),
      "--sign-key",
      keys.secretKeyFile,
      "--log-level",
      "warn",
    ],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  const stop = (): void => void child.kill("SIGTERM");
  for (let i = 0; ; i++) {
    const ok = await fetch(`${url}/nix-cache-info`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (i > 150 || child.exitCode !== null) {
      stop();
      throw new Error("nixoci serve did not start");
    }
    await sleep(100);
  }
  return { url, publicKey: keys.publicKey, stop };
}
