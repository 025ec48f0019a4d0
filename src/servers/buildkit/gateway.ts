// The frontend's side of BuildKit's gateway API (moby.buildkit.v1.frontend.LLBBridge), as typed calls over the
// stdio gRPC client: Ping, Solve (a definition into a result ref), ReadFile (from a ref), ResolveImageConfig
// and Return (the final result, or an error shown to the user).
import type { Duplex } from "node:stream";
import type { State } from "./llb.js";
import { definition } from "./llb.js";
import { decode, encode } from "../../proto/buildkit.js";
import { StdioGrpcClient } from "./stdio-grpc.js";

const SERVICE = "/moby.buildkit.v1.frontend.LLBBridge/";

export interface Pong {
  FrontendAPICaps: Array<{ ID: string; Enabled: boolean }>;
  LLBCaps: Array<{ ID: string; Enabled: boolean }>;
  Workers: Array<{ ID: string; platforms: Array<{ Architecture: string; OS: string }> }>;
}

/** A cache to import (`--cache-from`): its type ("registry", "local", ...) and attributes (ref, ...). */
export interface CacheImport {
  Type: string;
  Attrs: Record<string, string>;
}

/**
 * The caches the client asked to import, from the frontend's options: "cache-imports" (JSON, BuildKit v0.9+: what
 * buildx's --cache-from gives), else the older "cache-from" (comma-separated registry references).
 */
export function cacheImportsOf(opts: ReadonlyMap<string, string>): CacheImport[] {
  const json = opts.get("cache-imports");
  if (json) {
    const parsed = JSON.parse(json) as unknown;
    if (!Array.isArray(parsed)) throw new Error(`frontend option cache-imports: not a JSON array: ${json}`);
    return parsed.map((e: { Type?: unknown; Attrs?: unknown }) => ({
      Type: String(e.Type ?? ""),
      Attrs: Object.fromEntries(
        Object.entries((e.Attrs ?? {}) as Record<string, unknown>).map(([k, v]) => [k, String(v)]),
      ),
    }));
  }
  return (opts.get("cache-from") ?? "")
    .split(",")
    .map((r) => r.trim())
    .filter(Boolean)
    .map((ref) => ({ Type: "registry", Attrs: { ref } }));
}

export class Gateway {
  private readonly rpc: StdioGrpcClient;
  /** Given with every Solve: BuildKit imports a cache only for the solves that ask for it. */
  cacheImports: CacheImport[] = [];

  constructor(
    stream: Duplex,
    private readonly log?: (msg: string) => void,
  ) {
    this.rpc = new StdioGrpcClient(stream);
  }

  private async call<T>(
    method: string,
    reqType: string,
    resType: string,
    req: Record<string, unknown>,
  ): Promise<T> {
    const start = performance.now();
    const body = encode(reqType, req);
    const ms = (): number => Math.round(performance.now() - start);
    try {
      const res = await this.rpc.call(SERVICE + method, body);
      this.log?.(`gateway ${method}: ${body.length} bytes sent, ${res.length} received, ${ms()} ms`);
      return decode<T>(resType, res);
    } catch (err) {
      this.log?.(`gateway ${method}: failed after ${ms()} ms: ${(err as Error).message}`);
      throw err;
    }
  }

  ping(): Promise<Pong> {
    return this.call(
      "Ping",
      "moby.buildkit.v1.frontend.PingRequest",
      "moby.buildkit.v1.frontend.PongResponse",
      {},
    );
  }

  /** Solves the graph ending at `state`; returns the result's ref id (for ReadFile and Return). */
  async solve(state: State, opts: { evaluate?: boolean } = {}): Promise<string> {
    const res = await this.call<{
      ref: string;
      result: { ref?: { id: string }; refDeprecated?: string } | null;
    }>("Solve", "moby.buildkit.v1.frontend.SolveRequest", "moby.buildkit.v1.frontend.SolveResponse", {
      Definition: definition(state),
      CacheImports: this.cacheImports,
      allowResultReturn: true,
      allowResultArrayRef: true,
      Evaluate: Boolean(opts.evaluate),
    });
    const id = res.result?.ref?.id ?? res.result?.refDeprecated ?? res.ref;
    if (id === undefined) throw new Error("Solve returned no result ref");
    return id;
  }

  async readFile(ref: string, path: string, range?: { offset: number; length: number }): Promise<Buffer> {
    const req: Record<string, unknown> = { Ref: ref, FilePath: path };
    if (range) req.Range = { Offset: range.offset, Length: range.length };
    const res = await this.call<{ Data: Buffer }>(
      "ReadFile",
      "moby.buildkit.v1.frontend.ReadFileRequest",
      "moby.buildkit.v1.frontend.ReadFileResponse",
      req,
    );
    return res.Data;
  }

  /**
   * The definitions the caller passed as frontend inputs (a Dockerfile frontend forwarding to this one passes its
   * "context" and "dockerfile" when the image's caps label offers moby.buildkit.frontend.inputs).
   */
  async inputs(): Promise<Record<string, { def: Buffer[] }>> {
    const res = await this.call<{ Definitions: Record<string, { def: Buffer[] }> }>(
      "Inputs",
      "moby.buildkit.v1.frontend.InputsRequest",
      "moby.buildkit.v1.frontend.InputsResponse",
      {},
    );
    return res.Definitions ?? {};
  }

  /** The image config of `ref` as BuildKit resolves it (a local image first, then its registry). */
  async resolveImageConfig(ref: string): Promise<{ digest: string; config: Buffer }> {
    const res = await this.call<{ Digest: string; Config: Buffer }>(
      "ResolveImageConfig",
      "moby.buildkit.v1.frontend.ResolveImageConfigRequest",
      "moby.buildkit.v1.frontend.ResolveImageConfigResponse",
      { Ref: ref },
    );
    return { digest: res.Digest, config: res.Config };
  }

  /** The build's result: `ref` with its metadata (e.g. containerimage.config), or an error for the user. */
  async return(result: { ref: string; metadata: Record<string, Buffer> } | { error: string }): Promise<void> {
    const req =
      "error" in result
        ? { error: { code: 2, message: result.error } }
        : { result: { ref: { id: result.ref }, metadata: result.metadata } };
    await this.call(
      "Return",
      "moby.buildkit.v1.frontend.ReturnRequest",
      "moby.buildkit.v1.frontend.ReturnResponse",
      req,
    );
  }

  close(): Promise<void> {
    return this.rpc.close();
  }
}
