// Installables: what the user names as the image's contents. Store paths and symlinks into the store are
// taken as they are; `-f FILE.nix -A ATTR` is built with nix-build (the one place nixoci needs the nix
// binary, and only when asked to evaluate Nix code).
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { NixociError } from "../util/errors.js";
import { parseStorePath } from "../nix/store-path.js";

const execFileAsync = promisify(execFile);

/** Builds attributes of a Nix file with nix-build and returns their output paths, in attribute order. */
export async function buildNixAttrs(file: string, attrs: string[]): Promise<string[]> {
  const args = ["--no-out-link", file, ...(attrs.length ? attrs.flatMap((a) => ["-A", a]) : [])];
  let stdout: string;
  try {
    ({ stdout } = await execFileAsync("nix-build", args, { maxBuffer: 64 << 20 }));
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === "ENOENT")
      throw new NixociError(file, "nix-build is not installed (-f needs the nix binary)");
    const lines = (e.stderr ?? "")
      .trim()
      .split("\n")
      .filter((l) => /error/.test(l));
    throw new NixociError(file, `nix-build failed: ${lines.slice(-3).join(" ") || e.message}`);
  }
  const paths = stdout.trim().split("\n").filter(Boolean);
  for (const p of paths) parseStorePath(p, undefined, `nix-build ${file}`);
  return paths;
}
