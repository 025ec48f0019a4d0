// A promise-based client of containerd's own gRPC API (content, images, snapshots, diff, leases), from nixoci's
// minimal protos in proto/containerd. The CRI image service uses it to load `nix:0` images into containerd the
// way containerd's own client imports an image: blobs into the content store, layers unpacked through the
// snapshots service (so a proxy snapshotter can answer ALREADY_EXISTS for layers it makes from the Nix store),
// then the image record. Every call carries the namespace header and, inside `withLease`, a lease header that
// keeps the new content and snapshots from containerd's garbage collector until the image record holds them.
import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import * as grpc from "@grpc/grpc-js";
import type {
  ContentInfo,
  DescriptorMessage,
  ImageRecord,
  InfoMessage,
  MountMessage,
} from "../proto/containerd.js";
import { loadGrpcPackage } from "../proto/load.js";
import { holdErrors } from "../util/streams.js";

export type { ContentInfo, DescriptorMessage, ImageRecord } from "../proto/containerd.js";

type ServiceCtor = grpc.ServiceClientConstructor;
type UnaryFn = (
  req: object,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: unknown) => void,
) => grpc.ClientUnaryCall;
type RawClient = grpc.Client & Record<string, UnaryFn>;

let cached: Record<string, ServiceCtor> | undefined;

function services(): Record<string, ServiceCtor> {
  if (!cached) {
    const files = ["content", "images", "diff", "leases", "snapshots"].map((f) => `${f}.proto`);
    const pkg = loadGrpcPackage("containerd", files) as unknown as {
      containerd: { services: Record<string, { v1: Record<string, ServiceCtor> }> };
    };
    const s = pkg.containerd.services;
    cached = {
      content: s.content.v1.Content,
      images: s.images.v1.Images,
      diff: s.diff.v1.Diff,
      leases: s.leases.v1.Leases,
      snapshots: s.snapshots.v1.Snapshots,
    };
  }
  return cached;
}

/** gRPC status codes containerd maps its errdefs to. */
export const NOT_FOUND = grpc.status.NOT_FOUND;
export const ALREADY_EXISTS = grpc.status.ALREADY_EXISTS;

export function grpcCode(err: unknown): number | undefined {
  return (err as { code?: number } | null)?.code;
}

const DEFAULT_TIMEOUT_MS = 120_000;

export class ContainerdClient {
  private readonly clients: Record<string, RawClient>;

  /**
   * `lease` and `clients` are for withLease's views: the same connections, with a lease header on every call
   * (a view per lease, so concurrent imports never share or reset each other's lease).
   */
  constructor(
    readonly socketPath: string,
    readonly namespace: string,
    private readonly timeoutMs = DEFAULT_TIMEOUT_MS,
    clients?: Record<string, RawClient>,
    private readonly lease?: string,
  ) {
    if (clients) this.clients = clients;
    else {
      this.clients = {};
      const channel = `unix:${socketPath}`;
      const creds = grpc.credentials.createInsecure();
      for (const [name, Ctor] of Object.entries(services())) {
        // One channel for all services (same address and options share a subchannel anyway).
        this.clients[name] = new Ctor(channel, creds) as RawClient;
      }
    }
  }

  close(): void {
    for (const c of Object.values(this.clients)) c.close();
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set("containerd-namespace", this.namespace);
    if (this.lease) md.set("containerd-lease", this.lease);
    return md;
  }

  private call<T>(service: string, method: string, req: object): Promise<T> {
    const client = this.clients[service];
    return new Promise<T>((resolve, reject) => {
      client[method].call(
        client,
        req,
        this.metadata(),
        { deadline: Date.now() + this.timeoutMs },
        (err, res) => (err ? reject(err) : resolve(res as T)),
      );
    });
  }

  /**
   * Runs `fn` with a client whose every call carries a fresh lease (expiring after an hour should this process
   * die), then deletes the lease: what `fn` wrote stays only if something else (the image record) references it.
   */
  async withLease<T>(fn: (leased: ContainerdClient) => Promise<T>): Promise<T> {
    const id = `nixoci-${Date.now()}-${randomBytes(4).toString("hex")}`;
    const expire = new Date(Date.now() + 3600_000).toISOString();
    await this.call("leases", "Create", { id, labels: { "containerd.io/gc.expire": expire } });
    try {
      return await fn(
        new ContainerdClient(this.socketPath, this.namespace, this.timeoutMs, this.clients, id),
      );
    } finally {
      await this.call("leases", "Delete", { id }).catch(() => undefined);
    }
  }

  // --- content ---

  async contentInfo(digest: string): Promise<ContentInfo | undefined> {
    try {
      const r = await this.call<{ info: ContentInfo }>("content", "Info", { digest });
      return r.info;
    } catch (err) {
      if (grpcCode(err) === NOT_FOUND) return undefined;
      throw err;
    }
  }

  async updateContentLabels(digest: string, labels: Record<string, string>): Promise<void> {
    await this.call("content", "Update", {
      info: { digest, labels },
      update_mask: { paths: Object.keys(labels).map((k) => `labels.${k}`) },
    });
  }

  /**
   * Writes a blob (bytes or a stream of exactly `size` bytes) into the content store under `digest`, which
   * containerd verifies on commit; a blob already present is not written again.
   */
  async writeContent(
    digest: string,
    size: number,
    data: Buffer | Readable,
    labels: Record<string, string> = {},
  ): Promise<void> {
    // A stream is read only after a round trip to containerd: an early error of it (a blob file that cannot
    // be opened) waits for the loop below instead of being an uncaught exception.
    const source = Buffer.isBuffer(data) ? undefined : holdErrors(data);
    let present: boolean;
    try {
      present = !!(await this.contentInfo(digest));
    } catch (err) {
      source?.destroy();
      throw err;
    }
    if (present) {
      source?.destroy();
      if (Object.keys(labels).length) await this.updateContentLabels(digest, labels);
      return;
    }
    const ref = `nixoci-${digest}`;
    const client = this.clients.content as unknown as {
      Write(md: grpc.Metadata, opts: grpc.CallOptions): grpc.ClientDuplexStream<object, object>;
    };
    const stream = client.Write(this.metadata(), { deadline: Date.now() + this.timeoutMs });
    const done = new Promise<void>((resolve, reject) => {
      stream.on("data", () => undefined);
      stream.on("error", (err: grpc.ServiceError) =>
        err.code === ALREADY_EXISTS
          ? resolve()
          : reject(new Error(`content write ${digest}: ${err.details}`)),
      );
      stream.on("end", () => resolve());
    });
    done.catch(() => undefined);
    const write = (m: object): Promise<void> =>
      new Promise((resolve) => (stream.write(m) ? resolve() : stream.once("drain", () => resolve())));
    // Offset 0 restarts an ingest an earlier, interrupted write left under the same ref.
    let offset = 0;
    const chunks: AsyncIterable<Buffer> | Buffer[] = Buffer.isBuffer(data) ? [data] : data;
    for await (const chunk of chunks) {
      for (let i = 0; i < chunk.length; i += 1 << 20) {
        const piece = chunk.subarray(i, i + (1 << 20));
        await write({ action: 1, ref, offset, data: piece, total: size, expected: digest });
        offset += piece.length;
      }
    }
    await write({ action: 2, ref, offset, total: size, expected: digest, labels });
    stream.end();
    await done;
  }

  // --- images ---

  async getImage(name: string): Promise<ImageRecord | undefined> {
    try {
      return (await this.call<{ image: ImageRecord }>("images", "Get", { name })).image;
    } catch (err) {
      if (grpcCode(err) === NOT_FOUND) return undefined;
      throw err;
    }
  }

  /** Creates the image record, or points an existing one at `target` (with `labels`). */
  async putImage(name: string, target: DescriptorMessage, labels: Record<string, string>): Promise<void> {
    const image = { name, target, labels };
    try {
      await this.call("images", "Create", { image });
    } catch (err) {
      if (grpcCode(err) !== ALREADY_EXISTS) throw err;
      await this.call("images", "Update", { image, update_mask: { paths: ["target", "labels"] } });
    }
  }

  async deleteImage(name: string): Promise<void> {
    await this.call("images", "Delete", { name, sync: true });
  }

  // --- snapshots (containerd's metadata-backed service: `snapshotter` names the backend) ---

  async prepare(
    snapshotter: string,
    key: string,
    parent: string,
    labels: Record<string, string>,
  ): Promise<MountMessage[]> {
    const r = await this.call<{ mounts: MountMessage[] }>("snapshots", "Prepare", {
      snapshotter,
      key,
      parent,
      labels,
    });
    return r.mounts;
  }

  async commit(
    snapshotter: string,
    name: string,
    key: string,
    labels: Record<string, string>,
  ): Promise<void> {
    await this.call("snapshots", "Commit", { snapshotter, name, key, labels });
  }

  async stat(snapshotter: string, key: string): Promise<InfoMessage | undefined> {
    try {
      return (await this.call<{ info: InfoMessage }>("snapshots", "Stat", { snapshotter, key })).info;
    } catch (err) {
      if (grpcCode(err) === NOT_FOUND) return undefined;
      throw err;
    }
  }

  async removeSnapshot(snapshotter: string, key: string): Promise<void> {
    await this.call("snapshots", "Remove", { snapshotter, key });
  }

  // --- diff ---

  /** Applies the layer blob `diff` (from the content store) onto `mounts`; returns the uncompressed digest. */
  async apply(diff: DescriptorMessage, mounts: MountMessage[]): Promise<DescriptorMessage> {
    const r = await this.call<{ applied: DescriptorMessage }>("diff", "Apply", { diff, mounts });
    return r.applied;
  }
}
