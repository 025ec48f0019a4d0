// Argument parsing on top of Node's util.parseArgs, with usage errors that the CLI reports as one line and exit
// code 2: what was wrong, a "did you mean" for a near-miss flag, and where the command's help is.
import { parseArgs, type ParseArgsConfig } from "node:util";
import { didYouMean } from "../util/did-you-mean.js";
import { NixociError } from "../util/errors.js";
import { helpText, parseOptions, type CommandHelp } from "./help-format.js";

export { didYouMean };

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * `parse()` (a flag's value read by code that reports bad input as NixociError, naming the flag), with such an
 * error turned into a usage error: a malformed flag value exits 2, as an unknown flag does.
 */
export function asUsageError<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof NixociError) throw new UsageError(err.message);
    throw err;
  }
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** "run 'nixoci CMD --help' for its options". */
export function helpHint(help: CommandHelp): string {
  return `run 'nixoci ${help.name} --help' for its options`;
}

/** Prints a command's help on stdout; returns the exit code 0. */
export function printHelp(help: CommandHelp): number {
  process.stdout.write(helpText(help));
  return 0;
}

/**
 * `--flag -3` as `--flag=-3`: parseArgs would otherwise call a negative number after a flag that takes a value
 * "ambiguous", and the range check would never get to say what is wrong with it.
 */
function joinNegativeValues(argv: string[], options: Options): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = argv[i + 1];
    const long = a.startsWith("--") ? a.slice(2) : undefined;
    const short = /^-[A-Za-z]$/.test(a)
      ? Object.keys(options).find((k) => options[k].short === a.slice(1))
      : undefined;
    const name = long ?? short;
    if (name && options[name]?.type === "string" && next !== undefined && /^-\d/.test(next)) {
      out.push(`--${name}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/** parseArgs' error as one line in the CLI's words. */
function parseErrorMessage(err: Error & { code?: string }, options: Options): string {
  const quoted = /'([^']+)'/.exec(err.message)?.[1] ?? "";
  const flag = quoted.split(" ")[0];
  if (err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    const names = Object.keys(options);
    const guess = flag.startsWith("--") ? didYouMean(flag.slice(2).split("=")[0], names) : undefined;
    return `unknown option ${flag}${guess ? ` (did you mean --${guess}?)` : ""}`;
  }
  if (err.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    if (/argument missing/.test(err.message)) return `option ${flag} needs a value`;
    if (/does not take an argument/.test(err.message)) return `option ${flag} takes no value`;
    // "--level --json": the next argument is an option, so parseArgs will not take it as the value.
    if (/is ambiguous/.test(err.message))
      return `option ${flag} needs a value (the next argument is an option; write ${flag}=VALUE for a value starting with "-")`;
    return `option ${flag}: ${err.message.replace(/\.$/, "")}`;
  }
  if (err.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") return `unexpected argument ${quoted}`;
  return err.message.split("\n")[0];
}

/** Parses a command's arguments by its flag table; a usage error names the problem and where the help is. */
export function parse<H extends CommandHelp>(argv: string[], help: H) {
  const all = {
    ...parseOptions(help.flags),
    help: { type: "boolean", short: "h" },
  } as H["flags"] & { help: { type: "boolean"; short: "h" } };
  try {
    return parseArgs({
      args: joinNegativeValues(argv, all),
      options: all,
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    throw new UsageError(`${parseErrorMessage(err as Error, all)}; ${helpHint(help)}`);
  }
}

export function needPositionals(positionals: string[], min: number, help: CommandHelp, what = "PATH"): void {
  if (positionals.length < min) throw new UsageError(`missing ${what}; ${helpHint(help)}`);
}

export function intOption(value: string | undefined, name: string, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  // Digits only: Number() would also take "1e1", "0x3", " 3" and "".
  const n = /^-?\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min)
    throw new UsageError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}
