// nixoci path-info [--json] [-r] [-s] [--store URL] [--trusted-public-key K]... [--no-check-sigs] PATH...
import { computeClosure } from "../store/closure.js";
import { pathInfoToJson, type PathInfo } from "../store/path-info.js";
import { needPositionals, parse } from "./args.js";
import { TRUST_FLAGS, TRUST_USAGE } from "./shared-options.js";
import { openStore, resolveStorePathArg, trustOptions } from "./stores.js";

const USAGE = `nixoci path-info [--json] [-r|--recursive] [-s|--size] [--store URL] ${TRUST_USAGE} PATH...`;

export async function pathInfoCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      json: { type: "boolean" },
      recursive: { type: "boolean", short: "r" },
      size: { type: "boolean", short: "s" },
      store: { type: "string" },
      ...TRUST_FLAGS,
    },
    USAGE,
  );
  if (values.help) return usage();
  needPositionals(positionals, 1, USAGE);
  const store = await openStore(
    values.store,
    trustOptions(values["trusted-public-key"], values["no-check-sigs"]),
  );
  try {
    const paths = positionals.map((p) => resolveStorePathArg(p, store));
    let infos: (PathInfo | { path: string; valid: false })[];
    if (values.recursive) {
      const closure = await computeClosure(store, paths);
      infos = [...closure.values()].sort((a, b) => (a.path < b.path ? -1 : 1));
    } else {
      infos = await Promise.all(
        paths.map(async (path) => (await store.queryPathInfo(path)) ?? { path, valid: false as const }),
      );
    }
    const invalid = infos.filter((i): i is { path: string; valid: false } => "valid" in i);
    if (values.json) {
      process.stdout.write(JSON.stringify(infos.map((i) => ("valid" in i ? i : pathInfoToJson(i)))) + "\n");
    } else {
      for (const i of infos) {
        if ("valid" in i) continue;
        process.stdout.write(values.size ? `${i.path}\t${i.narSize}\n` : `${i.path}\n`);
      }
    }
    for (const i of invalid) process.stderr.write(`nixoci: ${i.path}: path is not valid in ${store.url}\n`);
    return invalid.length ? 1 : 0;
  } finally {
    store.close();
  }
}

function usage(): number {
  process.stdout.write(
    `usage: ${USAGE}\nPrints the metadata of store paths (as \`nix path-info\`; --json in its JSON shape).\n`,
  );
  return 0;
}
