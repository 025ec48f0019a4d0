// The registry client's credentials and authentication challenges (the registry server's own access control is
// servers/registry/auth.ts). Kept apart from the session (registry-session.ts): nothing here touches the network
// itself, tokens are fetched through the function the session hands in. Credentials come from --creds USER:PASS
// or from Docker's config.json ($DOCKER_CONFIG/config.json, else ~/.docker/config.json: `auths[host].auth` =
// base64 "user:pass", or a credential helper named by `credHelpers[host]`/`credsStore`). A request answered 401
// carries a WWW-Authenticate challenge: Basic -> the request is retried with the credentials; Bearer
// realm,service,scope -> a token is fetched from the realm (with the credentials, when there are any) and cached
// per scope set.
import { execFile } from "node:child_process";
import { readJsonFile } from "../util/fs.js";
import { homedir } from "node:os";
import { join } from "node:path";
import { NixociError, quote } from "../util/errors.js";

export interface Credentials {
  username: string;
  password: string;
}

/** "USER:PASS" (the password may contain ':'). */
export function parseCreds(s: string, input = "--creds"): Credentials {
  const i = s.indexOf(":");
  if (i <= 0) throw new NixociError(input, "expected USER:PASSWORD");
  return { username: s.slice(0, i), password: s.slice(i + 1) };
}

/** The host name clients use as the key in config.json (Docker Hub's historical key is its v1 URL). */
function configKeys(registry: string): string[] {
  if (registry === "docker.io" || registry === "index.docker.io" || registry === "registry-1.docker.io")
    return ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"];
  return [registry];
}

/** Strips a scheme and a path from a config.json key: "https://host:5000/v1/" -> "host:5000". */
function normalizeKey(key: string): string {
  return key.replace(/^[a-z]+:\/\//i, "").replace(/\/.*$/, "");
}

export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.DOCKER_CONFIG || join(homedir(), ".docker"), "config.json");
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

function decodeAuth(file: string, key: string, auth: string): Credentials {
  const text = Buffer.from(auth, "base64").toString("utf8");
  const i = text.indexOf(":");
  if (i <= 0) throw new NixociError(file, `auths[${quote(key)}].auth is not base64 of "user:password"`);
  return { username: text.slice(0, i), password: text.slice(i + 1) };
}

function runHelper(helper: string, server: string): Promise<Credentials | undefined> {
  const prog = `docker-credential-${helper}`;
  return new Promise((resolve, reject) => {
    const child = execFile(prog, ["get"], { timeout: 30_000, maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err) {
        // Helpers exit 1 with "credentials not found in native keychain" when they have nothing for the host.
        if (/not found/i.test(String(stdout)) || /not found/i.test(err.message)) return resolve(undefined);
        return reject(new NixociError(prog, `failed: ${err.message}`));
      }
      try {
        const j = JSON.parse(stdout) as { Username?: string; Secret?: string };
        if (typeof j.Username !== "string" || typeof j.Secret !== "string")
          return reject(new NixociError(prog, "answer has no Username/Secret"));
        resolve({ username: j.Username, password: j.Secret });
      } catch {
        reject(new NixociError(prog, "answer is not JSON"));
      }
    });
    // A helper may exit without reading its input (EPIPE here); the callback reports how it ended.
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(server);
  });
}

/** Credentials for a registry host from Docker's config.json, or undefined when it has none. */
export async function dockerConfigCredentials(
  registry: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Credentials | undefined> {
  const file = dockerConfigPath(env);
  const parsed = await readJsonFile(file);
  if (parsed === undefined) return undefined;
  const cfg = parsed as DockerConfigFile;
  if (typeof cfg !== "object" || cfg === null) throw new NixociError(file, "is not a JSON object");
  const wanted = configKeys(registry);
  for (const [key, entry] of Object.entries(cfg.auths ?? {})) {
    if (!wanted.includes(key) && !wanted.includes(normalizeKey(key))) continue;
    if (typeof entry !== "object" || entry === null) continue;
    if (typeof entry.auth === "string" && entry.auth !== "") return decodeAuth(file, key, entry.auth);
    if (typeof entry.username === "string" && typeof entry.password === "string")
      return { username: entry.username, password: entry.password };
  }
  const helper =
    Object.entries(cfg.credHelpers ?? {}).find(
      ([k]) => wanted.includes(k) || wanted.includes(normalizeKey(k)),
    )?.[1] ?? cfg.credsStore;
  if (typeof helper === "string" && /^[A-Za-z0-9._-]+$/.test(helper)) return runHelper(helper, wanted[0]);
  return undefined;
}

/** --creds wins; else Docker's config.json; else anonymous. */
export async function resolveCredentials(
  registry: string,
  creds?: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Credentials | undefined> {
  if (creds !== undefined) return parseCreds(creds);
  return dockerConfigCredentials(registry, env);
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses `WWW-Authenticate: Bearer realm="...",service="...",scope="..."` (several challenges allowed). */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const s = header;
  const skipWs = (): void => {
    while (i < s.length && (s[i] === " " || s[i] === "\t")) i++;
  };
  while (i < s.length) {
    skipWs();
    while (s[i] === ",") {
      i++;
      skipWs();
    }
    const m = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+/.exec(s.slice(i));
    if (!m) break;
    const scheme = m[0];
    i += scheme.length;
    const params: Record<string, string> = {};
    for (;;) {
      skipWs();
      const save = i;
      const pm = /^([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*=\s*/.exec(s.slice(i));
      if (!pm) {
        i = save;
        break;
      }
      i += pm[0].length;
      let value = "";
      if (s[i] === '"') {
        i++;
        while (i < s.length && s[i] !== '"') {
          if (s[i] === "\\" && i + 1 < s.length) i++;
          value += s[i++];
        }
        i++;
      } else {
        const vm = /^[^,\s]*/.exec(s.slice(i));
        value = vm ? vm[0] : "";
        i += value.length;
      }
      params[pm[1].toLowerCase()] = value;
      skipWs();
      if (s[i] === ",") {
        i++;
        continue;
      }
      break;
    }
    out.push({ scheme: scheme.toLowerCase(), params });
  }
  return out;
}

/** What the auth layer needs from an HTTP client to fetch tokens. */
export type TokenFetch = (
  url: URL,
  headers: Record<string, string>,
) => Promise<{ status: number; body: Buffer; headers: Record<string, string | string[] | undefined> }>;

function basicHeader(c: Credentials): string {
  return "Basic " + Buffer.from(`${c.username}:${c.password}`).toString("base64");
}

/**
 * The authentication state of one registry: what to send, per set of scopes, and how to answer a challenge.
 * `header(scopes)` gives the Authorization value to send (if any); `answer(challenge, scopes)` handles a 401.
 */
export class RegistryAuth {
  private basic = false;
  private bearer: { realm: string; service?: string } | undefined;
  private readonly tokens = new Map<string, { token: string; expires: number }>();
  private readonly pending = new Map<string, Promise<string>>();

  constructor(
    readonly registry: string,
    readonly credentials: Credentials | undefined,
    private readonly fetchToken: TokenFetch,
  ) {}

  private static key(scopes: string[]): string {
    return [...new Set(scopes)].sort().join(" ");
  }

  header(scopes: string[]): string | undefined {
    if (this.bearer) {
      const t = this.tokens.get(RegistryAuth.key(scopes));
      if (t && t.expires > Date.now()) return `Bearer ${t.token}`;
      return undefined;
    }
    if (this.basic && this.credentials) return basicHeader(this.credentials);
    return undefined;
  }

  /** True when a bearer scheme is known and this scope set still needs a token (fetch before sending). */
  needsToken(scopes: string[]): boolean {
    return this.bearer !== undefined && this.header(scopes) === undefined;
  }

  /**
   * Handles a 401's WWW-Authenticate value: afterwards `header(scopes)` has something new to send.
   * Throws a NixociError when there is nothing to retry with (no credentials for Basic, token refused...).
   */
  async answer(
    wwwAuthenticate: string | undefined,
    scopes: string[],
    input: string,
    detail?: string,
  ): Promise<void> {
    const challenges = parseChallenges(wwwAuthenticate ?? "");
    const bearer = challenges.find((c) => c.scheme === "bearer");
    const basic = challenges.find((c) => c.scheme === "basic");
    if (bearer && bearer.params.realm) {
      this.bearer = { realm: bearer.params.realm, service: bearer.params.service };
      const extra = bearer.params.scope ? bearer.params.scope.split(" ").filter(Boolean) : [];
      const all = [...scopes, ...extra];
      // A token we sent was refused (expired, or too narrow): never retry with it.
      this.tokens.delete(RegistryAuth.key(scopes));
      this.tokens.delete(RegistryAuth.key(all));
      const token = await this.token(all, input);
      // The request is retried with `scopes`: remember the token under both keys.
      const expires = this.tokens.get(RegistryAuth.key(all))?.expires ?? Date.now() + 60_000;
      this.tokens.set(RegistryAuth.key(scopes), { token, expires });
      return;
    }
    if (basic) {
      if (!this.credentials) throw authRequired(input, detail);
      if (this.basic)
        throw new NixociError(
          input,
          `authentication failed: the registry refused the credentials (${detail ?? "401"})`,
        );
      this.basic = true;
      return;
    }
    throw new NixociError(
      input,
      `401 Unauthorized without a usable challenge (${quote(wwwAuthenticate ?? "")})`,
    );
  }

  /** Fetches (once, concurrently shared) a bearer token for the scope set. */
  async token(scopes: string[], input: string): Promise<string> {
    const key = RegistryAuth.key(scopes);
    const cached = this.tokens.get(key);
    if (cached && cached.expires > Date.now()) return cached.token;
    let p = this.pending.get(key);
    if (!p) {
      p = this.requestToken([...new Set(scopes)].sort(), key, input).finally(() => this.pending.delete(key));
      this.pending.set(key, p);
    }
    return p;
  }

  private async requestToken(scopes: string[], key: string, input: string): Promise<string> {
    if (!this.bearer) throw new NixociError(input, "no bearer challenge to answer");
    let url: URL;
    try {
      url = new URL(this.bearer.realm);
    } catch {
      throw new NixociError(input, `bad token realm ${quote(this.bearer.realm)}`);
    }
    if (this.bearer.service) url.searchParams.set("service", this.bearer.service);
    for (const s of scopes) url.searchParams.append("scope", s);
    const headers: Record<string, string> = { Accept: "application/json" };
    if (this.credentials) headers.Authorization = basicHeader(this.credentials);
    let res;
    try {
      res = await this.fetchToken(url, headers);
    } catch (err) {
      throw new NixociError(input, `token request to ${url.origin} failed: ${(err as Error).message}`);
    }
    if (res.status === 401 || res.status === 403) {
      if (!this.credentials) throw authRequired(input);
      throw new NixociError(
        input,
        `authentication failed: token server ${url.origin} answered ${res.status}`,
      );
    }
    if (res.status !== 200)
      throw new NixociError(input, `token request to ${url.origin} failed: HTTP ${res.status}`);
    let j: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      j = JSON.parse(res.body.toString("utf8")) as typeof j;
    } catch {
      throw new NixociError(input, `token server ${url.origin} answered something that is not JSON`);
    }
    const token = typeof j.token === "string" && j.token ? j.token : j.access_token;
    if (typeof token !== "string" || !token)
      throw new NixociError(input, `token server ${url.origin} answered no token`);
    // Tokens default to 60 s; renew a little early.
    const life = typeof j.expires_in === "number" && j.expires_in > 0 ? j.expires_in : 60;
    this.tokens.set(key, { token, expires: Date.now() + Math.max(1, life - 10) * 1000 });
    return token;
  }
}

export function authRequired(input: string, detail = "401 UNAUTHORIZED"): NixociError {
  return new NixociError(
    input,
    `authentication required (${detail}); pass --creds USER:PASSWORD or add the registry to Docker's config.json`,
  );
}
