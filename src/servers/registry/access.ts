// Who may do what on `nixoci serve`: the one decision every request goes through. The server asks
// decideAccess before any handler runs (the registry API, the binary cache, the page, /metrics: all of them),
// and the auth only checks the credentials the decision asks for.
//
//   route                                  needs                  without --auth-pull   with --auth-pull
//   GET /healthz                           nothing                open                  open (for probes)
//   GET /v2/token                          nothing (the endpoint  open                  open
//                                          checks what it gets)
//   GET /v2/ (API root, docker login)      valid credentials      credentials           credentials
//   GET/HEAD manifests, blobs, tags,       pull on the repository open                  credentials
//   referrers; GET /v2/_catalog
//   PUT/DELETE manifests, DELETE blobs,    push on the repository credentials (push)    credentials (push)
//   uploads (any method)
//   anything else: /nix-cache-info,        read                   open                  credentials
//   /<hash>.narinfo, /<hash>.ls, /nar/...,
//   the page at /, /metrics, unknown paths
//
// Without --auth at all everything is open. Registry routes challenge as the auth is set up (Basic, or Bearer
// with the token endpoint); every other route challenges with Basic, which is what Nix (a netrc file),
// browsers and Prometheus (basic_auth) answer. Anything not named here falls in the last row: a route added
// later is closed under --auth-pull unless it is added here as open.
import type { Route } from "./routes.js";

export interface AccessPolicy {
  /** Credentials are checked at all (--auth). */
  auth: boolean;
  /** Reading needs credentials too (--auth-pull). */
  requirePull: boolean;
}

/** What a route needs, before the policy says whether that takes credentials. */
export type Need = "open" | "login" | "read" | "push";

/** What the server must check: nothing, or credentials with pull or push access. */
export type Decision =
  { open: true } | { open: false; action: "pull" | "push"; repo?: string; challenge: "registry" | "basic" };

const READ_METHODS = new Set(["GET", "HEAD"]);

const REGISTRY: Record<Route["kind"], (method: string) => Need> = {
  base: () => "login",
  token: () => "open",
  catalog: () => "read",
  manifest: (m) => (READ_METHODS.has(m) ? "read" : "push"),
  blob: (m) => (READ_METHODS.has(m) ? "read" : "push"),
  "upload-start": () => "push",
  upload: () => "push",
  tags: () => "read",
  referrers: () => "read",
  unknown: () => "read",
};

/** Paths outside /v2 that stay open; every other one needs read access. */
const OPEN_PATHS = new Set(["/healthz"]);

/** What a request needs: `route` is its parsed /v2 route, undefined for paths outside /v2. */
export function routeNeed(method: string, path: string, route: Route | undefined): Need {
  if (route) return REGISTRY[route.kind](method);
  return OPEN_PATHS.has(path) ? "open" : "read";
}

function decide(
  need: Need,
  repo: string | undefined,
  challenge: "registry" | "basic",
  policy: AccessPolicy,
): Decision {
  if (!policy.auth || need === "open" || (need === "read" && !policy.requirePull)) return { open: true };
  return {
    open: false,
    action: need === "push" ? "push" : "pull",
    ...(repo !== undefined ? { repo } : {}),
    challenge,
  };
}

/** The decision for a request (see the table above). */
export function decideAccess(
  method: string,
  path: string,
  route: Route | undefined,
  policy: AccessPolicy,
): Decision {
  const repo = route && "name" in route ? route.name : undefined;
  return decide(routeNeed(method, path, route), repo, route ? "registry" : "basic", policy);
}

/** The decision for an extra repository a request touches (the source of a cross-repository mount). */
export function decideRepoAccess(action: "pull" | "push", repo: string, policy: AccessPolicy): Decision {
  return decide(action === "push" ? "push" : "read", repo, "registry", policy);
}
