// Package URLs of store paths (name and version split by nix/drv-name.ts).
import { parseDrvName } from "../../nix/drv-name.js";

/**
 * `pkg:nix/NAME@VERSION`, the form scanners use for Nix store paths today (syft, sbomnix). The `nix` type is
 * still a proposal (package-url/purl-spec PR 877) whose namespace is the origin (nixpkgs, …) and whose name is
 * an attribute path: neither can be known from a store path, so they are left out rather than guessed.
 * Characters outside the purl's unreserved set (`+`, `?`, `=` may appear in store names) are percent-encoded.
 */
export function nixPurl(storeName: string): string {
  const { name, version } = parseDrvName(storeName);
  return `pkg:nix/${encodeURIComponent(name)}${version ? "@" + encodeURIComponent(version) : ""}`;
}
