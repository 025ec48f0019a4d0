// The registry under test running in this process, and clients that do not block it: an in-process server
// cannot answer while a synchronous child process (execFileSync) waits for it.
import { execFile } from "node:child_process";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import {
  createRegistryServer,
  type RegistryServerOptions,
  type RequestInfo,
} from "../../src/servers/registry/server.js";
import { RegistryStorage } from "../../src/servers/registry/storage.js";
import { makeTempDir } from "./fixtures.js";

/** Runs a program without blocking this process (the registry under test runs here). */
export function exec(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: Buffer } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { env: { ...process.env, ...opts.env }, maxBuffer: 1 << 28, timeout: 300_000, encoding: "buffer" },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${cmd} ${args.join(" ")}: ${err.message}\n${stderr.toString()}`));
        else resolve(stdout.toString());
      },
    );
    child.stdin?.end(opts.input ?? Buffer.alloc(0));
  });
}

export interface TestServer {
  host: string;
  root: string;
  storage: RegistryStorage;
  requests: RequestInfo[];
  stop(): Promise<void>;
}

export async function startServer(opts: Partial<RegistryServerOptions> = {}): Promise<TestServer> {
  const root = makeTempDir("registry-root");
  const storage = opts.storage ?? new RegistryStorage(root);
  const requests: RequestInfo[] = [];
  const server = createRegistryServer({ ...opts, storage, onRequest: (i) => requests.push(i) });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    host,
    root: storage.root,
    storage,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface Res {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  code?: string;
  json?: unknown;
}

/** One raw HTTP request: the path is sent exactly as given (no normalisation of "..", escapes, slashes). */
export function request(
  host: string,
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; body?: Buffer | string } = {},
): Promise<Res> {
  const [hostname, port] = host.split(":");
  return new Promise((resolve, reject) => {
    const headers = { ...opts.headers };
    if (opts.body !== undefined) headers["Content-Length"] ??= String(Buffer.byteLength(opts.body));
    const req = http.request(
      { host: hostname, port: Number(port), method, path, headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const body = Buffer.concat(chunks);
          const out: Res = { status: res.statusCode ?? 0, headers: res.headers, body };
          try {
            out.json = JSON.parse(body.toString("utf8"));
            const errs = (out.json as { errors?: Array<{ code?: string }> }).errors;
            if (Array.isArray(errs)) out.code = errs[0]?.code;
          } catch {
            // not JSON
          }
          resolve(out);
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}
