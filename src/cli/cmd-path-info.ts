// nixoci path-info [--json] [-r] [-s] [--store URL] [--trusted-public-key K]... [--no-check-sigs] PATH...
import { computeClosure } from "../store/closure.js";
import { pathInfoToJson, type PathInfo } from "../store/path-info.js";
import { needPositionals, parse, printHelp } from "./args.js";
import { PATH_INFO } from "./help-texts.js";
import { openStore, resolveStorePathArg, trustOptions } from "./stores.js";

export async function pathInfoCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, PATH_INFO);
  if (values.help) return printHelp(PATH_INFO);
  needPositionals(positionals, 1, PATH_INFO);
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
