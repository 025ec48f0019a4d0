// A registry session for one repository (RegistryClient): the OCI distribution API's blob and manifest calls
// (HEAD/GET/PUT, cross-repository mount, monolithic or chunked uploads), each sent with the authorization its
// scopes need (a 401 is answered once through registry-auth.ts and the request retried) over a keep-alive
// connection pool, and each failure turned into a NixociError naming the repository and what failed. It does
// one call at a time on the caller's behalf; what to push in which order is push.ts's job.
import { createReadStream } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { Readable } from "node:stream";
import { collectBounded } from "../util/streams.js";
import { NixociError, quote } from "../util/errors.js";
import { RegistryAuth, resolveCredentials } from "./registry-auth.js";
import {
  describeError,
  errnoMessage,
  header,
  httpGetStream,
  httpRequest,
  registryBaseUrl,
  type HttpResponse,
  type RequestInit,
} from "./registry-transport.js";

export interface RegistryClientOptions {
  /** USER:PASS; else Docker's config.json; else anonymous. */
  creds?: string;
  /** Plain HTTP even for hosts other than localhost/127.0.0.1/[::1]. */
  insecure?: boolean;
  /** Requests the caller runs at once (default 3); the connection pool holds two sockets more. */
  concurrency?: number;
  /** Socket idle timeout per request (default 120 s). */
  timeoutMs?: number;
  /** Environment for credentials (default process.env). */
  env?: NodeJS.ProcessEnv;
}

/** A registry session for one repository: requests with authentication and error reporting. */
export class RegistryClient {
  readonly base: string;
  readonly input: string;
  private readonly agent: http.Agent;
  private auth: RegistryAuth | undefined;
  private readonly pullPush: string[];

  constructor(
    readonly registry: string,
    readonly repository: string,
    private readonly opts: RegistryClientOptions = {},
  ) {
    this.base = registryBaseUrl(registry, opts.insecure);
    this.input = `${registry}/${repository}`;
    const Agent = this.base.startsWith("https:") ? https.Agent : http.Agent;
    this.agent = new Agent({ keepAlive: true, maxSockets: (opts.concurrency ?? 3) + 2 });
    this.pullPush = [`repository:${repository}:pull,push`];
  }

  close(): void {
    this.agent.destroy();
  }

  private async getAuth(): Promise<RegistryAuth> {
    if (!this.auth) {
      const creds = await resolveCredentials(this.registry, this.opts.creds, this.opts.env);
      this.auth = new RegistryAuth(this.registry, creds, (url, headers) =>
        httpRequest(url, { method: "GET", headers }, undefined, this.opts.timeoutMs),
      );
    }
    return this.auth;
  }

  /** Resolves a path or a Location header against the registry. */
  url(pathOrLocation: string): URL {
    return new URL(pathOrLocation, this.base);
  }

  /**
   * Sends a request with the current authorization for `scopes`; on 401 answers the challenge and retries once.
   * Network failures become NixociErrors saying `what` failed.
   */
  async request(url: URL, init: RequestInit, what: string, scopes = this.pullPush): Promise<HttpResponse> {
    const auth = await this.getAuth();
    const sameOrigin = url.origin === new URL(this.base).origin;
    for (let attempt = 0; ; attempt++) {
      if (sameOrigin && auth.needsToken(scopes)) await auth.token(scopes, this.input);
      const headers = { ...init.headers };
      const authz = sameOrigin ? auth.header(scopes) : undefined;
      if (authz) headers.Authorization = authz;
      let res: HttpResponse;
      try {
        res = await httpRequest(url, { ...init, headers }, this.agent, this.opts.timeoutMs);
      } catch (err) {
        if (err instanceof NixociError) throw err;
        throw new NixociError(this.input, `${what} failed: ${errnoMessage(err)}`, { cause: err });
      }
      if (res.status === 401 && sameOrigin && attempt === 0) {
        await auth.answer(header(res.headers, "www-authenticate"), scopes, this.input, describeError(res));
        continue;
      }
      if (res.status === 401) {
        if (!auth.credentials)
          throw new NixociError(this.input, `authentication required (${describeError(res)})`);
        throw new NixociError(this.input, `${what} failed: authentication failed (${describeError(res)})`);
      }
      return res;
    }
  }

  private fail(what: string, res: HttpResponse): never {
    throw new NixociError(this.input, `${what} failed: ${describeError(res)}`);
  }

  /** Checks the API is there (and settles the authentication scheme). */
  async ping(): Promise<void> {
    const res = await this.request(this.url("/v2/"), { method: "GET" }, "registry check");
    if (res.status !== 200) this.fail("registry check", res);
  }

  async hasBlob(digest: string, signal?: AbortSignal): Promise<boolean> {
    const res = await this.request(
      this.url(`/v2/${this.repository}/blobs/${digest}`),
      { method: "HEAD", signal },
      "blob check",
    );
    if (res.status === 200) return true;
    if (res.status === 404) return false;
    // Registries with redirecting storage answer HEAD of an existing blob with a redirect to it.
    if (res.status >= 301 && res.status <= 308 && res.status !== 304 && header(res.headers, "location"))
      return true;
    return this.fail(`blob check of ${digest}`, res);
  }

  /**
   * Tries a cross-repository mount: "mounted" (201), else the upload session the registry opened instead
   * (202 + Location), else undefined (refused; start an upload normally).
   */
  async mountBlob(digest: string, from: string, signal?: AbortSignal): Promise<"mounted" | URL | undefined> {
    const url = this.url(
      `/v2/${this.repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`,
    );
    let res: HttpResponse;
    try {
      res = await this.request(url, { method: "POST", signal }, "blob mount", [
        ...this.pullPush,
        `repository:${from}:pull`,
      ]);
    } catch (err) {
      if (signal?.aborted) throw err;
      return undefined;
    }
    if (res.status === 201) return "mounted";
    const loc = header(res.headers, "location");
    if (res.status === 202 && loc) {
      this.noteMinChunk(res);
      return this.url(loc);
    }
    return undefined;
  }

  async startUpload(signal?: AbortSignal): Promise<URL> {
    const res = await this.request(
      this.url(`/v2/${this.repository}/blobs/uploads/`),
      { method: "POST", signal },
      "blob upload",
    );
    const loc = header(res.headers, "location");
    if (res.status !== 202) this.fail("blob upload", res);
    if (!loc) throw new NixociError(this.input, "blob upload failed: the registry gave no upload Location");
    this.noteMinChunk(res);
    return this.url(loc);
  }

  /** OCI distribution 1.1: a registry may require chunks of at least OCI-Chunk-Min-Length bytes. */
  private minChunk = 0;
  private noteMinChunk(res: HttpResponse): void {
    const v = Number(header(res.headers, "oci-chunk-min-length"));
    if (Number.isSafeInteger(v) && v > this.minChunk) this.minChunk = v;
  }

  /**
   * Uploads a blob (a file, streamed; or bytes) into an upload session: one PUT up to `monolithicLimit`,
   * else PATCH chunks with Content-Range and a closing PUT.
   */
  async uploadBlob(
    session: URL,
    source: string | Buffer,
    digest: string,
    size: number,
    opts: { monolithicLimit: number; chunkSize: number; signal?: AbortSignal; onSent?: (n: number) => void },
  ): Promise<void> {
    const file = typeof source === "string" ? source : undefined;
    const slice = (start: number, end: number): Buffer | (() => Readable) =>
      end < start
        ? Buffer.alloc(0)
        : file
          ? () => createReadStream(file, { start, end, highWaterMark: 1 << 20 })
          : (source as Buffer).subarray(start, end + 1);
    const what = `blob upload of ${digest}`;
    let location = session;
    if (size > opts.monolithicLimit) {
      const chunkSize = Math.max(opts.chunkSize, this.minChunk);
      for (let start = 0; start < size; start += chunkSize) {
        const end = Math.min(size, start + chunkSize) - 1;
        const res = await this.request(
          location,
          {
            method: "PATCH",
            headers: {
              "Content-Type": "application/octet-stream",
              "Content-Length": String(end - start + 1),
              "Content-Range": `${start}-${end}`,
            },
            body: slice(start, end),
            signal: opts.signal,
            onSent: (n) => opts.onSent?.(start + n),
          },
          what,
        );
        if (res.status !== 202) this.fail(what, res);
        const range = header(res.headers, "range");
        const m = range ? /^(?:bytes=)?0-(\d+)$/.exec(range) : null;
        if (range && (!m || Number(m[1]) !== end))
          throw new NixociError(
            this.input,
            `${what} failed: the registry has range ${quote(range)} after 0-${end}`,
          );
        const loc = header(res.headers, "location");
        if (loc) location = this.url(loc);
      }
      const res = await this.request(
        withQuery(location, "digest", digest),
        { method: "PUT", headers: { "Content-Length": "0" }, signal: opts.signal },
        what,
      );
      if (res.status !== 201 && res.status !== 204) this.fail(what, res);
    } else {
      const res = await this.request(
        withQuery(location, "digest", digest),
        {
          method: "PUT",
          headers: { "Content-Type": "application/octet-stream", "Content-Length": String(size) },
          body: slice(0, size - 1),
          signal: opts.signal,
          onSent: opts.onSent,
        },
        what,
      );
      if (res.status !== 201 && res.status !== 204) this.fail(what, res);
    }
    // The registry verified the content against ?digest= itself (DIGEST_INVALID otherwise).
  }

  /** PUTs manifest bytes under a tag or digest; returns the registry's digest for them. */
  async putManifest(reference: string, bytes: Buffer, mediaType: string, expected: string): Promise<string> {
    return (await this.sendManifest(reference, bytes, mediaType, expected)).digest;
  }

  /**
   * PUTs manifest bytes as putManifest does; also returns the registry's OCI-Subject header, which a registry
   * with the referrers API sends for a manifest with a subject (its absence means the tag-schema fallback).
   */
  async sendManifest(
    reference: string,
    bytes: Buffer,
    mediaType: string,
    expected: string,
  ): Promise<{ digest: string; subject?: string }> {
    const res = await this.request(
      this.url(`/v2/${this.repository}/manifests/${reference}`),
      { method: "PUT", headers: { "Content-Type": mediaType }, body: bytes },
      "manifest push",
    );
    if (res.status !== 201 && res.status !== 200 && res.status !== 202) this.fail("manifest push", res);
    const got = header(res.headers, "docker-content-digest");
    if (got && got !== expected)
      throw new NixociError(
        this.input,
        `manifest push: the registry stored the manifest as ${quote(got)}, not ${expected} (did it rewrite it?)`,
      );
    const subject = header(res.headers, "oci-subject");
    return { digest: got ?? expected, ...(subject ? { subject } : {}) };
  }

  /**
   * GETs a blob as a stream, following a redirect to the registry's storage (sent there without our
   * Authorization). A HEAD first settles the authorization (a 401 is answered there), so the GET that streams
   * goes out authorized and is never retried. The caller verifies the bytes against the digest.
   */
  async openBlob(digest: string): Promise<Readable> {
    const scopes = [`repository:${this.repository}:pull`];
    const what = `blob fetch of ${digest}`;
    let url = this.url(`/v2/${this.repository}/blobs/${digest}`);
    const head = await this.request(url, { method: "HEAD" }, what, scopes);
    if (head.status === 404)
      throw new NixociError(this.input, `${what} failed: the registry has no such blob`);
    const auth = await this.getAuth();
    for (let hops = 0; hops <= 5; hops++) {
      const sameOrigin = url.origin === new URL(this.base).origin;
      const authz = sameOrigin ? auth.header(scopes) : undefined;
      let res: http.IncomingMessage;
      try {
        res = await httpGetStream(
          url,
          authz ? { Authorization: authz } : {},
          sameOrigin ? this.agent : undefined,
          this.opts.timeoutMs,
        );
      } catch (err) {
        throw new NixociError(this.input, `${what} failed: ${errnoMessage(err)}`, { cause: err });
      }
      const status = res.statusCode ?? 0;
      if (status === 200) return res;
      const loc = header(res.headers, "location");
      if (status >= 301 && status <= 308 && status !== 304 && loc) {
        res.resume();
        url = new URL(loc, url);
        continue;
      }
      const body = await collectBounded(res, 64 << 10).catch(() => Buffer.alloc(0));
      this.fail(what, { status, headers: res.headers, body });
    }
    throw new NixociError(this.input, `${what} failed: too many redirects`);
  }

  /** GETs a manifest's exact bytes (for checks and tools). */
  async getManifest(
    reference: string,
    accept: string[],
  ): Promise<{ bytes: Buffer; mediaType: string; digest?: string }> {
    return (await this.fetchManifest(reference, accept, false))!;
  }

  /** GETs a manifest's exact bytes; undefined when the registry has none under `reference` (404). */
  findManifest(
    reference: string,
    accept: string[],
  ): Promise<{ bytes: Buffer; mediaType: string; digest?: string } | undefined> {
    return this.fetchManifest(reference, accept, true);
  }

  private async fetchManifest(
    reference: string,
    accept: string[],
    missingOk: boolean,
  ): Promise<{ bytes: Buffer; mediaType: string; digest?: string } | undefined> {
    const res = await this.request(
      this.url(`/v2/${this.repository}/manifests/${reference}`),
      { method: "GET", headers: { Accept: accept.join(", ") } },
      "manifest fetch",
      [`repository:${this.repository}:pull`],
    );
    if (res.status === 404 && missingOk) return undefined;
    if (res.status !== 200) this.fail("manifest fetch", res);
    return {
      bytes: res.body,
      mediaType: header(res.headers, "content-type") ?? "",
      digest: header(res.headers, "docker-content-digest"),
    };
  }
}

function withQuery(u: URL, key: string, value: string): URL {
  // Appended by hand: re-serialising searchParams would re-encode the registry's own state parameters.
  const s = u.toString();
  return new URL(`${s}${u.search ? "&" : "?"}${key}=${encodeURIComponent(value)}`);
}
