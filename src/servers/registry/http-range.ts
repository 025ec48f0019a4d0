// Byte ranges (RFC 9110 section 14), one reading for every endpoint of `nixoci serve` that supports them (the
// registry's blob GETs and the binary cache's uncompressed NARs). The one satisfiable range of a range set is
// served (206, one part); a range set none of whose ranges is satisfiable gets 416 with
// "Content-Range: bytes */SIZE"; everything else is served whole (200), as section 14.2 allows ("a server MAY
// ignore the Range header field"):
//   - Range on a method other than GET (14.2: GET is the only method range handling is defined for),
//   - an If-Range whose validator is not the representation's strong ETag (13.1.5: "MUST ignore the Range"),
//   - another unit than bytes (compared case-insensitively, 14.1), and an invalid range set: bad syntax, or a
//     range whose last position is before its first (14.1.1: invalid, which a server MAY ignore or reject),
//   - several satisfiable ranges (no multipart/byteranges here),
//   - a suffix range of an empty representation (satisfiable by 14.1.1, but no Content-Range can name it).
// Positions of any length are accepted: a first position beyond 2^53 is still beyond the end (416), a last one
// is cut to the end like any other.
//
// Also the ranges of blob uploads (the distribution spec's, not RFC 9110's): the Content-Range of a chunk pushed,
// and the Range header that tells the client how much of an upload the registry has.
import type { IncomingMessage } from "node:http";

/** The inclusive byte range to send, "unsatisfiable" (answer 416), or undefined (send everything). */
export type RangeResult = { start: number; end: number } | "unsatisfiable" | undefined;

/** Range sets with more ranges than this are ignored (14.2 allows ignoring "many small ranges"). */
const MAX_RANGES = 100;

/**
 * The Range header against a representation of `size` bytes (the rules above that depend on the header
 * alone).
 */
export function parseRange(header: string | undefined, size: number): RangeResult {
  if (header === undefined) return undefined;
  const m = /^bytes=(.*)$/i.exec(header.trim());
  if (!m) return undefined;
  // A list (the #rule): elements separated by commas with optional whitespace; empty elements are skipped.
  const specs = m[1]
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (specs.length === 0 || specs.length > MAX_RANGES) return undefined;
  const satisfiable: { start: number; end: number }[] = [];
  let ignored = false;
  for (const spec of specs) {
    const r = /^(\d*)-(\d*)$/.exec(spec);
    if (!r || (r[1] === "" && r[2] === "")) return undefined; // invalid: the whole set is
    if (r[1] === "") {
      const n = Number(r[2]);
      if (n === 0) continue; // a zero-length suffix is not satisfiable
      if (size === 0) ignored = true;
      else satisfiable.push({ start: Math.max(0, size - n), end: size - 1 });
      continue;
    }
    const start = Number(r[1]);
    const last = r[2] === "" ? Infinity : Number(r[2]);
    if (last < start) return undefined; // invalid
    if (start < size) satisfiable.push({ start, end: Math.min(last, size - 1) });
  }
  if (satisfiable.length === 0) return ignored ? undefined : "unsatisfiable";
  return satisfiable.length === 1 && !ignored ? satisfiable[0] : undefined;
}

/**
 * The range a request asks for (GET only; If-Range honoured against `etag`, the representation's strong ETag
 * with its quotes, when it has one), against a representation of `size` bytes.
 */
export function requestedRange(req: IncomingMessage, size: number, etag?: string): RangeResult {
  if (req.method !== "GET") return undefined;
  const header = req.headers.range;
  if (header === undefined) return undefined;
  const ifRange = req.headers["if-range"];
  // A date validator needs a Last-Modified (these responses have none); an entity tag matches strongly only.
  if (ifRange !== undefined && (etag === undefined || String(ifRange).trim() !== etag)) return undefined;
  return parseRange(header, size);
}

/** Content-Range of a PATCH/PUT chunk: "start-end" (inclusive), also "bytes start-end[/total]"; null if malformed. */
export function parseContentRange(header: string): { start: number; end: number } | null {
  const m = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/.exec(header.trim());
  if (!m) return null;
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start - 1) return null;
  return { start, end };
}

/** The Range header of an upload of `size` bytes ("0-<last byte>", and "0-0" while empty, as docker-registry). */
export function uploadRange(size: number): string {
  return `0-${Math.max(0, size - 1)}`;
}
