// nixoci substitute --from URL... [--trusted-public-key K]... [--no-check-sigs] [--store-dir DIR] [-j N] PATH...
// Realises PATH... and their closures into a store directory from binary caches (or other local stores).
// Paths already valid in the target are kept; the sources are tried in order of their priority.
import { resolve } from "node:path";
import { parseStorePath, toStorePathPrefix, DEFAULT_STORE_DIR } from "../nix/store-path.js";
import { LocalStore } from "../store/local-store.js";
import type { Store } from "../store/store.js";
import { Substituter } from "../store/substituter.js";
import { helpHint, intOption, needPositionals, parse, printHelp, UsageError } from "./args.js";
import { SUBSTITUTE } from "./help-texts.js";
import { removeTemporariesOnSignals } from "./interrupt.js";
import { formatBytes, Progress } from "./progress.js";
import { openStore, storePathOfLink, trustOptions } from "./stores.js";

export async function substituteCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, SUBSTITUTE);
  if (values.help) return printHelp(SUBSTITUTE);
  needPositionals(positionals, 1, SUBSTITUTE);
  if (!values.from?.length) throw new UsageError(`missing --from URL; ${helpHint(SUBSTITUTE)}`);
  const trust = trustOptions(values["trusted-public-key"], values["no-check-sigs"]);
  const targetDir = resolve(values["store-dir"] ?? DEFAULT_STORE_DIR);
  const target = new LocalStore({ dir: targetDir });
  // Sources are store URLs: binary caches, or local store directories (e.g. --from /nix/store to copy
  // from this machine's store before downloading).
  const sources: Store[] = [];
  for (const url of values.from) sources.push(await openStore(url, trust));
  const progress = new Progress(values.quiet);
  // Ctrl-C or SIGTERM from here on leaves no path half-restored in the target (its temporary goes).
  const uninstall = removeTemporariesOnSignals(() => progress.done());
  try {
    // What killed runs left in the target (paths restored under temporary names); a live writer's stay.
    await target.sweepTemporaries();
    const paths = positionals.map((p) =>
      p.startsWith(target.storeDir + "/")
        ? toStorePathPrefix(p, target.storeDir, p).path
        : // A `result` symlink names the path it points to, there or not yet.
          (storePathOfLink(p, target.storeDir) ?? parseStorePath(p, target.storeDir, p).path),
    );
    let copied = 0;
    let bytes = 0;
    const substituter = new Substituter(target, sources, {
      parallelism: intOption(values.jobs, "jobs", 4),
      onEvent: (e) => {
        if (e.type === "copying") progress.line(`copying path '${e.path}' from '${e.from}'...`);
        if (e.type === "failed")
          progress.line(`warning: copying '${e.path}' from '${e.from}' failed: ${e.error}`);
        if (e.type === "copied") {
          copied++;
          bytes += e.narSize;
          progress.update(`[${copied} paths copied, ${formatBytes(bytes)}]`);
        }
      },
    });
    const result = await substituter.realise(paths);
    progress.done();
    progress.line(
      `${result.copied.length} paths copied (${formatBytes(bytes)}), ${result.present.length} already present`,
    );
    process.stdout.write(paths.map((p) => p + "\n").join(""));
    return 0;
  } finally {
    uninstall();
    progress.done();
    target.close();
    sources.forEach((s) => s.close());
  }
}
