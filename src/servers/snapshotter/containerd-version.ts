// Which containerd the node runs, for auto's target mode (containerd >= 1.7 mounts a Mount's target) and for
// --print-containerd-config. In order: --containerd-version; else the running containerd's own answer, its
// Version API on its socket (--containerd-address: the one containerd that calls this snapshotter, also where the
// binary is not on PATH, as k3s's embedded containerd at /run/k3s/containerd/containerd.sock); else
// `containerd --version`, the first on PATH (which may not be the running one).
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { versionService, type VersionMessage } from "../../proto/containerd.js";
import { NixociError, quote } from "../../util/errors.js";
import { parseContainerdVersion, type ContainerdVersion } from "./containerd-config.js";

/** Where a stock containerd listens (k3s's: /run/k3s/containerd/containerd.sock). */
export const DEFAULT_CONTAINERD_ADDRESS = "/run/containerd/containerd.sock";

/** What named the node's containerd version. */
export type ContainerdVersionSource = "--containerd-version" | "version API" | "containerd --version";

export interface NodeContainerd {
  version: ContainerdVersion;
  source: ContainerdVersionSource;
  /** The version string containerd reported (API or --version), when it was asked. */
  reported?: string;
}

const HINT = "name the version with --containerd-version 1.6|1.7|2.x";

/**
 * Asks the containerd on unix socket `address` for its version (containerd.services.version.v1.Version), within
 * `timeoutMs`. Throws a NixociError naming the socket when nothing answers there or the answer is not a version.
 */
export async function askContainerdVersion(
  address: string,
  timeoutMs: number,
): Promise<{ version: ContainerdVersion; reported: string }> {
  const input = `containerd's Version API at ${address}`;
  // No socket: say so, rather than grpc's connection error.
  if (!existsSync(address)) throw new NixociError(input, "no such socket");
  const Ctor = versionService();
  const client = new Ctor(`unix:${address}`, grpc.credentials.createInsecure());
  try {
    const res = await new Promise<VersionMessage>((resolve, reject) =>
      (
        client as unknown as {
          Version: (
            req: object,
            opts: grpc.CallOptions,
            cb: (err: grpc.ServiceError | null, res: VersionMessage) => void,
          ) => void;
        }
      ).Version({}, { deadline: Date.now() + timeoutMs }, (err, r) => (err ? reject(err) : resolve(r))),
    ).catch((err: grpc.ServiceError) => {
      throw new NixociError(input, err.details || err.message);
    });
    const version = parseContainerdVersion(res.version);
    if (!version) throw new NixociError(input, `no version in its answer ${quote(res.version)}`);
    return { version, reported: res.version };
  } finally {
    client.close();
  }
}

/**
 * The version `containerd --version` reports ("containerd github.com/containerd/containerd 1.6.20~ds1 ...",
 * "containerd github.com/containerd/containerd/v2 v2.1.0 ..."): the first word after the module path.
 */
export function versionFromContainerdOutput(out: string): ContainerdVersion | undefined {
  const words = out.trim().split(/\s+/);
  return words[0] === "containerd" && words[2] ? parseContainerdVersion(words[2]) : undefined;
}

/** Runs `binary --version`; throws a NixociError naming the fix (--containerd-version) when that says nothing. */
export function detectContainerdVersion(
  binary = "containerd",
): Promise<{ version: ContainerdVersion; reported: string }> {
  const input = `${binary} --version`;
  return new Promise((resolve, reject) =>
    execFile(binary, ["--version"], { encoding: "utf8", timeout: 10_000 }, (err, stdout) => {
      if (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const why =
          code === "ENOENT"
            ? "not found on PATH"
            : typeof code === "number"
              ? `exited with status ${code}`
              : err.message;
        return reject(new NixociError(input, `${why}; ${HINT}`));
      }
      const version = versionFromContainerdOutput(stdout);
      if (!version)
        return reject(new NixociError(input, `no version in its output ${quote(stdout.trim())}; ${HINT}`));
      resolve({ version, reported: stdout.trim().split(/\s+/)[2] });
    }),
  );
}

/**
 * The node's containerd: `flag` (--containerd-version), else the Version API at `address` (within
 * `timeoutMs`), else `containerd --version`. When none answers, throws `containerd --version`'s error (which
 * names --containerd-version) with the Version API's as `apiError`.
 */
export async function nodeContainerdVersion(opts: {
  flag?: ContainerdVersion;
  address: string;
  timeoutMs: number;
}): Promise<NodeContainerd> {
  if (opts.flag) return { version: opts.flag, source: "--containerd-version" };
  let apiError: string;
  try {
    return { ...(await askContainerdVersion(opts.address, opts.timeoutMs)), source: "version API" };
  } catch (err) {
    apiError = (err as Error).message;
  }
  try {
    return { ...(await detectContainerdVersion()), source: "containerd --version" };
  } catch (err) {
    throw Object.assign(err as Error, { apiError });
  }
}
