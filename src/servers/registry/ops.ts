// Operational endpoints of `nixoci serve` (served for paths outside /v2):
//   GET /healthz   200 {"status":"ok"} or 503 {"status":"unavailable"} (plus "details" when given)
//   GET /metrics   Prometheus text format 0.0.4
//   GET /          a small self-contained HTML page: how to pull images, how images are named, how to use
//                  the binary cache, and the images built recently. It offers only names that work on this
//                  server: `shell/` when that meta-package is on, architecture prefixes it can build for.
// Who may ask for these is decided by the server with every other route (access.ts): /healthz is always open,
// /metrics and the page need credentials with --auth-pull.
// Everything shown on the page that did not come from this file is HTML-escaped (image names, tags, the host
// taken from the request), and the page loads nothing from anywhere (a Content-Security-Policy says so).
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "../../util/logger.js";
import { logRequest } from "./request-log.js";
import { METRICS_CONTENT_TYPE, type Metrics, type RegistryMetrics, type RequestInfo } from "./metrics.js";

export interface RecentImage {
  name: string;
  tag: string;
  digest: string;
  /** ISO 8601 time. */
  builtAt: string;
  packages?: string[];
}

export interface OpsRoutesOptions {
  metrics: Metrics;
  health: () => { ok: boolean; details?: object };
  recentImages: () => RecentImage[];
  /** How clients reach this server ("registry.example:5000"); default the request's Host header. */
  host?: string;
  /** The page's title (default "nixoci registry"). */
  title?: string;
  /** Extra text on naming images (plain text; paragraphs separated by blank lines). */
  packagesHelp?: string;
  /** The binary cache's public key ("name:base64"), shown in the binary cache instructions. */
  publicKey?: string;
  /** Whether the binary cache is served (default true). */
  binaryCache?: boolean;
  /** "https" when clients reach the server through TLS (default "http"). */
  scheme?: "http" | "https";
  /** At most this many recent images are listed (default 50). */
  maxRecent?: number;
  /** Pulls and the binary cache need credentials (--auth-pull): the page says how to give them. */
  credentials?: boolean;
  /** What names can say on this server; without it the page offers neither meta-packages nor prefixes. */
  naming?: PageNaming;
}

/** The parts of image names that work on this server, as the page offers them. */
export interface PageNaming {
  /** The meta-packages in force: name -> packages. */
  metaPackages: Readonly<Record<string, readonly string[]>>;
  /** The architectures a name prefix can ask for that the server builds for (amd64, arm64). */
  prefixArchitectures: readonly string[];
  /** The architecture of names without a prefix. */
  defaultArch: string;
  /** An image the set really makes, to suggest (`shell/hello`); without it, a placeholder. */
  example?: string;
}

export type OpsHandler = (req: IncomingMessage, res: ServerResponse) => boolean;

/** Escapes text for HTML element content and double-quoted attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A Host header worth echoing: a host name or address with an optional port. */
function sanitizeHost(h: string | undefined): string | undefined {
  if (!h || h.length > 255) return undefined;
  return /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$/.test(h) ? h : undefined;
}

const SECURITY_HEADERS = {
  "X-Content-Type-Options": "nosniff",
  "Cache-Control": "no-store",
};

const PAGE_CSP =
  "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE = `
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
code,pre{font:13px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#f4f4f4}
pre{padding:.6rem .8rem;overflow-x:auto;border-radius:4px}code{padding:0 .2rem}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eee;vertical-align:top}
.muted{color:#666}
@media (prefers-color-scheme:dark){body{background:#161616;color:#ddd}code,pre{background:#262626}th,td{border-color:#333}h2{border-color:#333}.muted{color:#999}}
`;

function pre(lines: string[]): string {
  return `<pre><code>${lines.map(escapeHtml).join("\n")}</code></pre>`;
}

function paragraphs(text: string): string {
  return text
    .split(/\n\s*\n/)
    .map((p) => p.trim())
    .filter(Boolean)
    .map((p) => `<p>${escapeHtml(p)}</p>`)
    .join("\n");
}

function shortDigest(d: string): string {
  const m = /^([a-z0-9]+):([0-9a-f]+)$/.exec(d);
  return m && m[2].length > 16 ? `${m[1]}:${m[2].slice(0, 12)}…` : d;
}

/** The HTML of the index page. */
export function renderIndexPage(opts: {
  host: string;
  title: string;
  images: RecentImage[];
  packagesHelp?: string;
  publicKey?: string;
  binaryCache: boolean;
  scheme: "http" | "https";
  credentials?: boolean;
  naming?: PageNaming;
}): string {
  const { host, title } = opts;
  const plain = opts.scheme === "http";
  const base = `${opts.scheme}://${host}`;
  const meta = opts.naming?.metaPackages ?? {};
  const shell = Object.hasOwn(meta, "shell") ? meta.shell : undefined;
  const example = opts.naming?.example ?? `${shell ? "shell/" : ""}hello`;
  const runsHello = example.split("/").includes("hello");
  const parts: string[] = [];
  parts.push(
    `<!DOCTYPE html>`,
    `<html lang="en">`,
    `<head>`,
    `<meta charset="utf-8">`,
    `<meta name="viewport" content="width=device-width, initial-scale=1">`,
    `<title>${escapeHtml(title)}</title>`,
    `<style>${STYLE}</style>`,
    `</head>`,
    `<body>`,
    `<h1>${escapeHtml(title)}</h1>`,
    `<p class="muted">An OCI registry that builds images of Nix packages on demand${
      opts.binaryCache ? ", and a Nix binary cache of the same store" : ""
    }.</p>`,
  );

  parts.push(
    `<h2 id="pull">Pulling images</h2>`,
    `<p>Name the packages in the image's repository path; the first pull builds the image, later pulls are served from the cache.</p>`,
    pre([
      `docker pull ${host}/${example}`,
      `docker run --rm -it ${host}/${example}${runsHello ? " hello" : ""}`,
      `podman pull${plain ? " --tls-verify=false" : ""} ${host}/${example}`,
      `skopeo copy${plain ? " --src-tls-verify=false" : ""} docker://${host}/${example} oci:hello:latest`,
      `ctr images pull${plain ? " --plain-http" : ""} ${host}/${example}:latest`,
    ]),
  );
  if (opts.credentials) {
    parts.push(
      `<p>Pulls need credentials: log in first (or pass them to each command).</p>`,
      pre([
        `docker login ${host}`,
        `podman login${plain ? " --tls-verify=false" : ""} ${host}`,
        `skopeo inspect --creds USER:PASSWORD${plain ? " --tls-verify=false" : ""} docker://${host}/${example}`,
        `ctr images pull${plain ? " --plain-http" : ""} --user USER:PASSWORD ${host}/${example}:latest`,
      ]),
    );
  }
  if (plain) {
    parts.push(
      `<p>This server speaks plain HTTP. Docker pulls from it when it is <code>localhost</code>, or when it is listed in <code>insecure-registries</code> in <code>/etc/docker/daemon.json</code>:</p>`,
      pre([`{ "insecure-registries": ["${host}"] }`]),
    );
  }

  const h = escapeHtml(host);
  const code = (s: string): string => `<code>${escapeHtml(s)}</code>`;
  const naming: string[] = [
    `<li><code>${h}/PKG1/PKG2/…</code>: one image with all the named packages and their dependencies, each package's <code>bin</code> on <code>PATH</code>.</li>`,
  ];
  if (shell)
    naming.push(
      `<li><code>shell</code> first (<code>${h}/shell/PKG</code>) is a meta-package: a shell and the core utilities (here ${shell.map(code).join(", ")}), so the image can be entered interactively.</li>`,
    );
  const others = Object.entries(meta).filter(([name]) => name !== "shell");
  if (others.length)
    naming.push(
      `<li>Meta-packages stand for several packages: ${others.map(([name, pkgs]) => `${code(name)} (${pkgs.map(code).join(", ")})`).join("; ")}.</li>`,
    );
  const arches = opts.naming?.prefixArchitectures ?? [];
  const own = opts.naming?.defaultArch;
  const other = arches.find((a) => a !== own);
  if (other)
    naming.push(
      `<li>An architecture prefix builds for another platform: <code>${h}/${escapeHtml(other)}/${escapeHtml(example)}</code> (${arches.map(code).join(", ")}); without one, a multi-platform index of the architectures that have all the packages, from which clients pick their own (a client that takes a single manifest only gets the server's own${own ? `, ${code(own)}` : ""}).</li>`,
    );
  else if (own) naming.push(`<li>Images are built for ${code(own)}.</li>`);
  parts.push(
    `<h2 id="naming">Naming</h2>`,
    `<ul>`,
    ...naming,
    `<li>The tag selects the package set (<code>latest</code> by default); an image can always be pulled by its digest (<code>@sha256:…</code>), which names exactly the same bytes forever.</li>`,
    `<li>The same packages in a different order name the same image; layers of common dependencies are shared between images.</li>`,
    `</ul>`,
  );
  if (opts.packagesHelp) parts.push(paragraphs(opts.packagesHelp));

  if (opts.binaryCache) {
    const trust = opts.publicKey ? opts.publicKey : "NAME:KEY";
    parts.push(
      `<h2 id="binary-cache">Nix binary cache</h2>`,
      `<p>The store the images are built from is also a Nix binary cache at <code>${escapeHtml(base)}</code>. Copy paths from it, with signatures checked against its key:</p>`,
      pre([
        `nix --extra-experimental-features nix-command copy --from ${base} \\`,
        `    --option trusted-public-keys '${trust}' /nix/store/…-hello`,
      ]),
      `<p>or use it as a substituter (<code>/etc/nix/nix.conf</code>):</p>`,
      pre([`extra-substituters = ${base}`, `extra-trusted-public-keys = ${trust}`]),
    );
    if (opts.credentials) {
      const machine = host.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
      parts.push(
        `<p>It needs credentials: Nix sends them from a netrc file (<code>netrc-file = /etc/nix/netrc</code> in <code>nix.conf</code>, or <code>--option netrc-file FILE</code>):</p>`,
        pre([`machine ${machine} login USER password PASSWORD`]),
      );
    }
    if (opts.publicKey) {
      parts.push(`<p>Public key: <code>${escapeHtml(opts.publicKey)}</code></p>`);
    } else {
      parts.push(
        `<p class="muted">This server does not sign its paths: clients need <code>--option require-sigs false</code> unless the paths carry signatures of keys they trust.</p>`,
      );
    }
  }

  parts.push(`<h2 id="recent">Recently built images</h2>`);
  if (opts.images.length === 0) {
    parts.push(`<p class="muted">None yet.</p>`);
  } else {
    parts.push(
      `<table>`,
      `<thead><tr><th>Image</th><th>Digest</th><th>Built</th><th>Packages</th></tr></thead>`,
      `<tbody>`,
    );
    for (const img of opts.images) {
      const ref = `${host}/${img.name}:${img.tag}`;
      parts.push(
        `<tr><td><code>${escapeHtml(ref)}</code></td>` +
          `<td><code title="${escapeHtml(img.digest)}">${escapeHtml(shortDigest(img.digest))}</code></td>` +
          `<td>${escapeHtml(img.builtAt)}</td>` +
          `<td>${escapeHtml((img.packages ?? []).join(" "))}</td></tr>`,
      );
    }
    parts.push(`</tbody>`, `</table>`);
  }
  parts.push(
    `<p class="muted">Operations: <a href="/healthz">/healthz</a>, <a href="/metrics">/metrics</a>.</p>`,
    `</body>`,
    `</html>`,
    ``,
  );
  return parts.join("\n");
}

export function opsRoutes(opts: OpsRoutesOptions): OpsHandler {
  const title = opts.title ?? "nixoci registry";
  const maxRecent = opts.maxRecent ?? 50;

  const send = (
    req: IncomingMessage,
    res: ServerResponse,
    status: number,
    headers: Record<string, string>,
    body: string,
  ): void => {
    const data = Buffer.from(body, "utf8");
    res.writeHead(status, { ...SECURITY_HEADERS, ...headers, "Content-Length": String(data.length) });
    res.end(req.method === "HEAD" ? undefined : data);
  };

  const json = (req: IncomingMessage, res: ServerResponse, status: number, value: unknown): void =>
    send(req, res, status, { "Content-Type": "application/json" }, JSON.stringify(value) + "\n");

  const healthz = (req: IncomingMessage, res: ServerResponse): void => {
    let result: { ok: boolean; details?: object };
    try {
      result = opts.health();
    } catch (err) {
      json(req, res, 503, { status: "unavailable", error: err instanceof Error ? err.message : String(err) });
      return;
    }
    const body: Record<string, unknown> = { status: result.ok ? "ok" : "unavailable" };
    if (result.details !== undefined) body.details = result.details;
    json(req, res, result.ok ? 200 : 503, body);
  };

  const index = (req: IncomingMessage, res: ServerResponse): void => {
    const host = sanitizeHost(opts.host) ?? sanitizeHost(req.headers.host) ?? "HOST";
    let images: RecentImage[] = [];
    try {
      images = opts.recentImages().slice(0, maxRecent);
    } catch {
      // The page still explains how to pull; the list is a bonus.
    }
    const html = renderIndexPage({
      host,
      title,
      images,
      packagesHelp: opts.packagesHelp,
      publicKey: opts.publicKey,
      binaryCache: opts.binaryCache ?? true,
      scheme: opts.scheme ?? "http",
      credentials: opts.credentials,
      naming: opts.naming,
    });
    send(
      req,
      res,
      200,
      {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": PAGE_CSP,
        "X-Frame-Options": "DENY",
      },
      html,
    );
  };

  const routes: Record<string, (req: IncomingMessage, res: ServerResponse) => void> = {
    "/healthz": healthz,
    "/metrics": (req, res) =>
      void opts.metrics.render().then(
        (text) => send(req, res, 200, { "Content-Type": METRICS_CONTENT_TYPE }, text),
        (err: Error) =>
          send(req, res, 500, { "Content-Type": "text/plain; charset=utf-8" }, `${err.message}\n`),
      ),
    "/": index,
  };

  return (req, res) => {
    const url = req.url ?? "";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    const route = Object.hasOwn(routes, path) ? routes[path] : undefined;
    if (!route) return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      send(
        req,
        res,
        405,
        { "Content-Type": "text/plain; charset=utf-8", Allow: "GET, HEAD" },
        "method not allowed\n",
      );
      return true;
    }
    route(req, res);
    return true;
  };
}

/**
 * The server's `onRequest` callback that feeds both the request metrics and the request log: pass it as
 * createRegistryServer's onRequest (either part may be left out).
 */
export function requestObserver(opts: {
  metrics?: RegistryMetrics;
  logger?: Logger;
}): (info: RequestInfo) => void {
  return (info) => {
    try {
      opts.metrics?.observeRequest(info);
    } catch {
      // Metrics must never break serving.
    }
    if (opts.logger) logRequest(opts.logger, info);
  };
}
