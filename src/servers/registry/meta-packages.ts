// The meta-packages a `nixoci serve` starts with, settled against its package set before it listens, so that a
// meta-package never stands for packages the set does not have:
//   - the user's (--meta NAME=PKG,...) must name packages the set has: any it lacks are reported with a "did
//     you mean" among the set's names, and the server does not start (a typo there would otherwise only show
//     at the first pull, as an unknown package the client never named);
//   - a built-in one (BUILTIN_META_PACKAGES: `shell`) that the user did not redefine takes, for each of its
//     parts, the first package the set has (bashInteractive, else bash, else busybox); when some part has none,
//     it is off: the name is then an ordinary package name, and the page at / does not offer it.
// Settled for the revision `latest` stands for at start-up and the server's default architecture.
import { suggestPackages, type PackageResolver, type ResolveOptions } from "../../resolve/resolver.js";
import { BUILTIN_META_PACKAGES } from "./image-names.js";

export interface SettledMetaPackages {
  /** The meta-packages in force: name -> packages. */
  metaPackages: Record<string, string[]>;
  /** User-given meta-packages naming packages the set lacks, in the order given. */
  unknown: Array<{
    name: string;
    packages: string[];
    missing: string[];
    /** Missing name -> the set's name it is a near miss of. */
    suggestions: Record<string, string>;
  }>;
  /** Built-in meta-packages that stand for other packages than their first choices, which the set lacks. */
  fallbacks: Array<{ name: string; packages: string[]; missing: string[] }>;
  /** Built-in meta-packages that are off: for some part the set has none of the packages. */
  off: Array<{ name: string; missing: string[] }>;
}

export async function settleMetaPackages(
  resolver: PackageResolver,
  opts: ResolveOptions & { user?: Readonly<Record<string, readonly string[]>> },
): Promise<SettledMetaPackages> {
  const user = opts.user ?? {};
  const builtin = Object.entries(BUILTIN_META_PACKAGES).filter(([name]) => !Object.hasOwn(user, name));
  const candidates = new Set([
    ...Object.values(user).flat(),
    ...builtin.flatMap(([, parts]) => parts.flat()),
  ]);
  const resolveOpts: ResolveOptions = { revision: opts.revision, arch: opts.arch, signal: opts.signal };
  const missing = new Set(await resolver.missingPackages([...candidates], resolveOpts));
  const has = (p: string): boolean => !missing.has(p);

  const out: SettledMetaPackages = { metaPackages: {}, unknown: [], fallbacks: [], off: [] };
  let names: string[] | undefined;
  for (const [name, packages] of Object.entries(user)) {
    const lacking = packages.filter((p) => !has(p));
    if (!lacking.length) {
      out.metaPackages[name] = [...packages];
      continue;
    }
    names ??= await resolver.packageNames(resolveOpts);
    out.unknown.push({
      name,
      packages: [...packages],
      missing: lacking,
      suggestions: suggestPackages(lacking, names),
    });
  }
  for (const [name, parts] of builtin) {
    const chosen = parts.map((alternatives) => alternatives.find(has));
    if (chosen.some((p) => p === undefined)) {
      out.off.push({ name, missing: [...new Set(parts.flat())].filter((p) => !has(p)) });
      continue;
    }
    const packages = [...new Set(chosen as string[])];
    out.metaPackages[name] = packages;
    const passedOver = parts.flatMap((alternatives, i) =>
      alternatives.slice(0, alternatives.indexOf(chosen[i]!)),
    );
    if (passedOver.length) out.fallbacks.push({ name, packages, missing: [...new Set(passedOver)] });
  }
  return out;
}
