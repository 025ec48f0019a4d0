// Errors of the registry API: one of the distribution spec's error codes with its HTTP status, sent as
// {"errors":[{"code","message","detail"}]}. Each code is registered once below (as distribution's
// registry/api/errcode does) with the status it is answered with and a default message; code raises errors with
// `registryError(code, ...)`, so no call site restates which status goes with which code. Handlers (and
// manifest sources, and auth) throw RegistryError; the server turns it into the response. Anything else thrown
// is an internal error (500 UNKNOWN, logged).

interface ErrorSpec {
  /** The status the code is answered with. */
  readonly status: number;
  /** Other statuses some answers give it (each named at its call site with `status`). */
  readonly also?: readonly number[];
  /** The message when a call gives none. */
  readonly message: string;
}

/**
 * The error codes of the OCI distribution spec, plus: PAGINATION_NUMBER_INVALID (docker-registry's, a bad `n`),
 * RANGE_INVALID (416 for a blob Range out of bounds), NOT_FOUND (no such route), UNKNOWN (500).
 */
export const ERROR_CODES = {
  BLOB_UNKNOWN: { status: 404, message: "blob unknown to registry" },
  /** Upload chunks that do not fit (a malformed Content-Range, a chunk out of order): 416 with the upload's Range. */
  BLOB_UPLOAD_INVALID: { status: 416, message: "blob upload invalid" },
  BLOB_UPLOAD_UNKNOWN: { status: 404, message: "blob upload unknown to registry" },
  DIGEST_INVALID: { status: 400, message: "invalid digest" },
  /** 400 on a manifest PUT, as docker-registry answers. */
  MANIFEST_BLOB_UNKNOWN: { status: 400, message: "manifest references a blob unknown to registry" },
  MANIFEST_INVALID: { status: 400, message: "manifest invalid" },
  MANIFEST_UNKNOWN: { status: 404, message: "manifest unknown to registry" },
  NAME_INVALID: { status: 400, message: "invalid repository name" },
  NAME_UNKNOWN: { status: 404, message: "repository name not known to registry" },
  /** 400 for a chunk whose length is not its Content-Range's; 413 for a body over a limit. */
  SIZE_INVALID: { status: 400, also: [413], message: "provided length did not match content length" },
  UNAUTHORIZED: { status: 401, message: "authentication required" },
  DENIED: { status: 403, message: "requested access to the resource is denied" },
  /** 405 for a method a route does not have; 400 for a digest algorithm other than sha256. */
  UNSUPPORTED: { status: 405, also: [400], message: "the operation is unsupported" },
  TOOMANYREQUESTS: { status: 429, message: "too many requests" },
  PAGINATION_NUMBER_INVALID: { status: 400, message: "invalid number of results requested" },
  RANGE_INVALID: { status: 416, message: "requested range not satisfiable" },
  NOT_FOUND: { status: 404, message: "not found" },
  /** 408 for a body too slow, 503 for a build stopped by the server's shutdown, 504 for a build over its time
   * limit, 507 for a full disk. */
  UNKNOWN: { status: 500, also: [408, 503, 504, 507], message: "internal server error" },
} as const satisfies Record<string, ErrorSpec>;

export type RegistryErrorCode = keyof typeof ERROR_CODES;

/** The statuses a code may be raised with other than its own. */
type OtherStatus<C extends RegistryErrorCode> = (typeof ERROR_CODES)[C] extends { also: readonly (infer S)[] }
  ? S
  : never;

export class RegistryError extends Error {
  /** Extra response headers (WWW-Authenticate for 401, Range and Location for 416 on uploads...). */
  readonly headers: Record<string, string>;

  constructor(
    readonly status: number,
    readonly code: RegistryErrorCode | (string & {}),
    message: string,
    readonly detail?: unknown,
    headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "RegistryError";
    this.headers = { ...headers };
  }

  /** The JSON body the spec defines for errors. */
  body(): Buffer {
    const e: { code: string; message: string; detail?: unknown } = { code: this.code, message: this.message };
    if (this.detail !== undefined) e.detail = this.detail;
    return Buffer.from(JSON.stringify({ errors: [e] }));
  }
}

/**
 * The error for `code`, with the status and message the table gives it unless the call gives its own message,
 * or (for the codes registered with other statuses) one of those.
 */
export function registryError<C extends RegistryErrorCode>(
  code: C,
  opts: {
    message?: string;
    detail?: unknown;
    headers?: Record<string, string>;
    status?: OtherStatus<C>;
  } = {},
): RegistryError {
  const spec: ErrorSpec = ERROR_CODES[code];
  return new RegistryError(
    (opts.status as number | undefined) ?? spec.status,
    code,
    opts.message ?? spec.message,
    opts.detail,
    opts.headers,
  );
}

export function isRegistryError(err: unknown): err is RegistryError {
  return err instanceof RegistryError;
}
