// Errors of the registry API: a status and one of the distribution spec's error codes, sent as
// {"errors":[{"code","message","detail"}]}. Handlers (and manifest sources, and auth) throw RegistryError; the
// server turns it into the response. Anything else thrown is an internal error (500 UNKNOWN, logged).

/**
 * The error codes of the OCI distribution spec, plus: PAGINATION_NUMBER_INVALID (docker-registry's, a bad `n`),
 * RANGE_INVALID (416 for a blob Range out of bounds), NOT_FOUND (no such route), UNKNOWN (500).
 */
export type RegistryErrorCode =
  | "BLOB_UNKNOWN"
  | "BLOB_UPLOAD_INVALID"
  | "BLOB_UPLOAD_UNKNOWN"
  | "DIGEST_INVALID"
  | "MANIFEST_BLOB_UNKNOWN"
  | "MANIFEST_INVALID"
  | "MANIFEST_UNKNOWN"
  | "NAME_INVALID"
  | "NAME_UNKNOWN"
  | "SIZE_INVALID"
  | "UNAUTHORIZED"
  | "DENIED"
  | "UNSUPPORTED"
  | "TOOMANYREQUESTS"
  | "PAGINATION_NUMBER_INVALID"
  | "RANGE_INVALID"
  | "NOT_FOUND"
  | "UNKNOWN";

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

export function isRegistryError(err: unknown): err is RegistryError {
  return err instanceof RegistryError;
}
