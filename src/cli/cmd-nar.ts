// nixoci nar dump PATH | nar restore DEST | nar ls FILE
import { createReadStream } from "node:fs";
import type { Readable } from "node:stream";
import { listNar, serializeNarListing } from "../nix/nar-listing.js";
import { restoreNar } from "../nix/nar-restore.js";
import { dumpPathTo } from "../nix/nar-writer.js";
import { decompressStream, type Compression } from "../util/compression.js";
import { NixociError } from "../util/errors.js";
import { needPositionals, parse, UsageError } from "./args.js";

const USAGE = "nixoci nar dump PATH > out.nar | nixoci nar restore DEST < in.nar | nixoci nar ls FILE|-";

export async function narCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parse(rest, {}, USAGE);
  if (values.help || sub === undefined || sub === "--help" || sub === "-h") {
    process.stdout.write(
      `usage: ${USAGE}\n  dump     write the NAR of a file tree to stdout (bytes equal \`nix-store --dump\`)\n` +
        `  restore  unpack a NAR from stdin into DEST (must not exist; written under a temporary name, then renamed)\n` +
        `  ls       print a NAR's listing as Nix's .ls JSON (FILE may be compressed: .xz .zst .bz2 .br .gz)\n`,
    );
    return sub === undefined ? 2 : 0;
  }
  needPositionals(positionals, 1, USAGE, sub === "restore" ? "DEST" : sub === "ls" ? "FILE" : "PATH");
  const arg = positionals[0];
  switch (sub) {
    case "dump":
      await dumpPathTo(arg, process.stdout);
      return 0;
    case "restore":
      // 1 MiB reads: process.stdin's 64 KiB chunks make restoring big NARs measurably slower.
      await restoreNar(createReadStream("", { fd: 0, highWaterMark: 1 << 20 }), arg, { input: "stdin" });
      return 0;
    case "ls": {
      const listing = await listNar(openNarFile(arg), { input: arg === "-" ? "stdin" : arg });
      process.stdout.write(serializeNarListing(listing) + "\n");
      return 0;
    }
    default:
      throw new UsageError(`unknown nar command ${JSON.stringify(sub)}\nusage: ${USAGE}`);
  }
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
  const source = file === "-" ? process.stdin : createReadStream(file, { highWaterMark: 1 << 20 });
  const found = EXTENSIONS.find(([ext]) => file.endsWith(ext));
  if (!found) return source;
  const decompress = decompressStream(found[1], file);
  source.on("error", (err: Error) => decompress.destroy(new NixociError(file, (err as Error).message)));
  return source.pipe(decompress);
}
