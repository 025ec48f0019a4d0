// Package names and versions of store paths, and their package URLs.

/**
 * Splits a store path name the way Nix's builtins.parseDrvName does: the version starts after the first `-`
 * that is followed by a character that is not a letter ("hello-2.12" → hello, 2.12; "foo-bar-1" → foo-bar, 1;
 * "busybox" → busybox, no version).
 */
export function parseDrvName(name: string): { name: string; version: string } {
  for (let i = 0; i + 1 < name.length; i++)
    if (name[i] === "-" && !/[A-Za-z]/.test(name[i + 1]))
      return { name: name.slice(0, i), version: name.slice(i + 1) };
  return { name, version: "" };
}

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
