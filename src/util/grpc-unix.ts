// A gRPC server on a unix socket, as nixoci's daemons (snapshotter, CRI image service) run one: a stale socket
// file left by a killed predecessor is replaced (anything else at the path is an error), and stopping waits a
// bounded time for running calls, then removes the socket.
import { existsSync, lstatSync, unlinkSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";

export interface RunningServer {
  server: grpc.Server;
  address: string;
  /** Stops accepting calls, waits up to graceMs for running ones, then closes every connection. */
  stop(graceMs?: number): Promise<void>;
}

export async function serveOnUnixSocket(
  address: string,
  addServices: (server: grpc.Server) => void,
): Promise<RunningServer> {
  if (existsSync(address)) {
    if (!lstatSync(address).isSocket()) throw new Error(`${address}: exists and is not a socket`);
    unlinkSync(address);
  }
  const server = new grpc.Server({ "grpc.max_receive_message_length": 16 << 20 });
  addServices(server);
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${address}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  let stopped: Promise<void> | undefined;
  const stop = (graceMs = 5000): Promise<void> =>
    (stopped ??= new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, graceMs);
      server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    }).then(() => {
      try {
        unlinkSync(address);
      } catch {
        // already gone
      }
    }));
  return { server, address, stop };
}
