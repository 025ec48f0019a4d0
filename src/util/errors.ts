// One error type for everything that comes from bad input or a failed external operation. Its message is a
// single line that names the input and says what is wrong with it ("cache.narinfo: NarSize is missing"),
// so the CLI can print it as is and exit non-zero without a stack trace.
import { decodeFileName } from "./file-names.js";

export class NixociError extends Error {
  /** What the bad input was: a file name, a URL, a store path, "stdin"... */
  readonly input: string;

  constructor(input: string, problem: string, options?: { cause?: unknown }) {
    super(`${input}: ${oneLine(problem)}`, options);
    this.name = "NixociError";
    this.input = input;
  }
}

/** Collapses whitespace so an error message (which may quote untrusted input) stays on one line. */
export function oneLine(s: string): string {
  // eslint-disable-next-line no-control-regex -- replacing control characters is the point
  return s.replace(/[\r\n\t]+/g, " ").replace(/[\x00-\x1f\x7f]/g, "?");
}

/**
 * Quotes untrusted bytes/strings for an error message: JSON-escaped and cut to a sane length. Bytes read as UTF-8,
 * those that are not shown as escapes ("\udce9" for the byte 0xe9: util/file-names.ts).
 */
export function quote(s: string | Buffer, max = 80): string {
  const str = typeof s === "string" ? s : decodeFileName(s);
  const cut = str.length > max ? str.slice(0, max) + "…" : str;
  return JSON.stringify(cut);
}
