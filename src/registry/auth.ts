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
// Pulls need credentials only with requirePull; a push always needs push access (401 without credentials or
// with wrong ones, 403 DENIED with pull-only ones). The API root (GET /v2/, docker login) answers 401 to
// requests without valid credentials even when pulls are open: clients learn the challenge there (docker sends
// credentials later only to registries whose /v2/ challenged it). Files are re-read when they change.
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import bcrypt from "bcryptjs";
import { NixociError, quote } from "../util/errors.js";
import { RegistryError } from "./errors.js";

export interface RegistryAuth {
  /** throws RegistryError 401 with the right WWW-Authenticate header info, or 403 DENIED */
  check(req: IncomingMessage, action: "pull" | "push", repo: string | undefined): Promise<void>;
  /**
   * The API root (GET /v2/): 401 unless the request carries valid credentials, whatever the pull policy.
   * Optional: without it the server uses check(req, "pull", undefined).
   */
  checkLogin?(req: IncomingMessage): Promise<void>;
  /** GET /v2/token (the token endpoint), when this auth offers one. */
  handleTokenRequest?(req: IncomingMessage, res: ServerResponse): Promise<void>;
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
const TOKEN_RE = /^[\x21-\x7e]{8,4096}$/;

/** A file re-read (at most every 2 s) when its mtime or size changes; a broken new version keeps the old one. */
class WatchedFile<T> {
  private value: T;
  private stamp: string;
  private checked = Date.now();

  constructor(
    readonly path: string,
    private readonly parse: (text: string, path: string) => T,
  ) {
    this.stamp = this.currentStamp();
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      throw new NixociError(path, `cannot read: ${(err as Error).message}`);
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
      }
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

function sha256(s: string | Buffer): Buffer {
  return createHash("sha256").update(s).digest();
}

function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(sha256(a), sha256(b));
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString("base64url");
}

class SpecAuth implements RegistryAuth {
  private readonly key = randomBytes(32);
  /** sha256(user, password) -> expiry of a positive bcrypt check (bcrypt is slow by design). */
  private readonly verified = new Map<string, number>();
  private readonly dummyHash = bcrypt.hashSync("nixoci-dummy", 4);
  readonly handleTokenRequest?: (req: IncomingMessage, res: ServerResponse) => Promise<void>;

  constructor(
    private readonly htpasswd: WatchedFile<Map<string, string>> | undefined,
    private readonly tokens: WatchedFile<Map<string, Access>> | undefined,
    private readonly requirePull: boolean,
  ) {
    if (tokens) this.handleTokenRequest = (req, res) => this.tokenEndpoint(req, res);
  }

  // ---- credentials ----

  private async password(user: string, password: string): Promise<Access | undefined> {
    const hash = this.htpasswd?.get().get(user);
    if (hash !== undefined) {
      const key = sha256(`${user}\0${password}\0${hash}`).toString("hex");
      const until = this.verified.get(key);
      if (until !== undefined && until > Date.now()) return "push";
      if (await bcrypt.compare(password, hash)) {
        if (this.verified.size > 1000) this.verified.clear();
        this.verified.set(key, Date.now() + 60_000);
        return "push";
      }
    } else if (this.htpasswd) {
      await bcrypt.compare(password, this.dummyHash); // same work whether the user exists or not
    }
    return this.staticToken(password);
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

  private async identify(req: IncomingMessage): Promise<Identity> {
    const h = req.headers.authorization;
    if (!h) return { kind: "anonymous" };
    const m = /^(\S+)\s+(\S*)\s*$/.exec(h);
    const scheme = m?.[1].toLowerCase();
    if (m && scheme === "basic") {
      const text = Buffer.from(m[2], "base64").toString("utf8");
      const i = text.indexOf(":");
      if (i < 0) return { kind: "bad", bearer: false, why: "malformed Basic credentials" };
      const user = text.slice(0, i);
      const password = text.slice(i + 1);
      if (user === "" && password === "") return { kind: "anonymous" };
      const access = await this.password(user, password);
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

  private unauthorized(
    req: IncomingMessage,
    action: Access,
    repo: string | undefined,
    message: string,
    error?: string,
  ): RegistryError {
    const detail = repo !== undefined ? [{ Type: "repository", Name: repo, Action: action }] : undefined;
    return new RegistryError(401, "UNAUTHORIZED", message, detail, {
      "WWW-Authenticate": this.challenge(req, action, repo, error),
    });
  }

  async check(req: IncomingMessage, action: Access, repo: string | undefined): Promise<void> {
    if (action === "pull" && !this.requirePull) return;
    const who = await this.identify(req);
    if (who.kind === "anonymous") throw this.unauthorized(req, action, repo, "authentication required");
    if (who.kind === "bad")
      throw this.unauthorized(
        req,
        action,
        repo,
        `authentication failed: ${who.why}`,
        who.bearer ? "invalid_token" : undefined,
      );
    if (action === "push" && who.access !== "push") {
      throw new RegistryError(
        403,
        "DENIED",
        "requested access to the resource is denied (pull-only credentials)",
        [{ Type: "repository", Name: repo, Action: action }],
      );
    }
  }

  async checkLogin(req: IncomingMessage): Promise<void> {
    const who = await this.identify(req);
    if (who.kind === "anonymous") throw this.unauthorized(req, "pull", undefined, "authentication required");
    if (who.kind === "bad")
      throw this.unauthorized(
        req,
        "pull",
        undefined,
        `authentication failed: ${who.why}`,
        who.bearer ? "invalid_token" : undefined,
      );
  }

  // ---- the token endpoint ----

  private async tokenEndpoint(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const query = new URLSearchParams((req.url ?? "").split("?")[1] ?? "");
    const scopes = query.getAll("scope").flatMap((s) => s.split(" ").filter(Boolean));
    // Push is granted only when asked for (a scope with push or *), and only to credentials that have it.
    const wantsPush =
      scopes.length === 0 || scopes.some((s) => /:(?:[^:]*,)?(?:push|\*)(?:,[^:]*)?$/.test(s));
    const who = await this.identify(req);
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
      throw new RegistryError(401, "UNAUTHORIZED", `authentication failed: ${who.why}`, undefined, {
        "WWW-Authenticate": `Basic realm="${BASIC_REALM}"`,
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
export function parseAuthSpec(spec: string, opts: { requirePull: boolean }): RegistryAuth {
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
  return new SpecAuth(htpasswd, tokens, opts.requirePull);
}
