// The Kubernetes CRI image API (runtime.v1.ImageService) from nixoci's own minimal proto (proto/cri/api.proto),
// loaded with @grpc/proto-loader like the snapshotter's protos. Messages are plain objects with snake_case field
// names; uint64/int64 come back as numbers; unset message fields are null (ImageStatusResponse.image is null when
// the image is not present). `criImageClient` is a promise-based client with a deadline on every call, for tests,
// tools and the image service's proxy to containerd's CRI plugin (served on containerd's main gRPC socket).
import * as grpc from "@grpc/grpc-js";
import { loadGrpcPackage } from "./load.js";

export interface ImageSpec {
  image: string;
  annotations?: Record<string, string>;
  user_specified_image?: string;
  runtime_handler?: string;
}

export interface CriImage {
  id: string;
  repo_tags: string[];
  repo_digests: string[];
  size: number;
  uid: { value: number } | null;
  username: string;
  spec: ImageSpec | null;
  pinned: boolean;
}

export interface AuthConfig {
  username?: string;
  password?: string;
  auth?: string;
  server_address?: string;
  identity_token?: string;
  registry_token?: string;
}

export interface PodSandboxConfig {
  metadata?: { name?: string; uid?: string; namespace?: string; attempt?: number };
  hostname?: string;
  log_directory?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface FilesystemUsage {
  timestamp: number;
  fs_id: { mountpoint: string } | null;
  used_bytes: { value: number } | null;
  inodes_used: { value: number } | null;
}

export interface ListImagesRequest {
  filter?: { image?: ImageSpec };
}
export interface ListImagesResponse {
  images: CriImage[];
}
export interface ImageStatusRequest {
  image: ImageSpec;
  verbose?: boolean;
}
export interface ImageStatusResponse {
  image: CriImage | null;
  info: Record<string, string>;
}
export interface PullImageRequest {
  image: ImageSpec;
  auth?: AuthConfig;
  sandbox_config?: PodSandboxConfig;
}
export interface PullImageResponse {
  image_ref: string;
}
export interface RemoveImageRequest {
  image: ImageSpec;
}
export type RemoveImageResponse = Record<string, never>;
export type ImageFsInfoRequest = Record<string, never>;
export interface ImageFsInfoResponse {
  image_filesystems: FilesystemUsage[];
  container_filesystems: FilesystemUsage[];
}

/** Per-call options: a deadline (default 60 s) and request metadata. */
export interface CallOptions {
  timeoutMs?: number;
  metadata?: grpc.Metadata;
}

/** A runtime.v1.ImageService client whose calls return promises (rejected with grpc.ServiceError). */
export interface CriImageClient {
  listImages(req?: ListImagesRequest, opts?: CallOptions): Promise<ListImagesResponse>;
  imageStatus(req: ImageStatusRequest, opts?: CallOptions): Promise<ImageStatusResponse>;
  pullImage(req: PullImageRequest, opts?: CallOptions): Promise<PullImageResponse>;
  removeImage(req: RemoveImageRequest, opts?: CallOptions): Promise<RemoveImageResponse>;
  imageFsInfo(req?: ImageFsInfoRequest, opts?: CallOptions): Promise<ImageFsInfoResponse>;
  /** The underlying grpc-js client (e.g. for waitForReady). */
  readonly raw: grpc.Client;
  close(): void;
}

let cached: grpc.GrpcObject | undefined;

function loaded(): grpc.GrpcObject {
  if (!cached) {
    cached = loadGrpcPackage("cri", ["api.proto"]);
  }
  return cached;
}

/** runtime.v1.ImageService: its service definition (for a server) and client constructor. */
export function criImageService(): grpc.ServiceClientConstructor {
  const pkg = loaded() as unknown as { runtime: { v1: { ImageService: grpc.ServiceClientConstructor } } };
  return pkg.runtime.v1.ImageService;
}

export const DEFAULT_CRI_TIMEOUT_MS = 60_000;

type UnaryFn = (
  req: object,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: unknown) => void,
) => grpc.ClientUnaryCall;

/** A promise-based ImageService client on a unix socket (`socketPath` without the `unix:` prefix). */
export function criImageClient(socketPath: string): CriImageClient {
  const Ctor = criImageService();
  const raw = new Ctor(`unix:${socketPath}`, grpc.credentials.createInsecure()) as grpc.Client &
    Record<string, UnaryFn>;
  const call =
    <Req extends object, Res>(method: string) =>
    (req?: Req, opts: CallOptions = {}): Promise<Res> =>
      new Promise<Res>((resolve, reject) => {
        raw[method].call(
          raw,
          req ?? {},
          opts.metadata ?? new grpc.Metadata(),
          { deadline: Date.now() + (opts.timeoutMs ?? DEFAULT_CRI_TIMEOUT_MS) },
          (err, res) => (err ? reject(err) : resolve(res as Res)),
        );
      });
  return {
    listImages: call<ListImagesRequest, ListImagesResponse>("ListImages"),
    imageStatus: call<ImageStatusRequest, ImageStatusResponse>("ImageStatus"),
    pullImage: call<PullImageRequest, PullImageResponse>("PullImage"),
    removeImage: call<RemoveImageRequest, RemoveImageResponse>("RemoveImage"),
    imageFsInfo: call<ImageFsInfoRequest, ImageFsInfoResponse>("ImageFsInfo"),
    raw,
    close: () => raw.close(),
  };
}
