// nixoci diff [--json] [--platform P] [--exit-code] [--insecure] [--creds U:P] IMAGE IMAGE
// Opens both images (image-source.ts), finds their store paths (image-store-paths.ts), compares them
// (image-diff.ts) and prints the result: a summary a human reads (like `git diff --stat`), or the JSON object.
import { diffImages, pathName, type ImageDiff } from "../outputs/image-diff.js";
import { parsePlatform } from "../image/platforms.js";
import { openImage, type ImageSource } from "../outputs/image-source.js";
import { layerPathsOf } from "../outputs/image-store-paths.js";
import { DEFAULT_STORE_DIR } from "../nix/store-path.js";
import { helpHint, parse, printHelp, UsageError } from "./args.js";
import { DIFF } from "./help-texts.js";

function human(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

const show = (v: unknown): string => (v === null || v === undefined ? "(none)" : JSON.stringify(v));
const hashOf = (p: string): string => p.slice(p.lastIndexOf("/") + 1, p.lastIndexOf("/") + 9);

/** The human summary: one header per image, then one block per kind of change. */
export function diffText(d: ImageDiff): string {
  const out: string[] = [];
  // At least one space after the label: config fields (architecture, ExposedPorts) are longer than the column.
  const col = (what: string, rest: string): string => `  ${what.padEnd(8)} ${rest}`;
  out.push(`--- ${d.from.ref} (${d.from.manifest}, ${d.from.platform})`);
  out.push(`+++ ${d.to.ref} (${d.to.manifest}, ${d.to.platform})`);
  const s = d.storePaths;
  out.push(
    `store paths: ${s.added.length} added, ${s.removed.length} removed, ${s.changed.length} changed, ${s.unchanged} unchanged`,
  );
  for (const p of s.added) out.push(col("added", p));
  for (const p of s.removed) out.push(col("removed", p));
  for (const c of s.changed)
    out.push(
      col(
        "changed",
        c.rebuilt
          ? `${c.name}: ${c.fromVersion ? `${c.fromVersion} ` : ""}rebuilt (${hashOf(c.from)} → ${hashOf(c.to)})`
          : `${c.name}: ${c.fromVersion || "(no version)"} → ${c.toVersion || "(no version)"}`,
      ),
    );
  const l = d.layers;
  out.push(`layers: ${l.added.length} added, ${l.removed.length} removed, ${l.unchanged} unchanged`);
  for (const [what, list] of [
    ["added", l.added],
    ["removed", l.removed],
  ] as const)
    for (const e of list)
      out.push(
        col(
          what,
          `${e.digest.slice(0, 19)}  ${human(e.size)}  ${e.storePaths.length ? e.storePaths.map(pathName).join(", ") : "(no store paths)"}`,
        ),
      );
  const c = d.config;
  if (c.changes.length) out.push(`config: ${c.changes.length} changed`);
  else out.push(c.otherChanges ? "config: other fields differ (created, history, …)" : "config: no change");
  for (const ch of c.changes)
    out.push(
      col(
        ch.field,
        ch.key !== undefined
          ? `${ch.key}: ${show(ch.from)} → ${show(ch.to)}`
          : `${show(ch.from)} → ${show(ch.to)}`,
      ),
    );
  if (!d.differ) out.push("the images do not differ");
  return out.join("\n") + "\n";
}

export async function diffCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, DIFF);
  if (values.help) return printHelp(DIFF);
  if (positionals.length !== 2)
    throw new UsageError(
      `${positionals.length < 2 ? "missing IMAGE" : `unexpected argument ${JSON.stringify(positionals[2])}`}: give two images; ${helpHint(DIFF)}`,
    );
  let platform;
  try {
    platform = values.platform !== undefined ? parsePlatform(values.platform, "--platform") : undefined;
  } catch (err) {
    throw new UsageError(`${(err as Error).message}; ${helpHint(DIFF)}`);
  }
  const opts = { platform, insecure: values.insecure, creds: values.creds, storeDir: DEFAULT_STORE_DIR };
  const images: ImageSource[] = [];
  try {
    for (const ref of positionals) images.push(await openImage(ref, opts));
    const [a, b] = await Promise.all(
      images.map(async (image) => ({ image, layers: await layerPathsOf(image, DEFAULT_STORE_DIR) })),
    );
    const d = diffImages(a, b);
    process.stdout.write(values.json ? JSON.stringify(d, null, 2) + "\n" : diffText(d));
    return values["exit-code"] && d.differ ? 1 : 0;
  } finally {
    await Promise.all(images.map((i) => i.close()));
  }
}
