// The platforms of a multi-platform build: `--platform OS/ARCH[/VARIANT]=INSTALLABLE[,INSTALLABLE...]` flags or a
// spec's `platforms:` mapping, each platform with its own packages. Checked here, before any work, so a typo in
// an architecture is one line and not an image nobody can pull.
import { NixociError, quote } from "../util/errors.js";
import { didYouMean } from "../util/did-you-mean.js";
import { comparePlatforms, platformKey } from "../oci/index.js";
import { ARCHITECTURES } from "./spec.js";

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface PlatformBuild {
  platform: Platform;
  /** The installables given for it, as written. */
  packages: string[];
}

/** The CPU variants OCI images use (the image spec's list, GOAMD64 levels for amd64); other architectures have none. */
const VARIANTS: Record<string, readonly string[]> = {
  arm: ["v5", "v6", "v7", "v8"],
  arm64: ["v8", "v9"],
  amd64: ["v1", "v2", "v3", "v4"],
};

/** `OS/ARCH[/VARIANT]`: how platforms are named, and the order they are sorted in. */
export const formatPlatform: (p: Platform) => string = platformKey;

/** `OS/ARCH[/VARIANT]`, with a known architecture and a variant that architecture has. */
export function parsePlatform(s: string, input: string): Platform {
  const parts = s.split("/");
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === ""))
    throw new NixociError(input, `${quote(s)} is not OS/ARCH[/VARIANT] (e.g. linux/amd64, linux/arm/v7)`);
  const [os, architecture, variant] = parts;
  if (!/^[a-z0-9_]+$/.test(os)) throw new NixociError(input, `os ${quote(os)} in ${quote(s)} is malformed`);
  if (!ARCHITECTURES.includes(architecture)) {
    const guess = didYouMean(architecture, [...ARCHITECTURES]);
    throw new NixociError(
      input,
      `unknown architecture ${quote(architecture)} in ${quote(s)}${guess ? ` (did you mean ${guess}?)` : ""}; ` +
        `one of ${ARCHITECTURES.join(", ")} (Go's names, as in OCI images)`,
    );
  }
  if (variant === undefined) return { os, architecture };
  const known = VARIANTS[architecture] ?? [];
  if (!known.includes(variant))
    throw new NixociError(
      input,
      `${quote(variant)} is not a variant of ${architecture} in ${quote(s)}` +
        (known.length ? ` (one of ${known.join(", ")})` : ` (${architecture} has no variants)`),
    );
  return { os, architecture, variant };
}

/** `OS/ARCH[/VARIANT]=INSTALLABLE[,INSTALLABLE...]` (one --platform flag). */
export function parsePlatformFlag(s: string): PlatformBuild {
  const eq = s.indexOf("=");
  if (eq < 0)
    throw new NixociError(
      "--platform",
      `${quote(s)} names no packages: write OS/ARCH[/VARIANT]=INSTALLABLE[,INSTALLABLE...]`,
    );
  const packages = s
    .slice(eq + 1)
    .split(",")
    .map((p) => p.trim());
  if (packages.some((p) => p === ""))
    throw new NixociError(
      "--platform",
      `${quote(s)} has an empty installable (INSTALLABLE[,INSTALLABLE...])`,
    );
  return { platform: parsePlatform(s.slice(0, eq), "--platform"), packages };
}

/** The platforms of a spec's `platforms:` mapping. */
export function specPlatforms(platforms: Record<string, string[]>, input: string): PlatformBuild[] {
  return Object.entries(platforms).map(([key, packages]) => {
    if (!packages.length) throw new NixociError(input, `platforms.${key} lists no packages`);
    return { platform: parsePlatform(key, `${input}: platforms`), packages };
  });
}

/**
 * One name for the ways of writing a platform that containerd and Docker take as the same one (containerd's
 * platforms.Normalize): arm64/v8 is arm64, amd64/v1 is amd64, arm without a variant is arm/v7.
 */
export function canonicalPlatform(p: Platform): Platform {
  const { architecture: arch, variant } = p;
  if ((arch === "arm64" && variant === "v8") || (arch === "amd64" && variant === "v1"))
    return { os: p.os, architecture: arch };
  if (arch === "arm" && variant === undefined) return { ...p, variant: "v7" };
  return p;
}

/** Whether an image for `have` is one for `want`; `want` without a variant takes any variant. */
export function platformMatches(have: Platform, want: Platform): boolean {
  return (
    have.os === want.os &&
    have.architecture === want.architecture &&
    (want.variant === undefined || canonicalPlatform(have).variant === canonicalPlatform(want).variant)
  );
}

function identity(p: Platform): string {
  return formatPlatform(canonicalPlatform(p));
}

/** Refuses a platform given twice; returns the builds sorted by platform (the index's order). */
export function checkPlatforms(builds: PlatformBuild[], input: string): PlatformBuild[] {
  const seen = new Map<string, Platform>();
  for (const b of builds) {
    const id = identity(b.platform);
    const before = seen.get(id);
    if (before)
      throw new NixociError(
        input,
        formatPlatform(before) !== formatPlatform(b.platform)
          ? `${formatPlatform(before)} and ${formatPlatform(b.platform)} are the same platform: give it once`
          : `platform ${formatPlatform(b.platform)} is given twice: give each platform once, with all its packages`,
      );
    seen.set(id, b.platform);
  }
  return [...builds].sort((a, b) => comparePlatforms(a.platform, b.platform));
}
