// The shared libraries an executable loads, as `ldd` resolves them on this machine or in a Debian root of another
// release: the image scripts (frontend-image.mjs, nix-toolchain-image.mjs) copy them next to the binaries they
// package.
import { execFileSync } from "node:child_process";

/** ldd's output as [{ soname, path }]; a library ldd cannot find is an error naming it. */
function parseLdd(elf, text) {
  const out = [];
  for (const line of text.split("\n")) {
    const m = /^\s*(?:(\S+) => )?(\/\S+) \(0x/.exec(line);
    if (m) out.push({ soname: m[1], path: m[2] });
    else if (/not found/.test(line)) throw new Error(`${elf}: ${line.trim()}`);
  }
  return out;
}

/**
 * `ldd ELF` as [{ soname, path }]: soname is what the binary asks for (undefined for the dynamic loader, which
 * ldd lists by its absolute path), path where it resolves. A library ldd cannot find is an error naming it.
 */
export function loadedLibraries(elf) {
  return parseLdd(elf, execFileSync("ldd", [elf], { encoding: "utf8" }));
}

/**
 * The same for ELF (a path inside ROOT) as the root's own ldd and loader resolve it, run chrooted into ROOT: a
 * binary of a newer release loads that release's libraries, which this machine's ldd would not find or would
 * take from bookworm. Paths are inside ROOT.
 */
export function loadedLibrariesInRoot(root, elf) {
  return parseLdd(elf, execFileSync("chroot", [root, "ldd", elf], { encoding: "utf8" }));
}
