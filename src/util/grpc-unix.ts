// A gRPC server on a unix socket, as nixoci's daemons (snapshotter, CRI image service) run one: a stale socket
// file left by a killed predecessor is replaced, but a socket another process still answers on is refused (taking
// it over would cut that daemon off from containerd, and its socket would be removed when either stopped); anything
// else at the path is an error. Stopping waits a bounded time for running calls, then removes the socket if it is
// still the one this server made.
import { existsSync, lstatSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { NixociError } from "./errors.js";

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
    if (!lstatSync(address).isSocket()) throw new NixociError(address, "exists and is not a socket");
    if (await answers(address))
      throw new NixociError(
        address,
        "another process is serving on this socket; stop it first or give another --address",
      );
    unlinkSync(address);
  }
  const server = new grpc.Server({ "grpc.max_receive_message_length": 16 << 20 });
  addServices(server);
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${address}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  const ours = lstatSync(address).ino;
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
        if (lstatSync(address).ino === ours) unlinkSync(address);
      } catch {
        // already gone
      }
    }));
  return { server, address, stop };
}

/** Whether a process accepts connections on the socket at `address` (a stale file refuses them). */
function answers(address: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(address);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
