// nixoci closure [--store URL] [--trusted-public-key K]... [--no-check-sigs] PATH...
// Prints every path in the closure of PATH..., one per line, sorted.
import { computeClosure } from "../store/closure.js";
import { LocalStore } from "../store/local-store.js";
import { needPositionals, parse, printHelp } from "./args.js";
import { CLOSURE } from "./help-texts.js";
import { openStore, resolveStorePathArg, trustOptions } from "./stores.js";

export async function closureCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, CLOSURE);
  if (values.help) return printHelp(CLOSURE);
  needPositionals(positionals, 1, CLOSURE);
  const store = await openStore(
    values.store,
    trustOptions(values["trusted-public-key"], values["no-check-sigs"]),
  );
  try {
    const roots = positionals.map((p) => resolveStorePathArg(p, store));
    const paths = new Set<string>();
    // Nix's database answers a closure in one query; other stores are walked through their metadata.
    const fast = store instanceof LocalStore ? roots.map((r) => store.closureFast(r)) : [];
    if (fast.length && fast.every((f) => f !== undefined)) {
      for (const f of fast) for (const p of f!) paths.add(p);
    } else {
      for (const p of (await computeClosure(store, roots)).keys()) paths.add(p);
    }
    process.stdout.write(
      [...paths]
        .sort()
        .map((p) => p + "\n")
        .join(""),
    );
    return 0;
  } finally {
    store.close();
  }
}
