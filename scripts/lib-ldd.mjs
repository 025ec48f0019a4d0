// The shared libraries an executable loads, as `ldd` resolves them on this machine: the image scripts
// (frontend-image.mjs, nix-toolchain-image.mjs) copy them next to the binaries they package.
import { execFileSync } from "node:child_process";

/**
 * `ldd ELF` as [{ soname, path }]: soname is what the binary asks for (undefined for the dynamic loader, which
 * ldd lists by its absolute path), path where it resolves. A library ldd cannot find is an error naming it.
 */
export function loadedLibraries(elf) {
  const out = [];
  for (const line of execFileSync("ldd", [elf], { encoding: "utf8" }).split("\n")) {
    const m = /^\s*(?:(\S+) => )?(\/\S+) \(0x/.exec(line);
    if (m) out.push({ soname: m[1], path: m[2] });
    else if (/not found/.test(line)) throw new Error(`${elf}: ${line.trim()}`);
  }
  return out;
}
