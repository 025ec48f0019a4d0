// Registry authentication for `nixoci serve --auth SPEC`.
//
// SPEC is one or both of (joined with ","):
//   htpasswd:FILE   users with bcrypt hashes, as `htpasswd -B` writes them ("user:$2y$..."): full access
//   tokens:FILE     one token per line, optionally followed by "push" (default: pull and push) or "pull"
//
// What clients send:
//   Authorization: Basic user:password    htpasswd users; also any user name with a token as the password
//   Authorization: Bearer <token>         a token of the tokens file, or one issued by GET /v2/token
//
// Challenges: with htpasswd only, `Basic realm="nixoci"`. With a tokens file, `Bearer realm="<this
// server>/v2/token",service="nixoci",scope="repository:NAME:pull[,push]"`: docker, skopeo, containerd and
// nixoci's pusher then fetch a token from GET /v2/token with Basic credentials (an htpasswd user, or any user
// name with a token as the password; none for an anonymous token, which counts as no credentials) and send it
// as Bearer. Issued tokens are HMAC-signed by a key made at startup (so they end with the process), last 15
// minutes, and carry the access of the credentials (pull, or pull and push), never more than the scope asked.
//
// Which requests need credentials, and which access, is decided once for every route in access.ts (pulls and
// every other read need them only with requirePull; a push always needs push access; the API root, GET /v2/ as
// docker login asks it, always needs valid credentials: clients learn the challenge there). This file checks
// them: 401 without credentials or with wrong ones, 403 DENIED with pull-only ones for a push. Files are re-read
// when they change.
//
// Password checks (bcrypt, slow by design):
//   - run in worker threads (bcrypt-pool.ts): requests that need none are served meanwhile;
//   - a user name that is not in the file is checked against a dummy hash of the file's highest cost, so an
//     unknown user fails as slowly as a wrong password;
//   - verified credentials are remembered for a minute (at most 1000, keyed by an HMAC of user and password
//     under a key made at startup; forgotten when the htpasswd file changes), and identical checks running at
//     the same time share one comparison;
//   - failed checks are counted per client address (failure-limit.ts): after 10 within a minute, that
//     address's requests with credentials get 429 TOOMANYREQUESTS with Retry-After until the minute is over.
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import bcrypt from "bcryptjs";
import { NixociError, quote } from "../../util/errors.js";
import { errnoWords } from "../../util/fs-errors.js";
import { BcryptBusy, bcryptCompare } from "./bcrypt-pool.js";
import { registryError, type RegistryError } from "./errors.js";
import { clientKey, FailureLimit } from "./failure-limit.js";

/** What the server asks the auth to check (a closed decision of access.ts). */
export interface CredentialCheck {
  action: "pull" | "push";
  /** The repository, for the challenge's scope and the error's detail. */
  repo?: string;
  /** "registry": the registry's own challenge (Basic, or Bearer with the token endpoint); "basic": Basic. */
  challenge: "registry" | "basic";
}

export interface RegistryAuth {
  /** Reads (pulls, the binary cache, the page, /metrics) need credentials too (--auth-pull). */
  readonly requirePull: boolean;
  /**
   * Checks the request's credentials: throws RegistryError 401 (with its WWW-Authenticate challenge), 403 DENIED
   * (pull-only credentials for a push) or 429 TOOMANYREQUESTS (too many failures from this client).
   */
  verify(req: IncomingMessage, check: CredentialCheck, client?: string): Promise<void>;
  /** GET /v2/token (the token endpoint), when this auth offers one. */
  handleTokenRequest?(req: IncomingMessage, res: ServerResponse, client?: string): Promise<void>;
}

export interface AuthOptions {
  requirePull: boolean;
  /** Failed credential checks allowed per client address per window (default 10 per 60 s); beyond, 429. */
  maxFailures?: number;
  failureWindowMs?: number;
  /** Verified credentials are remembered this long (default 60 s), at most cacheSize (1000) of them. */
  cacheTtlMs?: number;
  cacheSize?: number;
  /** How a password is compared with a bcrypt hash (default: in worker threads, bcrypt-pool.ts). */
  compare?: (password: string, hash: string) => Promise<boolean>;
}

type Access = "pull" | "push";

type Identity =
  | { kind: "anonymous" }
  | { kind: "user"; name: string; access: Access }
  | { kind: "bad"; bearer: boolean; why: string };

export const TOKEN_LIFETIME_S = 900;
const SERVICE = "nixoci";
const BASIC_REALM = "nixoci";
const BCRYPT_RE = /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/;
const BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/** The cost of the dummy hash when the file has no users (bcryptjs's default). */
const DEFAULT_COST = 10;
const TOKEN_RE = /^[\x21-\x7e]{8,4096}$/;

/** A file re-read (at most every 2 s) when its mtime or size changes; a broken new version keeps the old one. */
class WatchedFile<T> {
  private value: T;
  private stamp: string;
  private checked = Date.now();

  /** Called after a new version was read. */
  onChange?: (value: T) => void;

  constructor(
    readonly path: string,
    private readonly parse: (text: string, path: string) => T,
  ) {
    this.stamp = this.currentStamp();
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      throw new NixociError(path, `cannot read (${errnoWords(err)})`);
    }
    this.value = parse(text, path);
  }

  private currentStamp(): string {
    try {
      const st = statSync(this.path);
      return `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      return "missing";
    }
  }

  get(): T {
    if (Date.now() - this.checked < 2000) return this.value;
    this.checked = Date.now();
    const stamp = this.currentStamp();
    if (stamp !== this.stamp) {
      this.stamp = stamp;
      try {
        this.value = this.parse(readFileSync(this.path, "utf8"), this.path);
      } catch {
        // keep serving with the previous version
        return this.value;
      }
      this.onChange?.(this.value);
    }
    return this.value;
  }
}

function lines(text: string): Array<{ n: number; line: string }> {
  return text
    .split("\n")
    .map((l, i) => ({ n: i + 1, line: l.trim() }))
    .filter((l) => l.line !== "" && !l.line.startsWith("#"));
}

export function parseHtpasswd(text: string, path = "htpasswd"): Map<string, string> {
  const users = new Map<string, string>();
  for (const { n, line } of lines(text)) {
    const i = line.indexOf(":");
    if (i <= 0) throw new NixociError(`${path}:${n}`, "expected USER:HASH");
    const user = line.slice(0, i);
    const hash = line.slice(i + 1);
    if (!BCRYPT_RE.test(hash))
      throw new NixociError(
        `${path}:${n}`,
        `user ${quote(user)} has no bcrypt hash (only bcrypt entries are supported: make them with htpasswd -B)`,
      );
    users.set(user, hash);
  }
  return users;
}

export function parseTokens(text: string, path = "tokens"): Map<string, Access> {
  const tokens = new Map<string, Access>();
  for (const { n, line } of lines(text)) {
    const [token, access, ...rest] = line.split(/\s+/);
    if (!TOKEN_RE.test(token))
      throw new NixociError(`${path}:${n}`, "a token is 8 to 4096 printable ASCII characters without spaces");
    if (rest.length || (access !== undefined && access !== "push" && access !== "pull"))
      throw new NixociError(`${path}:${n}`, 'expected "TOKEN", "TOKEN push" or "TOKEN pull"');
    tokens.set(token, access === "pull" ? "pull" : "push");
  }
  return tokens;
}

/** The cost (log2 rounds) of a bcrypt hash. */
export function bcryptCost(hash: string): number {
  return bcrypt.getRounds(hash);
}

/** The cost the dummy hash has: the highest of the file's entries (so no user name fails faster than a real one). */
export function dummyCost(users: ReadonlyMap<string, string>): number {
  let cost = 0;
  for (const hash of users.values()) cost = Math.max(cost, bcryptCost(hash));
  return cost || DEFAULT_COST;
}

/**
 * A bcrypt hash of `cost` that no password matches (random salt and digest): comparing with it costs what
 * comparing with a real hash of that cost does.
 */
export function dummyHash(cost: number): string {
  const chars = [...randomBytes(53)].map((b) => BCRYPT_ALPHABET[b & 63]).join("");
  return `$2b$${String(cost).padStart(2, "0")}$${chars}`;
}

/** Verified credentials: a bounded map, oldest first, entries expiring after ttlMs. */
class CredentialCache {
  private readonly entries = new Map<string, { access: Access; until: number }>();

  constructor(
    private readonly ttlMs: number,
    private readonly size: number,
  ) {}

  get(key: string): Access | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    if (e.until <= Date.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return e.access;
  }

  set(key: string, access: Access): void {
    this.entries.delete(key);
    while (this.entries.size >= this.size) {
      const oldest = this.entries.keys().next();
      if (oldest.done) break;
      this.entries.delete(oldest.value);
    }
    this.entries.set(key, { access, until: Date.now() + this.ttlMs });
  }

  clear(): void {
    this.entries.clear();
  }
}

function sha256(s: string | Buffer): Buffer {
  return createHash("sha256").update(s).digest();
}

function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(sha256(a), sha256(b));
}

function tooMany(
  seconds: number,
  message = "too many failed authentication attempts from this address; retry later",
): RegistryError {
  return registryError("TOOMANYREQUESTS", { message, headers: { "Retry-After": String(seconds) } });
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString("base64url");
}

class SpecAuth implements RegistryAuth {
  private readonly key = randomBytes(32);
  /** Verified credentials, by HMAC(key, user, password); cleared when the htpasswd file changes. */
  private readonly verified: CredentialCache;
  /** Password checks in progress, by the same key: identical concurrent checks share one comparison. */
  private readonly checking = new Map<string, Promise<boolean>>();
  private readonly limit: FailureLimit;
  private readonly compare: (password: string, hash: string) => Promise<boolean>;
  private dummy: string;
  readonly requirePull: boolean;
  readonly handleTokenRequest?: (req: IncomingMessage, res: ServerResponse, client?: string) => Promise<void>;

  constructor(
    private readonly htpasswd: WatchedFile<Map<string, string>> | undefined,
    private readonly tokens: WatchedFile<Map<string, Access>> | undefined,
    opts: AuthOptions,
  ) {
    this.requirePull = opts.requirePull;
    this.verified = new CredentialCache(opts.cacheTtlMs ?? 60_000, opts.cacheSize ?? 1000);
    this.limit = new FailureLimit({ max: opts.maxFailures, windowMs: opts.failureWindowMs });
    this.compare = opts.compare ?? bcryptCompare;
    this.dummy = dummyHash(dummyCost(htpasswd?.get() ?? new Map()));
    if (htpasswd)
      htpasswd.onChange = (users) => {
        this.verified.clear();
        this.dummy = dummyHash(dummyCost(users));
      };
    if (tokens) this.handleTokenRequest = (req, res, client) => this.tokenEndpoint(req, res, client);
  }

  // ---- credentials ----

  /** The access of Basic credentials, or undefined; `client` is the limiter's key. */
  private async password(user: string, password: string, client: string): Promise<Access | undefined> {
    const token = this.staticToken(password);
    if (token === "push" || !this.htpasswd) return token;
    const users = this.htpasswd.get(); // first: a changed file clears the cache
    const hash = users.get(user);
    // A token as the password of a user name not in the file: no comparison (success tells nothing).
    if (hash === undefined && token) return token;
    const key = createHmac("sha256", this.key).update(`${user}\0${password}`).digest("base64");
    if (hash !== undefined && this.verified.get(key)) return "push";
    let check = this.checking.get(key);
    if (!check) {
      const wait = this.limit.begin(client);
      if (wait !== undefined) throw tooMany(wait);
      // An unknown user costs the same as a wrong password: a comparison at the file's highest cost.
      check = this.compare(password, hash ?? this.dummy).then((ok) => ok && hash !== undefined);
      this.checking.set(key, check);
      const done = (): void => {
        this.checking.delete(key);
        this.limit.end(client);
      };
      check.then(done, done);
    }
    let ok: boolean;
    try {
      ok = await check;
    } catch (err) {
      if (err instanceof BcryptBusy) throw tooMany(1, "too many password checks waiting; retry later");
      throw err;
    }
    if (ok) {
      if (this.htpasswd.get() === users) this.verified.set(key, "push");
      return "push";
    }
    return token;
  }

  private staticToken(token: string): Access | undefined {
    let found: Access | undefined;
    for (const [t, access] of this.tokens?.get() ?? []) if (sameSecret(t, token)) found = access;
    return found;
  }

  private issue(sub: string, access: Access): string {
    const payload = b64url(
      JSON.stringify({ s: sub, a: access, e: Math.floor(Date.now() / 1000) + TOKEN_LIFETIME_S }),
    );
    return `nxo1.${payload}.${b64url(createHmac("sha256", this.key).update(payload).digest())}`;
  }

  private verifyIssued(token: string): { sub: string; access: Access } | undefined {
    const m = /^nxo1\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/.exec(token);
    if (!m) return undefined;
    const mac = createHmac("sha256", this.key).update(m[1]).digest();
    const given = Buffer.from(m[2], "base64url");
    if (given.length !== mac.length || !timingSafeEqual(given, mac)) return undefined;
    try {
      const p = JSON.parse(Buffer.from(m[1], "base64url").toString("utf8")) as {
        s?: unknown;
        a?: unknown;
        e?: unknown;
      };
      if (typeof p.e !== "number" || p.e * 1000 < Date.now()) return undefined;
      if (typeof p.s !== "string" || (p.a !== "pull" && p.a !== "push")) return undefined;
      return { sub: p.s, access: p.a };
    } catch {
      return undefined;
    }
  }

  /**
   * Who sent the request. Credentials from a client with too many recent failures are refused unchecked (429),
   * and every failure counts against the client: `client` when the server knows it (a trusted proxy's
   * X-Forwarded-For), else the connection's peer.
   */
  private async identify(req: IncomingMessage, clientAddress?: string): Promise<Identity> {
    const h = req.headers.authorization;
    if (!h || /^basic\s+(?:Og==)?\s*$/i.test(h)) return { kind: "anonymous" }; // none, or Basic ":"
    const client = clientKey(clientAddress ?? req.socket.remoteAddress);
    const wait = this.limit.blocked(client);
    if (wait !== undefined) throw tooMany(wait);
    const who = await this.credentials(h, client);
    if (who.kind === "bad") this.limit.fail(client);
    return who;
  }

  private async credentials(h: string, client: string): Promise<Identity> {
    const m = /^(\S+)\s+(\S*)\s*$/.exec(h);
    const scheme = m?.[1].toLowerCase();
    if (m && scheme === "basic") {
      const text = Buffer.from(m[2], "base64").toString("utf8");
      const i = text.indexOf(":");
      if (i < 0) return { kind: "bad", bearer: false, why: "malformed Basic credentials" };
      const user = text.slice(0, i);
      const password = text.slice(i + 1);
      if (user === "" && password === "") return { kind: "anonymous" };
      const access = await this.password(user, password, client);
      return access
        ? { kind: "user", name: user, access }
        : { kind: "bad", bearer: false, why: "invalid credentials" };
    }
    if (m && scheme === "bearer") {
      const issued = this.verifyIssued(m[2]);
      if (issued)
        return issued.sub === ""
          ? { kind: "anonymous" }
          : { kind: "user", name: issued.sub, access: issued.access };
      const access = this.staticToken(m[2]);
      return access
        ? { kind: "user", name: "token", access }
        : { kind: "bad", bearer: true, why: "invalid token" };
    }
    return { kind: "bad", bearer: false, why: "unsupported authorization scheme" };
  }

  // ---- challenges ----

  private challenge(req: IncomingMessage, action: Access, repo: string | undefined, error?: string): string {
    if (!this.tokens) return `Basic realm="${BASIC_REALM}"`;
    const host = /^[A-Za-z0-9.:[\]-]{1,255}$/.test(req.headers.host ?? "") ? req.headers.host : "localhost";
    const fwd = req.headers["x-forwarded-proto"];
    const proto = fwd === "https" || fwd === "http" ? fwd : "http";
    const parts = [`realm="${proto}://${host}/v2/token"`, `service="${SERVICE}"`];
    if (repo !== undefined)
      parts.push(`scope="repository:${repo}:${action === "push" ? "pull,push" : "pull"}"`);
    else if (action === "pull") parts.push(`scope="registry:catalog:*"`);
    if (error) parts.push(`error="${error}"`);
    return `Bearer ${parts.join(",")}`;
  }

  async verify(req: IncomingMessage, check: CredentialCheck, client?: string): Promise<void> {
    const { action, repo } = check;
    const who = await this.identify(req, client);
    if (who.kind === "user") {
      if (action === "push" && who.access !== "push")
        throw registryError("DENIED", {
          message: "requested access to the resource is denied (pull-only credentials)",
          detail: [{ Type: "repository", Name: repo, Action: action }],
        });
      return;
    }
    const [message, error] =
      who.kind === "anonymous"
        ? ["authentication required", undefined]
        : [`authentication failed: ${who.why}`, who.bearer ? "invalid_token" : undefined];
    const detail = repo !== undefined ? [{ Type: "repository", Name: repo, Action: action }] : undefined;
    throw registryError("UNAUTHORIZED", {
      message,
      detail,
      headers: {
        "WWW-Authenticate":
          check.challenge === "basic"
            ? `Basic realm="${BASIC_REALM}"`
            : this.challenge(req, action, repo, error),
      },
    });
  }

  // ---- the token endpoint ----

  private async tokenEndpoint(req: IncomingMessage, res: ServerResponse, client?: string): Promise<void> {
    const query = new URLSearchParams((req.url ?? "").split("?")[1] ?? "");
    const scopes = query.getAll("scope").flatMap((s) => s.split(" ").filter(Boolean));
    // Push is granted only when asked for (a scope with push or *), and only to credentials that have it.
    const wantsPush =
      scopes.length === 0 || scopes.some((s) => /:(?:[^:]*,)?(?:push|\*)(?:,[^:]*)?$/.test(s));
    const who = await this.identify(req, client);
    let sub: string;
    let access: Access;
    if (who.kind === "user") {
      sub = who.name || "token";
      access = who.access === "push" && wantsPush ? "push" : "pull";
    } else if (who.kind === "anonymous") {
      // An anonymous token, as public token servers give: it pulls where pulls are open, and with it the
      // registry itself answers 401 UNAUTHORIZED, which docker does not retry (a refused token request it does).
      sub = "";
      access = "pull";
    } else {
      throw registryError("UNAUTHORIZED", {
        message: `authentication failed: ${who.why}`,
        headers: { "WWW-Authenticate": `Basic realm="${BASIC_REALM}"` },
      });
    }
    const token = this.issue(sub, access);
    const body = Buffer.from(
      JSON.stringify({
        token,
        access_token: token,
        expires_in: TOKEN_LIFETIME_S,
        issued_at: new Date().toISOString(),
      }),
    );
    res.writeHead(200, {
      "Content-Type": "application/json",
      "Content-Length": String(body.length),
      "Cache-Control": "no-store",
    });
    res.end(body);
  }
}

/**
 * Parses `--auth SPEC` ("htpasswd:FILE", "tokens:FILE", or both joined with ","); reads and checks the files now
 * (NixociError on problems).
 */
export function parseAuthSpec(spec: string, opts: AuthOptions): RegistryAuth {
  const parts = spec.split(/,(?=(?:htpasswd|tokens):)/);
  let htpasswd: WatchedFile<Map<string, string>> | undefined;
  let tokens: WatchedFile<Map<string, Access>> | undefined;
  for (const part of parts) {
    const m = /^(htpasswd|tokens):(.+)$/.exec(part);
    if (!m) throw new NixociError(spec, 'expected "htpasswd:FILE", "tokens:FILE" or both joined with ","');
    if (m[1] === "htpasswd") {
      if (htpasswd) throw new NixociError(spec, "htpasswd given twice");
      htpasswd = new WatchedFile(m[2], parseHtpasswd);
    } else {
      if (tokens) throw new NixociError(spec, "tokens given twice");
      tokens = new WatchedFile(m[2], parseTokens);
    }
  }
  return new SpecAuth(htpasswd, tokens, opts);
}
