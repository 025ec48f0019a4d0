// nixoci nar dump PATH | nar restore DEST | nar ls FILE
import { createReadStream, fstatSync } from "node:fs";
import { constants as osConstants } from "node:os";
import type { Readable } from "node:stream";
import { listNar, narListingBytes } from "../nix/nar-listing.js";
import { restoreNar, sweepRestoreTemporaries } from "../nix/nar-restore.js";
import { dumpPathTo } from "../nix/nar-writer.js";
import { decompressStream, type Compression } from "../util/compression.js";
import { NixociError } from "../util/errors.js";
import { fsError } from "../util/fs-errors.js";
import { fsPath } from "../util/file-names.js";
import { helpHint, needPositionals, parse, printHelp, UsageError } from "./args.js";
import { NAR } from "./help-texts.js";
import { stdoutCarriesProduct } from "./stdout-product.js";

export async function narCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parse(rest, NAR);
  if (values.help || sub === undefined || sub === "--help" || sub === "-h") {
    printHelp(NAR);
    return sub === undefined ? 2 : 0;
  }
  if (!["dump", "restore", "ls"].includes(sub))
    throw new UsageError(`unknown nar command ${JSON.stringify(sub)}; ${helpHint(NAR)}`);
  needPositionals(positionals, 1, NAR, sub === "restore" ? "DEST" : sub === "ls" ? "FILE" : "PATH");
  if (positionals.length > 1)
    throw new UsageError(`nar ${sub} takes one argument, got ${positionals.length}; ${helpHint(NAR)}`);
  const arg = positionals[0];
  if (arg === "") throw new UsageError(`nar ${sub}: the argument is empty; ${helpHint(NAR)}`);
  switch (sub) {
    case "dump":
      stdoutCarriesProduct();
      try {
        await dumpPathTo(arg, process.stdout);
      } catch (err) {
        // A failed write names stdout (a closed pipe, a full disk), not the path being dumped.
        const e = err as NodeJS.ErrnoException;
        throw e.code === "EPIPE" || e.syscall === "write"
          ? fsError("stdout", err, "cannot write the NAR")
          : err;
      }
      return 0;
    case "restore":
      return restoreCommand(arg);
    case "ls": {
      const listing = await listNar(openNarFile(arg), { input: arg === "-" ? "stdin" : arg });
      process.stdout.write(Buffer.concat([narListingBytes(listing), Buffer.from("\n")]));
      return 0;
    }
    default:
      throw new UsageError(`unknown nar command ${JSON.stringify(sub)}; ${helpHint(NAR)}`);
  }
}

const STOP_SIGNALS: NodeJS.Signals[] = ["SIGTERM", "SIGINT", "SIGHUP"];

/**
 * nar restore DEST: first removes what killed restores of DEST left beside it; on SIGTERM, SIGINT or SIGHUP
 * removes its temporary tree and exits 128 + the signal's number, as a shell reports a process the signal
 * ended.
 */
async function restoreCommand(dest: string): Promise<number> {
  sweepRestoreTemporaries(dest);
  const stop = new AbortController();
  let caught: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    caught ??= signal;
    stop.abort(new NixociError(dest, `restore interrupted by ${signal}`));
  };
  for (const s of STOP_SIGNALS) process.on(s, onSignal);
  const input = stdinStream();
  try {
    await restoreNar(input, dest, { input: "stdin", signal: stop.signal });
    return 0;
  } catch (err) {
    if (caught === undefined) throw err;
    input.destroy(); // the temporary tree is gone: stop reading
    return 128 + osConstants.signals[caught];
  } finally {
    for (const s of STOP_SIGNALS) process.off(s, onSignal);
  }
}

/**
 * Standard input as a stream. A regular file is read 1 MiB at a time (process.stdin's 64 KiB chunks make
 * restoring big NARs measurably slower); a pipe, socket or terminal is read as process.stdin reads it, by the
 * event loop: a read by a thread-pool thread (the file stream's) cannot be cancelled, and a pipe that nobody
 * writes to would then keep an interrupted restore from exiting.
 */
function stdinStream(): Readable {
  let regular = false;
  try {
    regular = fstatSync(0).isFile();
  } catch {
    // not open: process.stdin reports it
  }
  return regular ? createReadStream("", { fd: 0, highWaterMark: 1 << 20 }) : process.stdin;
}

const EXTENSIONS: [string, Compression][] = [
  [".xz", "xz"],
  [".zst", "zstd"],
  [".bz2", "bzip2"],
  [".br", "br"],
  [".gz", "gzip"],
];

/** A NAR file (or stdin), decompressed when its name says it is compressed, as binary caches name them. */
function openNarFile(file: string): Readable {
  const source = file === "-" ? process.stdin : createReadStream(fsPath(file), { highWaterMark: 1 << 20 });
  const found = EXTENSIONS.find(([ext]) => file.endsWith(ext));
  if (!found) return source;
  const decompress = decompressStream(found[1], file);
  source.on("error", (err: Error) => decompress.destroy(new NixociError(file, (err as Error).message)));
  return source.pipe(decompress);
}
