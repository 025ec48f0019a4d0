// A unary gRPC client over any byte stream, for a BuildKit frontend: BuildKit serves its gateway API (LLBBridge)
// as cleartext HTTP/2 with prior knowledge on the frontend process's stdin/stdout, which grpc-js cannot dial.
// Node's http2 client accepts any Duplex as its connection; gRPC framing (a 1-byte compressed flag and a 4-byte
// big-endian length before each message; status in the grpc-status / grpc-message trailers) is done here.
import { connect, constants, type ClientHttp2Session } from "node:http2";
import type { Duplex } from "node:stream";

export class GrpcError extends Error {
  constructor(
    readonly code: number,
    readonly details: string,
    readonly path: string,
  ) {
    super(`${path}: ${details || `gRPC status ${code}`}`);
  }
}

export class StdioGrpcClient {
  private readonly session: ClientHttp2Session;

  constructor(stream: Duplex) {
    this.session = connect("http://buildkit.gateway", { createConnection: () => stream });
    this.session.on("error", () => undefined); // surfaced per call
  }

  /** One unary call: `request` is the encoded message; resolves with the encoded response. */
  call(path: string, request: Buffer, timeoutMs = 600_000): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const req = this.session.request({
        [constants.HTTP2_HEADER_METHOD]: "POST",
        [constants.HTTP2_HEADER_PATH]: path,
        "content-type": "application/grpc",
        te: "trailers",
        "grpc-timeout": `${Math.max(1, Math.ceil(timeoutMs / 1000))}S`,
      });
      const chunks: Buffer[] = [];
      let status: number | undefined;
      let message = "";
      const takeStatus = (h: Record<string, unknown>): void => {
        if (h["grpc-status"] !== undefined) {
          status = Number(h["grpc-status"]);
          message = decodeURIComponent(String(h["grpc-message"] ?? ""));
        }
      };
      const timer = setTimeout(() => req.close(constants.NGHTTP2_CANCEL), timeoutMs);
      req.on("response", (h) => takeStatus(h)); // trailers-only answers put the status in the headers
      req.on("trailers", (h) => takeStatus(h));
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("error", (err) => {
        clearTimeout(timer);
        reject(new GrpcError(14, err.message, path));
      });
      req.on("close", () => {
        clearTimeout(timer);
        if (status === undefined)
          return reject(new GrpcError(14, "stream closed without a gRPC status", path));
        if (status !== 0) return reject(new GrpcError(status, message, path));
        const body = Buffer.concat(chunks);
        if (body.length < 5) return resolve(Buffer.alloc(0));
        if (body[0] !== 0) return reject(new GrpcError(12, "compressed responses are not supported", path));
        const len = body.readUInt32BE(1);
        if (body.length < 5 + len) return reject(new GrpcError(13, "truncated response message", path));
        resolve(body.subarray(5, 5 + len));
      });
      const frame = Buffer.alloc(5 + request.length);
      frame.writeUInt32BE(request.length, 1);
      request.copy(frame, 5);
      req.end(frame);
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.session.close(() => resolve()));
  }
}
