// nixoci k8s pod: prints a Kubernetes Pod manifest whose container image is a `nix:0/nix/store/...` reference
// to an image description in the Nix store (`nixoci build --output nix:`), so the pod spec names no registry:
// a node's kubelet with `--image-service-endpoint` set to `nixoci image-service` loads it from the store.
import { realpathSync } from "node:fs";
import { stringify } from "yaml";
import {
  askedProblem,
  NIX_IMAGE_REF_PREFIX,
  nixImageRef,
  parseNixImageRefParts,
  readNixImage,
  type NixImageRefParts,
} from "../outputs/nix-image.js";
import { LocalStore } from "../store/local-store.js";
import { NixociError } from "../util/errors.js";
import { helpHint, parse, printHelp, UsageError } from "./args.js";
import { K8S_POD } from "./help-texts.js";
import { resolveStorePathArg } from "./stores.js";

/** A DNS-1123 label (pod and container names): lowercase alphanumerics and '-', at most 63 characters. */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** A pod name from the description's store path name ("<hash>-hello-image" -> "hello-image"). */
export function podNameFor(storePath: string): string {
  const base = storePath.slice(storePath.lastIndexOf("/") + 1);
  const name = base
    .slice(base.indexOf("-") + 1)
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, "-")
    .slice(0, 63)
    .replace(/^-+|-+$/g, "");
  return name || "nix-image";
}

function checkLabel(flag: string, value: string): string {
  if (!DNS_LABEL.test(value))
    throw new UsageError(
      `--${flag} ${JSON.stringify(value)}: not a DNS-1123 label (a-z, 0-9, '-', at most 63)`,
    );
  return value;
}

function oneOf(flag: string, value: string | undefined, allowed: string[]): string | undefined {
  if (value !== undefined && !allowed.includes(value))
    throw new UsageError(`--${flag}: expected ${allowed.join(", ")}, not ${JSON.stringify(value)}`);
  return value;
}

export async function k8sCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "--help" || sub === "-h") {
    printHelp(K8S_POD);
    return sub === undefined ? 2 : 0;
  }
  if (sub !== "pod")
    throw new UsageError(`unknown k8s subcommand ${JSON.stringify(sub)}; ${helpHint(K8S_POD)}`);
  const dash = rest.indexOf("--");
  const command = dash >= 0 ? rest.slice(dash + 1) : [];
  const { values, positionals } = parse(dash >= 0 ? rest.slice(0, dash) : rest, K8S_POD);
  if (values.help) return printHelp(K8S_POD);
  if (positionals.length !== 1) throw new UsageError(`expected one IMAGE; ${helpHint(K8S_POD)}`);
  const store = new LocalStore(values.store ? { dir: values.store } : {});
  try {
    const arg = positionals[0];
    const ask: NixImageRefParts = arg.startsWith(`${NIX_IMAGE_REF_PREFIX}/`)
      ? parseNixImageRefParts(arg, store.storeDir)
      : { storePath: resolveStorePathArg(arg.startsWith(store.storeDir) ? arg : realpathSync(arg), store) };
    const { storePath } = ask;
    if (!(await store.queryPathInfo(storePath)))
      throw new UsageError(`${storePath}: not a valid path in the store ${store.storeDir}`);
    // Fails with the description's own error when it is not one.
    const image = await readNixImage(storePath, store.realPath(storePath), store.storeDir);
    // The tag or digest asked for must be the description's (as the image service checks at the pull).
    const problem = askedProblem(image, ask);
    if (problem) throw new NixociError(arg, problem);
    const name = checkLabel("name", values.name ?? podNameFor(storePath));
    const container: Record<string, unknown> = {
      name: checkLabel("container", values.container ?? name),
      image:
        nixImageRef(storePath) +
        (ask.digest !== undefined ? `@${ask.digest}` : ask.tag !== undefined ? `:${ask.tag}` : ""),
      imagePullPolicy:
        oneOf("image-pull-policy", values["image-pull-policy"], ["IfNotPresent", "Always", "Never"]) ??
        "IfNotPresent",
    };
    if (command.length) container.command = command;
    const pod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        name,
        ...(values.namespace ? { namespace: checkLabel("namespace", values.namespace) } : {}),
        labels: { "app.kubernetes.io/name": name },
        annotations: { "nixoci/manifest-digest": image.manifest.digest },
      },
      spec: {
        containers: [container],
        ...(values["restart-policy"]
          ? {
              restartPolicy: oneOf("restart-policy", values["restart-policy"], [
                "Always",
                "OnFailure",
                "Never",
              ]),
            }
          : {}),
      },
    };
    process.stdout.write(values.json ? JSON.stringify(pod, null, 2) + "\n" : stringify(pod));
    return 0;
  } finally {
    store.close();
  }
}
