// nixoci sbom [--format cyclonedx|spdx|provenance] [-o FILE] [--created TIME] [--store URL] [trust flags] PATH...
// The closure's path infos from the store (the same stores `nixoci closure` reads), rendered as one document.
import { resolve } from "node:path";
import { isSbomFormat, renderSbom, SBOM_FORMATS } from "../image/sbom/formats.js";
import { documentTime } from "../image/sbom/closure-model.js";
import { BinaryCacheStore } from "../store/binary-cache.js";
import { computeClosure } from "../store/closure.js";
import { NixociError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";
import { needPositionals, parse, printHelp, UsageError } from "./args.js";
import { SBOM } from "./help-texts.js";
import { packageVersion } from "./shared-options.js";
import { openStore, resolveStorePathArg, trustOptions } from "./stores.js";

export async function sbomCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, SBOM);
  if (values.help) return printHelp(SBOM);
  needPositionals(positionals, 1, SBOM);
  const format = values.format ?? "cyclonedx";
  if (!isSbomFormat(format))
    throw new UsageError(`--format: unknown format ${JSON.stringify(format)} (${SBOM_FORMATS.join(", ")})`);
  const created = createdOption(values.created);
  const store = await openStore(
    values.store,
    trustOptions(values["trusted-public-key"], values["no-check-sigs"]),
  );
  let text: string;
  try {
    const roots = [...new Set(positionals.map((p) => resolveStorePathArg(p, store)))];
    const closure = await computeClosure(store, roots);
    text = renderSbom(format, {
      infos: [...closure.values()],
      roots,
      toolVersion: packageVersion(),
      created,
      caches: store instanceof BinaryCacheStore ? [store.url] : [],
    }).text;
  } finally {
    store.close();
  }
  // Nothing is written until the whole document exists; a file appears complete or not at all.
  if (values.output === undefined || values.output === "-") process.stdout.write(text);
  else await writeFileAtomic(resolve(values.output), text);
  return 0;
}

/** --created, else SOURCE_DATE_EPOCH (the reproducible-builds convention), else now; checked and normalised. */
function createdOption(flag: string | undefined): string {
  if (flag !== undefined) {
    try {
      return documentTime(flag);
    } catch {
      throw new UsageError(`--created: ${JSON.stringify(flag)} is not an RFC 3339 time`);
    }
  }
  const epoch = process.env.SOURCE_DATE_EPOCH;
  if (epoch !== undefined && epoch !== "") {
    if (!/^\d+$/.test(epoch))
      throw new NixociError("SOURCE_DATE_EPOCH", `${JSON.stringify(epoch)} is not a number of seconds`);
    return documentTime(new Date(Number(epoch) * 1000).toISOString());
  }
  return documentTime(new Date().toISOString());
}
