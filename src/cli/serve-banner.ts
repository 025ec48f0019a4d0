// What `nixoci serve` tells a person who started it in a terminal: where it listens, what it serves from, and
// commands to try with the real address. Only for a terminal: log collectors get the "listening" record instead.

export interface ServeBannerInfo {
  version: string;
  /** The bound address, HOST:PORT ([V6]:PORT). */
  address: string;
  /** How clients on this machine reach it (--public-host, else the address; 127.0.0.1 for a wildcard one). */
  host: string;
  /**
   * The package resolver's description and current revision: "store" when names are store path base names (no
   * resolver given), so the examples cannot name a package.
   */
  resolver: string;
  revision: string;
  storage: string;
  store: string;
  binaryCache: boolean;
  /** The binary cache's public key when it signs. */
  publicKey?: string;
  /** --auth: who needs credentials. */
  auth?: "push" | "all";
  /** An image the set really makes, to suggest (default `shell/hello`). */
  example?: string;
}

/** Docker pulls over plain HTTP from these without insecure-registries (its default insecure 127.0.0.0/8, ::1). */
function loopback(host: string): boolean {
  const name = host.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
  return name === "localhost" || name === "::1" || /^127\./.test(name);
}

/** The banner, lines ending in "\n". */
export function serveBanner(b: ServeBannerInfo): string {
  const row = (label: string, value: string): string => `  ${label.padEnd(14)}${value}`;
  const literal = b.revision === "store";
  const image = `${b.host}/${literal ? "HASH-NAME" : (b.example ?? "shell/hello")}`;
  const lines = [
    `nixoci serve ${b.version}: an on-demand registry of Nix package images`,
    row("listening", `http://${b.address} (plain HTTP)`),
    row("packages", literal ? b.resolver : `${b.resolver}, revision ${b.revision}`),
    row("storage", b.storage),
    row("store", b.store),
    row(
      "binary cache",
      !b.binaryCache
        ? "off (--no-binary-cache)"
        : b.publicKey
          ? `http://${b.host}, public key ${b.publicKey}`
          : `http://${b.host}, unsigned (--sign-key FILE signs it)`,
    ),
    row(
      "access",
      b.auth === "all"
        ? "pulls and pushes need credentials"
        : b.auth === "push"
          ? "pulls are open, pushes need credentials"
          : "open to anyone who reaches it (--auth htpasswd:FILE asks pushes for credentials)",
    ),
    "try:",
    `  docker pull ${image}`,
    `  skopeo copy --src-tls-verify=false docker://${image} oci:hello:latest`,
  ];
  if (literal)
    lines.push("  (names are store path base names: HASH-NAME of a path in the store, several as NAME/NAME)");
  if (b.binaryCache)
    lines.push(
      `  nix --extra-experimental-features nix-command copy --from http://${b.host} ${
        b.publicKey ? `--option trusted-public-keys '${b.publicKey}'` : "--option require-sigs false"
      } /nix/store/...`,
    );
  lines.push(
    loopback(b.host)
      ? `plain HTTP: docker pulls from ${b.host} as is; skopeo and podman need --tls-verify=false, ctr --plain-http`
      : `plain HTTP: docker needs { "insecure-registries": ["${b.host}"] } in /etc/docker/daemon.json; skopeo and podman --tls-verify=false, ctr --plain-http`,
    `more at http://${b.host}/ (naming, the binary cache, recent images); Ctrl-C stops the server`,
  );
  return lines.map((l) => `${l}\n`).join("");
}
