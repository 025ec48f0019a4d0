// nixoci cache push --to file:///DIR [--sign-key FILE] [--compression xz|zstd|bzip2|none] [--store URL] PATH...
// Copies the closure of PATH... into a binary cache directory that `nix copy --from` accepts.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { computeClosure } from "../store/closure.js";
import { defaultCacheDir, LayerCache } from "../image/layer-cache.js";
import { BinaryCacheWriter } from "../store/cache-writer.js";
import { parseCompression } from "../util/compression.js";
import { NixociError } from "../util/errors.js";
import { helpHint, intOption, needPositionals, parse, printHelp, UsageError } from "./args.js";
import { CACHE, CACHE_GC, CACHE_PUSH } from "./help-texts.js";
import { removeTemporariesOnSignals } from "./interrupt.js";
import { formatBytes, Progress } from "./progress.js";
import { openStore, readSecretKeyFile, resolveStorePathArg, trustOptions } from "./stores.js";

export async function cacheCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "gc") return gcCommand(rest);
  if (sub !== "push") {
    if (sub === undefined || sub === "--help" || sub === "-h") {
      printHelp(CACHE);
      return sub === undefined ? 2 : 0;
    }
    throw new UsageError(`unknown cache command ${JSON.stringify(sub)}; ${helpHint(CACHE)}`);
  }
  const { values, positionals } = parse(rest, CACHE_PUSH);
  if (values.help) return printHelp(CACHE_PUSH);
  needPositionals(positionals, 1, CACHE_PUSH);
  if (!values.to) throw new UsageError(`missing --to file:///DIR; ${helpHint(CACHE_PUSH)}`);
  const compression = parseCompression(values.compression ?? "xz", "--compression");
  if (compression === "gzip")
    throw new NixociError("--compression", "gzip is not a NAR compression Nix reads");
  const signKey = values["sign-key"] ? readSecretKeyFile(values["sign-key"]) : undefined;
  const store = await openStore(values.store, trustOptions([], true));
  const progress = new Progress(values.quiet);
  // Ctrl-C or SIGTERM from here on leaves no half-written NAR or narinfo in the cache (their temporaries go).
  const uninstall = removeTemporariesOnSignals(() => progress.done());
  try {
    const roots = positionals.map((p) => resolveStorePathArg(p, store));
    const closure = await computeClosure(store, roots);
    let done = 0;
    let bytes = 0;
    const writer = new BinaryCacheWriter(values.to, store.storeDir, {
      compression,
      signKey,
      parallelism: intOption(values.jobs, "jobs", 2),
      onEvent: (e) => {
        done++;
        if (e.type === "pushed") {
          bytes += e.fileSize ?? 0;
          progress.line(`pushed ${e.path} (${formatBytes(e.fileSize ?? 0)})`);
        }
        progress.update(`[${done}/${closure.size} paths, ${formatBytes(bytes)} written]`);
      },
    });
    const result = await writer.push(store, closure);
    progress.done();
    progress.line(
      `pushed ${result.pushed.length} paths (${formatBytes(bytes)}), ${result.skipped.length} already in ${values.to}`,
    );
    return 0;
  } finally {
    uninstall();
    progress.done();
    store.close();
  }
}

/** Drops layer-cache blobs that no recently built image uses. */
async function gcCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, CACHE_GC);
  if (values.help) return printHelp(CACHE_GC);
  if (positionals.length)
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}; ${helpHint(CACHE_GC)}`);
  const dir = values["cache-dir"] ?? defaultCacheDir();
  // The default cache before any build: nothing to collect.
  if (values["cache-dir"] === undefined && !existsSync(dir)) {
    process.stdout.write("kept 0 images, forgot 0; removed 0 blobs (0 B)\n");
    return 0;
  }
  // gc removes every blob no built image records: anything but a layer cache would lose its blobs. A registry's
  // storage and an OCI layout share the blobs/sha256 layout, so they are told apart before anything is removed.
  if (!existsSync(dir)) throw new NixociError(dir, "no such layer cache directory");
  if (existsSync(join(dir, "repositories")))
    throw new NixociError(dir, "is a registry storage directory (nixoci serve --storage), not a layer cache");
  if (existsSync(join(dir, "oci-layout")) || existsSync(join(dir, "index.json")))
    throw new NixociError(dir, "is an OCI image layout, not a layer cache");
  if (!existsSync(join(dir, "layers")) && !existsSync(join(dir, "images")))
    throw new NixociError(dir, "is not a layer cache (it has no layers/ or images/ directory)");
  const cache = new LayerCache(dir);
  const r = await cache.gc({
    keepImages: intOption(values["keep-images"], "keep-images", 20, 0),
    keepDays: intOption(values["keep-days"], "keep-days", 7, 0),
  });
  process.stdout.write(
    `kept ${r.keptImages} images, forgot ${r.removedImages}; removed ${r.removedBlobs} blobs (${formatBytes(r.freedBytes)})\n`,
  );
  return 0;
}
