// `nixoci image-service`: a Kubernetes CRI runtime.v1.ImageService (kubelet's --image-service-endpoint) in front
// of containerd's CRI plugin. PullImage of a `nix:0/nix/store/<hash>-<name>[:tag]` reference loads the image
// description at that store path (substituting it, with its closure, from the configured binary caches when it
// is missing) into containerd's namespace without any registry (cri/nix-import.ts), under the name
// `nix:0/nix/store/<hash>-<name>:TAG` (latest by default; or `@DIGEST`), which is how containerd's CRI plugin
// normalises the reference, so its ImageStatus, ListImages and RemoveImage answer for it. A tag or digest the
// reference asks for must be the description's (NOT_FOUND otherwise, as from a registry). Every other call and reference is forwarded to
// containerd's CRI as raw bytes (fields this proto does not declare pass through untouched), with the caller's
// deadline and its status codes.
import { execFile } from "node:child_process";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { ContainerdClient } from "../../outputs/containerd-client.js";
import {
  NIX_IMAGE_REF_PREFIX,
  askedProblem,
  parseNixImageRefParts,
  readNixImage,
  type NixImage,
  type NixImageRefParts,
} from "../../outputs/nix-image.js";
import type { Logger } from "../../util/logger.js";
import type { LocalStore } from "../../store/local-store.js";
import type { LazySources } from "../../store/lazy-sources.js";
import { Substituter } from "../../store/substituter.js";
import { NixociError } from "../../util/errors.js";
import { serveOnUnixSocket, type RunningServer } from "../../util/grpc-unix.js";
import { GrpcCallMetrics } from "../../util/grpc-metrics.js";
import { Metrics } from "../../util/metrics.js";
import {
  criImageClient,
  criImageService,
  type CriImageClient,
  type PullImageRequest,
} from "../../proto/cri.js";
import { importNixImage } from "./nix-import.js";
import { defaultArch } from "../../image/spec.js";

export interface ImageServiceOptions {
  /** containerd's main gRPC socket (its CRI plugin and its API are both served there). */
  containerd: string;
  /** The snapshotter containerd's CRI plugin unpacks into (nixoci's proxy snapshotter's name). */
  snapshotter: string;
  /** containerd namespace of the CRI plugin. */
  namespace?: string;
  store: LocalStore;
  /** Binary caches a missing description (and its closure) is substituted from, opened when first needed. */
  substituters?: LazySources;
  log: Logger;
  /** How long PullImage waits for the CRI plugin to list a loaded image (default 15 s). */
  visibleTimeoutMs?: number;
}

const SERVICE = "/runtime.v1.ImageService/";
const METHODS = ["ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"] as const;
const identity = (b: Buffer): Buffer => b;

type Handler = grpc.handleUnaryCall<Buffer, Buffer>;

/** The longest nix:0 reference: "nix:0" + a store path (store dir, 32, "-", 211) + ":" tag (128) or "@" digest. */
const MAX_REF_LENGTH = 1024;

/**
 * The name containerd's CRI plugin looks a nix reference up by (a Docker reference: the tag asked for, latest by
 * default; or the digest), so ImageStatus of the reference a pod names finds the pulled image.
 */
export function criImageName(storePath: string, ask: { tag?: string; digest?: string } = {}): string {
  return ask.digest !== undefined
    ? `${NIX_IMAGE_REF_PREFIX}${storePath}@${ask.digest}`
    : `${NIX_IMAGE_REF_PREFIX}${storePath}:${ask.tag ?? "latest"}`;
}

/** What /metrics reports for the image service. */
export class ImageServiceMetrics extends Metrics {
  readonly calls = new GrpcCallMetrics(this, {
    calls: "nixoci_cri_calls_total",
    callsHelp: "CRI ImageService calls answered, by method and gRPC code.",
    duration: "nixoci_cri_call_duration_seconds",
    durationHelp: "Time to answer a CRI call.",
  });
  readonly nixPulls = this.counter(
    "nixoci_nix_image_pulls_total",
    "PullImage calls for nix:0 references, by result.",
    ["result"],
    [{ result: "success" }, { result: "failure" }],
  );
  readonly nixLayers = this.counter(
    "nixoci_nix_image_layers_total",
    'Layers of loaded nix:0 images by how they got there: "present", "fromStore" (the snapshotter), "applied" (a blob), "generated" (a tar made from the store).',
    ["source"],
  );

  observe(method: string, code: grpc.status, startMs: number): void {
    this.calls.observe(method, code, startMs);
  }
}

export class NixImageService {
  readonly metrics = new ImageServiceMetrics();
  private readonly upstream: grpc.Client;
  private readonly cri: CriImageClient;
  private readonly containerd: ContainerdClient;
  private readonly inflight = new Map<string, Promise<string>>();
  private readonly namespace: string;

  constructor(private readonly opts: ImageServiceOptions) {
    this.namespace = opts.namespace ?? "k8s.io";
    this.upstream = new grpc.Client(`unix:${opts.containerd}`, grpc.credentials.createInsecure());
    this.cri = criImageClient(opts.containerd);
    this.containerd = new ContainerdClient(opts.containerd, this.namespace);
  }

  close(): void {
    this.upstream.close();
    this.cri.close();
    this.containerd.close();
  }

  serve(address: string): Promise<RunningServer> {
    return serveOnUnixSocket(address, (server) => server.addService(this.definition(), this.handlers()));
  }

  /** The service with raw-bytes (de)serializers: requests are decoded only where nixoci needs to look. */
  private definition(): grpc.ServiceDefinition {
    const def: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
    for (const m of METHODS)
      def[m] = {
        path: SERVICE + m,
        requestStream: false,
        responseStream: false,
        requestSerialize: identity,
        requestDeserialize: identity,
        responseSerialize: identity,
        responseDeserialize: identity,
        originalName: m,
      };
    return def;
  }

  private handlers(): grpc.UntypedServiceImplementation {
    const out: Record<string, Handler> = {};
    for (const m of METHODS) out[m] = (call, cb) => this.forward(m, call, this.observed(m, cb));
    out.PullImage = (call, cb) => void this.pullImage(call, this.observed("PullImage", cb));
    return out;
  }

  /** `cb`, counting the call's outcome and duration. */
  private observed(method: string, cb: grpc.sendUnaryData<Buffer>): grpc.sendUnaryData<Buffer> {
    const start = performance.now();
    return (err, value) => {
      this.metrics.observe(method, err ? (err.code ?? grpc.status.UNKNOWN) : grpc.status.OK, start);
      cb(err, value);
    };
  }

  /** Undefined when containerd's CRI answers, else what is wrong (for /healthz). */
  async health(): Promise<string | undefined> {
    try {
      await this.cri.imageFsInfo({}, { timeoutMs: 3000 });
      return undefined;
    } catch (err) {
      return `containerd CRI at ${this.opts.containerd} does not answer: ${(err as grpc.ServiceError).details ?? String(err)}`;
    }
  }

  /** Sends the request's bytes to containerd's CRI and its answer (or status) back. */
  private forward(
    method: string,
    call: grpc.ServerUnaryCall<Buffer, Buffer>,
    cb: grpc.sendUnaryData<Buffer>,
  ): void {
    const deadline = call.getDeadline();
    this.upstream.makeUnaryRequest(
      SERVICE + method,
      identity,
      identity,
      call.request,
      call.metadata.clone(),
      { deadline: deadline === Infinity ? Date.now() + 600_000 : deadline },
      (err, res) => {
        if (err) this.opts.log.debug("cri call failed", { method, code: err.code, error: err.details });
        cb(err, res);
      },
    );
  }

  private async pullImage(
    call: grpc.ServerUnaryCall<Buffer, Buffer>,
    cb: grpc.sendUnaryData<Buffer>,
  ): Promise<void> {
    const svc = criImageService().service.PullImage;
    let req: PullImageRequest;
    try {
      req = svc.requestDeserialize(call.request) as PullImageRequest;
    } catch {
      cb({ code: grpc.status.INVALID_ARGUMENT, details: "malformed PullImageRequest" });
      return;
    }
    const ref = req.image?.image ?? "";
    if (!ref.startsWith(`${NIX_IMAGE_REF_PREFIX}/`)) {
      this.forward("PullImage", call, cb);
      return;
    }
    const start = performance.now();
    // No real reference is this long (a store path name is at most 211 characters, a tag 128): refused before
    // anything reads it, and logged cut short.
    const shown = ref.length > 300 ? `${ref.slice(0, 300)}… (${ref.length} characters)` : ref;
    try {
      if (ref.length > MAX_REF_LENGTH)
        throw new StatusError(
          grpc.status.INVALID_ARGUMENT,
          `a reference of ${ref.length} characters: longer than any nix:0 reference (${MAX_REF_LENGTH})`,
        );
      const id = await this.pullNix(ref);
      this.metrics.nixPulls.inc({ result: "success" });
      this.opts.log.info("pulled", { image: shown, id, ms: Math.round(performance.now() - start) });
      cb(null, svc.responseSerialize({ image_ref: id }) as Buffer);
    } catch (err) {
      this.metrics.nixPulls.inc({ result: "failure" });
      const { code, details } = statusOf(err);
      const said = details.length > 1000 ? `${details.slice(0, 1000)}…` : details;
      this.opts.log.warn("pull failed", { image: shown, code: grpc.status[code], error: said });
      cb({ code, details: said });
    }
  }

  /** Loads the description `ref` names (once at a time per store path); returns the image ID. */
  pullNix(ref: string): Promise<string> {
    let ask: NixImageRefParts;
    try {
      ask = parseNixImageRefParts(ref, this.opts.store.storeDir);
    } catch (err) {
      return Promise.reject(new StatusError(grpc.status.INVALID_ARGUMENT, (err as Error).message));
    }
    // One load at a time per reference as asked (the same description under two tags is recorded twice).
    const key = criImageName(ask.storePath, ask);
    let p = this.inflight.get(key);
    if (!p) {
      p = this.load(ask).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  private async load(ask: NixImageRefParts): Promise<string> {
    const { storePath } = ask;
    const { store } = this.opts;
    if (!(await store.queryPathInfo(storePath))) {
      const configured = this.opts.substituters?.configured ?? 0;
      if (configured) {
        const sources = (await this.opts.substituters?.stores()) ?? [];
        if (!sources.length)
          throw new StatusError(
            grpc.status.UNAVAILABLE,
            `${storePath}: not in the store, and no --substituter could be reached (see the service's log)`,
          );
        try {
          await new Substituter(store, sources, { parallelism: 8 }).realise([storePath]);
        } catch (err) {
          throw new StatusError(
            grpc.status.NOT_FOUND,
            `${storePath}: not in the store and not substitutable: ${(err as Error).message}`,
          );
        }
      }
      if (!(await store.queryPathInfo(storePath)))
        throw new StatusError(
          grpc.status.NOT_FOUND,
          `${storePath}: not in the store${configured ? "" : " (and no --substituter)"}`,
        );
    }
    // A description is a directory; a regular file is an OCI archive (`nixoci build -o oci-archive:`, or
    // nix-snapshotter's image tarballs), unpacked into a temporary layout first.
    const real = store.realPath(storePath);
    const unpacked = (await stat(real)).isFile() ? await unpackOciArchive(storePath, real) : undefined;
    try {
      let image;
      try {
        image = await readNixImage(storePath, unpacked ?? real, store.storeDir);
      } catch (err) {
        throw new StatusError(grpc.status.FAILED_PRECONDITION, (err as Error).message);
      }
      // A tag or digest it does not hold: NOT_FOUND, as a registry answers.
      const problem = askedProblem(image, ask);
      if (problem) throw new StatusError(grpc.status.NOT_FOUND, `${storePath}: ${problem}`);
      return await this.importImage(image, criImageName(storePath, ask));
    } finally {
      if (unpacked) await rm(unpacked, { recursive: true, force: true });
    }
  }

  private async importImage(image: NixImage, name: string): Promise<string> {
    const { store } = this.opts;
    const { storePath } = image;
    // containerd's CRI plugin only lists images for this node's platform: say so instead of timing out.
    const arch = defaultArch();
    if (image.platform.os !== "linux" || image.platform.architecture !== arch)
      throw new StatusError(
        grpc.status.FAILED_PRECONDITION,
        `${storePath}: the image is for ${image.platform.os}/${image.platform.architecture}, this node is linux/${arch}`,
      );
    const result = await importNixImage(image, name, {
      containerd: this.containerd,
      snapshotter: this.opts.snapshotter,
      store,
      log: this.opts.log,
    });
    for (const [source, n] of Object.entries(result.layers)) if (n) this.metrics.nixLayers.inc({ source }, n);
    await this.waitVisible(name);
    return result.id;
  }

  /** containerd's CRI plugin learns of the image record from an event: wait (bounded) until it lists it. */
  private async waitVisible(name: string): Promise<void> {
    const until = Date.now() + (this.opts.visibleTimeoutMs ?? 15_000);
    for (;;) {
      const r = await this.cri.imageStatus({ image: { image: name } }, { timeoutMs: 10_000 });
      if (r.image) return;
      if (Date.now() > until)
        throw new StatusError(
          grpc.status.UNAVAILABLE,
          `${name}: loaded into containerd, but its CRI plugin does not list it`,
        );
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * Extracts the OCI archive `file` into a new temporary directory (regular files and directories only: any other
 * member, or a name with "..", makes it a corrupt description); returns the directory.
 */
async function unpackOciArchive(storePath: string, file: string): Promise<string> {
  const run = (args: string[]): Promise<string> =>
    new Promise((resolve, reject) =>
      execFile("tar", args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
        err ? reject(new Error(String(stderr).trim() || err.message)) : resolve(stdout),
      ),
    );
  let listing: string;
  try {
    listing = await run(["-tvf", file]);
  } catch (err) {
    throw new StatusError(
      grpc.status.FAILED_PRECONDITION,
      `${storePath}: not a tar archive: ${(err as Error).message}`,
    );
  }
  for (const line of listing.split("\n").filter(Boolean))
    if (!/^[-d]/.test(line) || /(^|\/)\.\.(\/|$)/.test(line))
      throw new StatusError(
        grpc.status.FAILED_PRECONDITION,
        `${storePath}: corrupt image archive: unexpected member ${JSON.stringify(line.slice(0, 200))}`,
      );
  const dir = await mkdtemp(join(tmpdir(), "nixoci-archive-"));
  try {
    await run(["-xf", file, "-C", dir, "--no-same-owner", "--no-same-permissions"]);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw new StatusError(
      grpc.status.FAILED_PRECONDITION,
      `${storePath}: cannot unpack: ${(err as Error).message}`,
    );
  }
  return dir;
}

class StatusError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

function statusOf(err: unknown): { code: grpc.status; details: string } {
  if (err instanceof StatusError) return { code: err.code, details: err.message };
  const e = err as { code?: unknown; details?: string; message?: string };
  if (typeof e?.code === "number" && typeof e.details === "string")
    return { code: e.code, details: e.details };
  if (err instanceof NixociError) return { code: grpc.status.FAILED_PRECONDITION, details: err.message };
  return { code: grpc.status.INTERNAL, details: e?.message ?? String(err) };
}
