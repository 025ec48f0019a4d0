// The routes of the distribution API: a raw /v2 request path parsed into the resource it names (with its
// repository name checked), the methods each resource has (405 otherwise), the access a request needs (pull or
// push on which repository, for auth), and a short name for logs and metrics. What the handlers get besides the
// route is HandlerContext.
import { registryError } from "./errors.js";
import { checkName } from "./names.js";

export type Route =
  | { kind: "base" }
  | { kind: "catalog" }
  | { kind: "token" }
  | { kind: "manifest"; name: string; reference: string }
  | { kind: "blob"; name: string; digest: string }
  | { kind: "upload-start"; name: string }
  | { kind: "upload"; name: string; uuid: string }
  | { kind: "tags"; name: string }
  | { kind: "referrers"; name: string; digest: string }
  | { kind: "unknown" };

/**
 * The route of a raw request path (not decoded: names, tags and digests have no characters that need escapes,
 * so an escape is an error, never a way around the checks). undefined for paths outside /v2. Throws the
 * RegistryError for an invalid repository name.
 */
export function parseRoute(path: string): Route | undefined {
  if (path !== "/v2" && !path.startsWith("/v2/")) return undefined;
  if (path === "/v2" || path === "/v2/") return { kind: "base" };
  if (path === "/v2/_catalog") return { kind: "catalog" };
  if (path === "/v2/token") return { kind: "token" };
  const rest = path.slice(4);
  let m: RegExpExecArray | null;
  let route: Route;
  if ((m = /^(.+)\/blobs\/uploads\/?$/.exec(rest))) route = { kind: "upload-start", name: m[1] };
  else if ((m = /^(.+)\/blobs\/uploads\/([^/]+)$/.exec(rest)))
    route = { kind: "upload", name: m[1], uuid: m[2] };
  else if ((m = /^(.+)\/manifests\/([^/]+)$/.exec(rest)))
    route = { kind: "manifest", name: m[1], reference: m[2] };
  else if ((m = /^(.+)\/blobs\/([^/]+)$/.exec(rest))) route = { kind: "blob", name: m[1], digest: m[2] };
  else if ((m = /^(.+)\/referrers\/([^/]+)$/.exec(rest)))
    route = { kind: "referrers", name: m[1], digest: m[2] };
  else if ((m = /^(.+)\/tags\/list$/.exec(rest))) route = { kind: "tags", name: m[1] };
  else return { kind: "unknown" };
  checkName(route.name);
  return route;
}

const ALLOWED: Record<Route["kind"], string[]> = {
  base: ["GET", "HEAD"],
  catalog: ["GET", "HEAD"],
  token: ["GET"],
  manifest: ["GET", "HEAD", "PUT", "DELETE"],
  blob: ["GET", "HEAD", "DELETE"],
  "upload-start": ["POST"],
  upload: ["GET", "PATCH", "PUT", "DELETE"],
  tags: ["GET", "HEAD"],
  referrers: ["GET", "HEAD"],
  unknown: [],
};

/** A short name of the route for logs and metrics ("manifest.get", "upload.patch"...). */
export function routeName(route: Route | undefined, method: string): string {
  if (!route) return "other";
  if (route.kind === "base" || route.kind === "catalog" || route.kind === "token" || route.kind === "unknown")
    return route.kind;
  return `${route.kind}.${method.toLowerCase()}`;
}

/** 405 for a method the route does not have. */
export function checkMethod(route: Route, method: string): void {
  const allowed = ALLOWED[route.kind];
  if (route.kind === "unknown")
    throw registryError("NOT_FOUND", { message: "no such route in the registry API" });
  if (!allowed.includes(method))
    throw registryError("UNSUPPORTED", {
      message: `method ${method} not allowed here`,
      headers: { Allow: allowed.join(", ") },
    });
}

/** What a request needs: pull or push on a repository (undefined for the catalog). */
export function routeAccess(
  route: Route,
  method: string,
): { action: "pull" | "push"; repo: string | undefined } | undefined {
  if (route.kind === "base" || route.kind === "token" || route.kind === "unknown") return undefined;
  if (route.kind === "catalog") return { action: "pull", repo: undefined };
  const push =
    !(method === "GET" || method === "HEAD") || route.kind === "upload" || route.kind === "upload-start";
  return { action: push ? "push" : "pull", repo: route.name };
}

/** What a handler gets besides the request, the response and its route. */
export interface HandlerContext {
  /** Authorizes an extra repository (cross-repository mounts need pull on `from`); throws RegistryError. */
  authorize(action: "pull" | "push", repo: string): Promise<void>;
  query: URLSearchParams;
}
