// The Kubernetes CRI image API (runtime.v1.ImageService) from nixoci's own minimal proto (proto/cri/api.proto),
// loaded with @grpc/proto-loader like the snapshotter's protos. Messages are plain objects with snake_case field
// names; uint64/int64 come back as numbers; unset message fields are null (ImageStatusResponse.image is null when
// the image is not present). `criImageClient` is a promise-based client with a deadline on every call, for tests,
// tools and the image service's proxy to containerd's CRI plugin (served on containerd's main gRPC socket).
import * as grpc from "@grpc/grpc-js";
import type { ListImagesRequest } from "./generated/cri/runtime/v1/ListImagesRequest.js";
import type { ListImagesResponse__Output as ListImagesResponse } from "./generated/cri/runtime/v1/ListImagesResponse.js";
import type { ImageStatusRequest } from "./generated/cri/runtime/v1/ImageStatusRequest.js";
import type { ImageStatusResponse__Output as ImageStatusResponse } from "./generated/cri/runtime/v1/ImageStatusResponse.js";
import type { PullImageRequest } from "./generated/cri/runtime/v1/PullImageRequest.js";
import type { PullImageResponse__Output as PullImageResponse } from "./generated/cri/runtime/v1/PullImageResponse.js";
import type { RemoveImageRequest } from "./generated/cri/runtime/v1/RemoveImageRequest.js";
import type { RemoveImageResponse__Output as RemoveImageResponse } from "./generated/cri/runtime/v1/RemoveImageResponse.js";
import type { ImageFsInfoRequest } from "./generated/cri/runtime/v1/ImageFsInfoRequest.js";
import type { ImageFsInfoResponse__Output as ImageFsInfoResponse } from "./generated/cri/runtime/v1/ImageFsInfoResponse.js";
import { loadGrpcPackage } from "./load.js";

// Message types generated from api.proto (scripts/gen-proto-types.mjs): requests as a client may write them,
// responses as they arrive (every field present, unset messages null).
export type { ImageSpec } from "./generated/cri/runtime/v1/ImageSpec.js";
export type { Image__Output as CriImage } from "./generated/cri/runtime/v1/Image.js";
export type { AuthConfig } from "./generated/cri/runtime/v1/AuthConfig.js";
export type { PodSandboxConfig } from "./generated/cri/runtime/v1/PodSandboxConfig.js";
export type { FilesystemUsage__Output as FilesystemUsage } from "./generated/cri/runtime/v1/FilesystemUsage.js";
export type { ListImagesRequest } from "./generated/cri/runtime/v1/ListImagesRequest.js";
export type { ListImagesResponse__Output as ListImagesResponse } from "./generated/cri/runtime/v1/ListImagesResponse.js";
export type { ImageStatusRequest } from "./generated/cri/runtime/v1/ImageStatusRequest.js";
export type { ImageStatusResponse__Output as ImageStatusResponse } from "./generated/cri/runtime/v1/ImageStatusResponse.js";
export type { PullImageRequest } from "./generated/cri/runtime/v1/PullImageRequest.js";
export type { PullImageResponse__Output as PullImageResponse } from "./generated/cri/runtime/v1/PullImageResponse.js";
export type { RemoveImageRequest } from "./generated/cri/runtime/v1/RemoveImageRequest.js";
export type { RemoveImageResponse__Output as RemoveImageResponse } from "./generated/cri/runtime/v1/RemoveImageResponse.js";
export type { ImageFsInfoRequest } from "./generated/cri/runtime/v1/ImageFsInfoRequest.js";
export type { ImageFsInfoResponse__Output as ImageFsInfoResponse } from "./generated/cri/runtime/v1/ImageFsInfoResponse.js";

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
