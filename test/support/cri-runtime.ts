// A CRI RuntimeService client for tests (test/support/proto/cri-runtime.proto, read from the source tree, which
// the build does not copy): runs a container the way a kubelet does — a pod sandbox on the node's network (no
// CNI needed), a container in it from an image CRI pulled, its status and log, commands run in it, then stop and
// removal.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { LOADER_OPTIONS } from "../../src/proto/load.js";
import { until } from "./poll.js";

/** test/support/proto/cri-runtime.proto, found by walking up from this module (test/support or dist/test/support). */
function protoFile(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const f = join(dir, "test", "support", "proto", "cri-runtime.proto");
    if (existsSync(f)) return f;
    dir = dirname(dir);
  }
  throw new Error("test/support/proto/cri-runtime.proto not found");
}

type Unary = (
  req: object,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: Record<string, unknown>) => void,
) => grpc.ClientUnaryCall;

export interface CriRuntimeClient {
  call(method: string, req: object, timeoutMs?: number): Promise<Record<string, unknown>>;
  close(): void;
}

/** A promise-based RuntimeService client on containerd's socket. */
export function criRuntimeClient(socketPath: string): CriRuntimeClient {
  const def = protoLoader.loadSync(protoFile(), LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } };
  };
  const raw = new pkg.runtime.v1.RuntimeService(
    `unix:${socketPath}`,
    grpc.credentials.createInsecure(),
  ) as grpc.Client & Record<string, Unary>;
  return {
    call: (method, req, timeoutMs = 60_000) =>
      new Promise((resolve, reject) =>
        raw[method].call(raw, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
          err ? reject(err) : resolve(res),
        ),
      ),
    close: () => raw.close(),
  };
}

/**
 * A pod on the node's network, as a kubelet asks for a hostNetwork pod (no hostname: runc sets none without a
 * private UTS namespace); its log directory is `logDir`.
 */
export function hostNetworkPod(name: string, logDir: string): object {
  return {
    metadata: { name, uid: `${name}-uid`, namespace: "default", attempt: 0 },
    log_directory: logDir,
    linux: { security_context: { namespace_options: { network: "NODE", pid: "NODE", ipc: "NODE" } } },
  };
}

/** The stdout of a container's CRI log file (lines TIMESTAMP STREAM P|F MESSAGE; F ends a line). */
export function criLogStdout(file: string): string {
  let stdout = "";
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const m = /^\S+ stdout ([PF]) (.*)$/.exec(line);
    if (m) stdout += m[2] + (m[1] === "F" ? "\n" : "");
  }
  return stdout;
}

/** A started container in a pod of its own (see startInPod). */
export interface PodContainer {
  podId: string;
  containerId: string;
  /** Its stdout so far, from its CRI log. */
  stdout(): string;
  /** ContainerStatus's status (state, exit_code, ...). */
  status(): Promise<Record<string, unknown>>;
  /** ExecSync: runs `cmd` in the container (bounded by timeoutS), its output as text and exit code. */
  exec(cmd: string[], timeoutS?: number): Promise<{ stdout: string; stderr: string; exitCode: number }>;
  /** StopContainer (SIGTERM, then SIGKILL after `graceS`), RemoveContainer, StopPodSandbox, RemovePodSandbox. */
  remove(graceS?: number): Promise<void>;
}

/**
 * Creates a pod (hostNetworkPod) and starts `image` in it (`command` replacing its entrypoint, `args` its
 * arguments), as a kubelet does; its log is LOGDIR/NAME.log. On failure, what was made is removed.
 */
export async function startInPod(
  rt: CriRuntimeClient,
  opts: { name: string; image: string; command?: string[]; args?: string[]; logDir: string },
): Promise<PodContainer> {
  const sandbox = hostNetworkPod(opts.name, opts.logDir);
  const podId = (await rt.call("RunPodSandbox", { config: sandbox }, 120_000)).pod_sandbox_id as string;
  let containerId: string | undefined;
  const remove = async (graceS = 10): Promise<void> => {
    if (containerId !== undefined) {
      await rt.call("StopContainer", { container_id: containerId, timeout: graceS }, (graceS + 60) * 1000);
      await rt.call("RemoveContainer", { container_id: containerId });
    }
    await rt.call("StopPodSandbox", { pod_sandbox_id: podId });
    await rt.call("RemovePodSandbox", { pod_sandbox_id: podId });
  };
  try {
    containerId = (
      await rt.call("CreateContainer", {
        pod_sandbox_id: podId,
        config: {
          metadata: { name: opts.name, attempt: 0 },
          image: { image: opts.image },
          command: opts.command ?? [],
          args: opts.args ?? [],
          log_path: `${opts.name}.log`,
        },
        sandbox_config: sandbox,
      })
    ).container_id as string;
    await rt.call("StartContainer", { container_id: containerId });
  } catch (err) {
    await remove(0).catch(() => undefined);
    throw err;
  }
  const id = containerId;
  return {
    podId,
    containerId: id,
    stdout: () => criLogStdout(join(opts.logDir, `${opts.name}.log`)),
    status: async () =>
      (await rt.call("ContainerStatus", { container_id: id })).status as Record<string, unknown>,
    exec: async (cmd, timeoutS = 30) => {
      const r = await rt.call(
        "ExecSync",
        { container_id: id, cmd, timeout: timeoutS },
        (timeoutS + 30) * 1000,
      );
      return {
        stdout: Buffer.from(r.stdout as Uint8Array).toString("utf8"),
        stderr: Buffer.from(r.stderr as Uint8Array).toString("utf8"),
        exitCode: r.exit_code as number,
      };
    },
    remove,
  };
}

/**
 * Runs `image` in a new pod (`command` replacing its entrypoint, `args` its arguments), waits for it to exit
 * (bounded), and returns its stdout as the CRI log has it (the message of each line) and its exit code; the
 * container and the pod are removed afterwards.
 */
export async function runInPod(
  rt: CriRuntimeClient,
  opts: { name: string; image: string; command?: string[]; args?: string[]; logDir: string },
): Promise<{ stdout: string; exitCode: number }> {
  const c = await startInPod(rt, opts);
  try {
    const status = await until(`${opts.name} exited`, 60_000, async () => {
      const s = await c.status();
      if (s.state !== "CONTAINER_EXITED") throw new Error(`state ${String(s.state)}`);
      return s;
    });
    return { stdout: c.stdout(), exitCode: status.exit_code as number };
  } finally {
    await c.remove();
  }
}
