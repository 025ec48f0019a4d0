// Structured logs: one JSON object per line (on stderr by default), for every daemon (serve, snapshotter,
// image service):
//   {"time":"2024-01-01T00:00:00.000Z","level":"info","msg":"request","method":"GET","path":"/v2/",...}
// "time", "level" and "msg" come first and cannot be overridden by fields. Errors become
// {"name","message"} (plus "code" when there is one); bigints become strings; values that cannot be written
// (cycles, functions) are left out, so a log call never throws.

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Readonly<Record<string, unknown>>;

const RANK: Record<LogLevel | "silent", number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export interface Logger {
  readonly level: LogLevel | "silent";
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** True if messages of `level` are written. */
  enabled(level: LogLevel): boolean;
  /** A logger that adds `fields` to every line (the call's own fields win). */
  child(fields: LogFields): Logger;
}

export interface LoggerOptions {
  /** The least severe level written (default "info"); "silent" writes nothing. */
  level?: LogLevel | "silent";
  /** Where lines go (default process.stderr). */
  stream?: { write(line: string): unknown };
  /** The clock (for tests). */
  now?: () => Date;
}

/** Parses a level name (e.g. from --log-level), or undefined. */
export function parseLogLevel(s: string): LogLevel | "silent" | undefined {
  return Object.hasOwn(RANK, s) ? (s as LogLevel | "silent") : undefined;
}

function errorFields(err: Error): Record<string, unknown> {
  const out: Record<string, unknown> = { name: err.name, message: err.message };
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== undefined) out.code = code;
  return out;
}

/** JSON of `record`, skipping what JSON cannot say; cycles are cut at their second visit. */
function toJson(record: Record<string, unknown>): string {
  const stack: unknown[] = [];
  return JSON.stringify(record, function (this: unknown, _key: string, value: unknown) {
    if (typeof value === "bigint") return value.toString();
    if (value instanceof Error) return errorFields(value);
    if (typeof value === "object" && value !== null) {
      // `this` is the object holding `value`: unwind the path to it, then see if `value` is on it.
      while (stack.length && stack[stack.length - 1] !== this) stack.pop();
      if (stack.includes(value)) return "[circular]";
      stack.push(value);
    }
    return value;
  });
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const level = opts.level ?? "info";
  if (!Object.hasOwn(RANK, level)) throw new Error(`logger: unknown level ${JSON.stringify(level)}`);
  const stream = opts.stream ?? process.stderr;
  const now = opts.now ?? (() => new Date());

  const make = (base: LogFields): Logger => {
    const write = (lvl: LogLevel, msg: string, fields?: LogFields): void => {
      if (RANK[lvl] < RANK[level]) return;
      const record: Record<string, unknown> = { time: now().toISOString(), level: lvl, msg: String(msg) };
      for (const src of [base, fields ?? {}]) {
        for (const [k, v] of Object.entries(src)) {
          if (k !== "time" && k !== "level" && k !== "msg" && v !== undefined) record[k] = v;
        }
      }
      let line: string;
      try {
        line = toJson(record);
      } catch (err) {
        line = toJson({ time: record.time, level: lvl, msg: record.msg, logError: String(err) });
      }
      try {
        stream.write(line + "\n");
      } catch {
        // A closed stderr must not take the server down.
      }
    };
    return {
      level,
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
