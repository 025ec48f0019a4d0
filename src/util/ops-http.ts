// The operations endpoint of nixoci's gRPC daemons (`--metrics-address HOST:PORT`): plain HTTP with
// GET /healthz (200 "ok", or 503 and the reason when the daemon's check fails) and GET /metrics (Prometheus text
// format), like containerd's own metrics address. Anything else is 404; only GET and HEAD are answered.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { METRICS_CONTENT_TYPE, type Metrics } from "./metrics.js";

export interface OpsServer {
  /** The bound address (the port resolved when 0 was asked for). */
  address: string;
  close(): Promise<void>;
}

/** "HOST:PORT" or "[V6]:PORT" -> host and port; throws on anything else. */
export function parseListenAddress(s: string, flag = "--metrics-address"): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`${flag} ${JSON.stringify(s)}: expected HOST:PORT`);
  return { host: m[1] ?? m[2], port };
}

export async function serveOps(
  address: string,
  opts: { metrics: Metrics; health: () => Promise<string | undefined> },
): Promise<OpsServer> {
  const { host, port } = parseListenAddress(address);
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/metrics") {
      opts.metrics.render().then(
        (body) => {
          res.writeHead(200, {
            "content-type": METRICS_CONTENT_TYPE,
            "content-length": Buffer.byteLength(body),
          });
          res.end(req.method === "HEAD" ? undefined : body);
        },
        (err: Error) => res.writeHead(500).end(`${err.message}\n`),
      );
      return;
    }
    if (path === "/healthz") {
      opts.health().then(
        (problem) => {
          const body = problem ? `${problem}\n` : "ok\n";
          res.writeHead(problem ? 503 : 200, { "content-type": "text/plain; charset=utf-8" });
          res.end(req.method === "HEAD" ? undefined : body);
        },
        (err: Error) => res.writeHead(503).end(`${err.message}\n`),
      );
      return;
    }
    res.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("not found\n");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const a = server.address() as AddressInfo;
  return {
    address: a.family === "IPv6" ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
