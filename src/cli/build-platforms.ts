// `nixoci build`'s platforms: the --platform flags (or the spec's `platforms:`), checked against what else the
// command line says before any work. Every mistake is a usage error (exit 2): a flag that contradicts the
// platforms, a platform given twice, an output that cannot hold a multi-platform image.
import {
  checkPlatforms,
  formatPlatform,
  parsePlatformFlag,
  specPlatforms,
  type PlatformBuild,
} from "../image/platforms.js";
import type { ImageSpec } from "../image/spec.js";
import { formatOutputRef, holdsIndex, type OutputRef } from "../outputs/outputs.js";
import { NixociError } from "../util/errors.js";
import { UsageError } from "./args.js";

export interface PlatformArgs {
  /** The --platform flags. */
  flags: string[];
  /** The spec file's settings (what it set, not the defaults). */
  fromFile: Partial<ImageSpec>;
  specInput: string;
  /** INSTALLABLE arguments, -f, --arch and --os as given. */
  installables: string[];
  file?: string;
  /** -A was given. */
  attrs?: boolean;
  arch?: string;
  os?: string;
  outputs: OutputRef[];
}

/** Our own checks throw NixociErrors naming the input; on the command line they are usage errors. */
function usage<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof NixociError) throw new UsageError(err.message);
    throw err;
  }
}

/**
 * The platforms to build, sorted (the index's order), or undefined for a plain build. Flags replace the spec's
 * `platforms:`, as flags override the spec everywhere else.
 */
export function buildPlatforms(a: PlatformArgs): PlatformBuild[] | undefined {
  const fromFlags = a.flags.length > 0;
  if (!fromFlags && a.fromFile.platforms === undefined) return undefined;
  const where = fromFlags ? "--platform" : `${a.specInput}: platforms`;
  if (a.installables.length)
    throw new UsageError(
      `${where} names each platform's packages; INSTALLABLE arguments (${a.installables[0]}) would go into ` +
        "every platform's image: give them after OS/ARCH= instead",
    );
  if (a.file !== undefined || a.attrs)
    throw new UsageError(
      `${where} names each platform's packages as store paths; -f FILE.nix -A ATTR cannot go with it`,
    );
  for (const [flag, value] of [
    ["--arch", a.arch],
    ["--os", a.os],
  ] as const)
    if (value !== undefined)
      throw new UsageError(
        `${flag} and ${where} contradict each other: the platforms say the architecture and OS`,
      );
  if (!fromFlags) {
    if (a.fromFile.packages?.length)
      throw new UsageError(
        `${a.specInput}: packages and platforms cannot go together: list packages per platform`,
      );
    if (a.fromFile.arch !== undefined || a.fromFile.os !== undefined)
      throw new UsageError(
        `${a.specInput}: arch/os and platforms contradict each other: the platforms say them`,
      );
  } else if (a.fromFile.packages?.length)
    throw new UsageError(
      `--platform names each platform's packages; ${a.specInput} has packages too: list them per platform`,
    );
  const builds = usage(() =>
    checkPlatforms(
      fromFlags ? a.flags.map(parsePlatformFlag) : specPlatforms(a.fromFile.platforms!, a.specInput),
      where,
    ),
  );
  if (!builds.length) throw new UsageError(`${where} lists no platform`);
  if (builds.length > 1)
    for (const o of a.outputs) {
      if (holdsIndex(o)) continue;
      const output =
        o.kind === "docker-archive" && o.file === "-" ? "- (a docker-archive on stdout)" : formatOutputRef(o);
      const names = builds.map((b) => formatPlatform(b.platform)).join(", ");
      throw new UsageError(
        `${output}: holds one platform's image, not the ${builds.length} platforms built (${names}); write them ` +
          "to oci:, oci-archive: or docker://, or build one platform for it",
      );
    }
  return builds;
}
