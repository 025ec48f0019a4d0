// Logs for every daemon (serve, snapshotter, image service), one record per line on stderr by default, in one of
// two formats:
//   json  {"time":"2024-01-01T00:00:00.000Z","level":"info","msg":"request","method":"GET","path":"/v2/",...}
//         "time", "level" and "msg" come first and cannot be overridden by fields. Errors become
//         {"name","message"} (plus "code" when there is one); bigints become strings; values that cannot be
//         written (cycles, functions) are left out, so a log call never throws.
//   text  20:41:03 INFO  listening address=127.0.0.1:5000 storage=/var/lib/nixoci
//         local time (HH:MM:SS), the level in capitals padded to five, the message, then the fields as key=value:
//         strings bare when they hold no space, quote, backslash, "=" or control character, else JSON-quoted;
//         errors as their message (and code); objects and arrays as JSON. A record may carry a human line of its
//         own under the TEXT key (a request: "GET /v2/... 200 13ms 127.0.0.1 skopeo/1.13"), which stands for its
//         message and the call's fields; fields a child logger adds still follow it. Control characters (C0, DEL,
//         C1) never reach the terminal: they are written as escapes.
// The default format is text when the stream is a terminal (a person reads it), json otherwise (a log collector or
// a file reads it).

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFormat = "text" | "json";
export type LogFields = Readonly<Record<string | symbol, unknown>>;

/**
 * The key of a record's human line in the text format (a string), standing for its message and the call's fields;
 * the json format leaves it out (JSON has no symbol keys).
 */
export const TEXT: unique symbol = Symbol("nixoci.log.text");

const RANK: Record<LogLevel | "silent", number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };
const FORMATS: readonly string[] = ["text", "json"] satisfies LogFormat[];

export interface Logger {
  readonly level: LogLevel | "silent";
  readonly format: LogFormat;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** True if messages of `level` are written. */
  enabled(level: LogLevel): boolean;
  /** A logger that adds `fields` to every line (the call's own fields win). */
  child(fields: LogFields): Logger;
}

export interface LogStream {
  write(line: string): unknown;
  /** A terminal: the default format is text. */
  isTTY?: boolean;
}

export interface LoggerOptions {
  /** The least severe level written (default "info"); "silent" writes nothing. */
  level?: LogLevel | "silent";
  /** Where lines go (default process.stderr). */
  stream?: LogStream;
  /** The format (default: defaultLogFormat(stream)). */
  format?: LogFormat;
  /** The clock (for tests). */
  now?: () => Date;
}

/** Parses a level name (e.g. from --log-level), or undefined. */
export function parseLogLevel(s: string): LogLevel | "silent" | undefined {
  return Object.hasOwn(RANK, s) ? (s as LogLevel | "silent") : undefined;
}

/** Parses a format name (e.g. from --log-format), or undefined. */
export function parseLogFormat(s: string): LogFormat | undefined {
  return FORMATS.includes(s) ? (s as LogFormat) : undefined;
}

/** text for a terminal, json for anything else (a pipe, a file, a journal). */
export function defaultLogFormat(stream: LogStream = process.stderr): LogFormat {
  return stream.isTTY ? "text" : "json";
}

function errorFields(err: Error): Record<string, unknown> {
  const out: Record<string, unknown> = { name: err.name, message: err.message };
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== undefined) out.code = code;
  return out;
}

/** JSON of `record`, skipping what JSON cannot say; cycles are cut at their second visit. */
function toJson(record: unknown): string {
  const stack: unknown[] = [];
  return (
    (JSON.stringify(record, function (this: unknown, _key: string, value: unknown) {
      if (typeof value === "bigint") return value.toString();
      if (value instanceof Error) return errorFields(value);
      if (typeof value === "object" && value !== null) {
        // `this` is the object holding `value`: unwind the path to it, then see if `value` is on it.
        while (stack.length && stack[stack.length - 1] !== this) stack.pop();
        if (stack.includes(value)) return "[circular]";
        stack.push(value);
      }
      return value;
    }) as string | undefined) ?? "null"
  );
}

// C0 controls, DEL and C1 controls (which a terminal may act on: ESC, CSI), and the Unicode line separators.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;
// eslint-disable-next-line no-control-regex
const BARE = /^[^\s"\\=\u0000-\u001f\u007f-\u009f]+$/;

/** `s` with its control characters written as \uXXXX escapes (JSON's spelling), so a line stays one line. */
export function escapeControls(s: string): string {
  return s.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** A string as a text-format value: bare when unambiguous, else JSON-quoted (control characters escaped). */
export function textValue(s: string): string {
  return BARE.test(s) ? s : escapeControls(JSON.stringify(s));
}

function textField(value: unknown): string {
  if (typeof value === "string") return textValue(value);
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint")
    return String(value);
  if (value instanceof Error) {
    const code = (value as NodeJS.ErrnoException).code;
    return textValue(code !== undefined ? `${value.message} (${String(code)})` : value.message);
  }
  return escapeControls(toJson(value));
}

const two = (n: number): string => String(n).padStart(2, "0");

/** One text-format line (without its newline). */
function textLine(time: Date, lvl: LogLevel, head: string, fields: [string, unknown][]): string {
  const clock = `${two(time.getHours())}:${two(time.getMinutes())}:${two(time.getSeconds())}`;
  let line = `${clock} ${lvl.toUpperCase().padEnd(5)} ${escapeControls(head)}`;
  for (const [k, v] of fields) line += ` ${escapeControls(k)}=${textField(v)}`;
  return line;
}

/** Adds a record's fields to `into` in order (base, then the call's; the call wins), without the reserved keys. */
function ownFields(src: LogFields, into: Map<string, unknown>): void {
  for (const [k, v] of Object.entries(src)) {
    // A key already there keeps its place (as in an object literal), with the later value.
    if (k !== "time" && k !== "level" && k !== "msg" && v !== undefined) into.set(k, v);
  }
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const level = opts.level ?? "info";
  if (!Object.hasOwn(RANK, level)) throw new Error(`logger: unknown level ${JSON.stringify(level)}`);
  const stream = opts.stream ?? process.stderr;
  const format = opts.format ?? defaultLogFormat(stream);
  if (!FORMATS.includes(format)) throw new Error(`logger: unknown format ${JSON.stringify(format)}`);
  const now = opts.now ?? (() => new Date());

  const jsonLine = (time: Date, lvl: LogLevel, msg: string, fields: Map<string, unknown>): string => {
    const record: Record<string, unknown> = { time: time.toISOString(), level: lvl, msg };
    for (const [k, v] of fields) record[k] = v;
    try {
      return toJson(record);
    } catch (err) {
      return toJson({ time: record.time, level: lvl, msg, logError: String(err) });
    }
  };

  const make = (base: LogFields): Logger => {
    const write = (lvl: LogLevel, msg: string, fields?: LogFields): void => {
      if (RANK[lvl] < RANK[level]) return;
      const time = now();
      let line: string;
      try {
        const text = fields?.[TEXT];
        if (format === "text" && typeof text === "string") {
          // The record's own human line; only what a child logger adds follows it.
          const rest = new Map<string, unknown>();
          ownFields(base, rest);
          for (const k of Object.keys(fields ?? {})) rest.delete(k);
          line = textLine(time, lvl, text, [...rest]);
        } else {
          const all = new Map<string, unknown>();
          ownFields(base, all);
          ownFields(fields ?? {}, all);
          line =
            format === "text"
              ? textLine(time, lvl, String(msg), [...all])
              : jsonLine(time, lvl, String(msg), all);
        }
      } catch (err) {
        line =
          format === "text"
            ? textLine(time, lvl, String(msg), [["logError", String(err)]])
            : toJson({ time: time.toISOString(), level: lvl, msg: String(msg), logError: String(err) });
      }
      try {
        stream.write(line + "\n");
      } catch {
        // A closed stderr must not take the server down.
      }
    };
    return {
      level,
      format,
      debug: (msg, fields) => write("debug", msg, fields),
      info: (msg, fields) => write("info", msg, fields),
      warn: (msg, fields) => write("warn", msg, fields),
      error: (msg, fields) => write("error", msg, fields),
      enabled: (lvl) => RANK[lvl] >= RANK[level],
      child: (fields) => make({ ...base, ...fields }),
    };
  };
  return make({});
}
