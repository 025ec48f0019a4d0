// What a Nix installation builds for, from `nix show-config --json`: serve offers (and accepts) architecture
// prefixes only for these, so a name Nix cannot build is refused up front instead of failing in nix-build.
import { readFile } from "node:fs/promises";
import { NixociError } from "../util/errors.js";

/**
 * The Nix systems `nix show-config --json` says this Nix builds for: `system`, `extra-platforms`, and those of the
 * machines in `builders` (entries separated by `;` or lines, `@FILE` for a machines file; the second field of an
 * entry is its comma-separated systems, `-` or none meaning the local one).
 */
export async function nixSystems(showConfigJson: string): Promise<string[]> {
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(showConfigJson) as Record<string, unknown>;
  } catch {
    throw new NixociError("nix show-config", "printed no JSON");
  }
  // Nix 2.4 and later give {value, defaultValue, ...} per setting; older ones the value itself.
  const setting = (name: string): unknown => {
    const v = config[name];
    return typeof v === "object" && v !== null && !Array.isArray(v) && "value" in v ? v.value : v;
  };
  const words = (v: unknown): string[] =>
    Array.isArray(v) ? v.map(String) : typeof v === "string" ? v.split(/\s+/).filter(Boolean) : [];
  const system = setting("system");
  if (typeof system !== "string" || !system) throw new NixociError("nix show-config", "gave no system");
  const systems = [system, ...words(setting("extra-platforms"))];
  const entries = async (spec: string, depth: number): Promise<string[]> => {
    const out: string[] = [];
    for (const raw of spec.split(/[;\n]/)) {
      const entry = raw.replace(/#.*/, "").trim();
      if (!entry) continue;
      if (entry.startsWith("@")) {
        if (depth > 0) continue;
        try {
          out.push(...(await entries(await readFile(entry.slice(1), "utf8"), depth + 1)));
        } catch {
          // no machines file: no remote builders
        }
        continue;
      }
      out.push(entry);
    }
    return out;
  };
  const builders = setting("builders");
  for (const entry of typeof builders === "string" ? await entries(builders, 0) : []) {
    const field = entry.split(/\s+/)[1];
    if (field && field !== "-") systems.push(...field.split(",").filter(Boolean));
  }
  return [...new Set(systems)];
}
