// Closures: every path reachable through references from some roots, with each path's metadata, and an
// order in which references come before the paths that use them (for copying and for layering).
import { NixociError } from "../util/errors.js";
import { mapLimit } from "../util/concurrency.js";
import type { PathInfo } from "./path-info.js";
import type { Store } from "./store.js";

/** The closure of `roots` in `store`, keyed by path. Fails naming the first path the store lacks. */
export async function computeClosure(
  store: Store,
  roots: readonly string[],
  opts: { concurrency?: number } = {},
): Promise<Map<string, PathInfo>> {
  const infos = new Map<string, PathInfo>();
  const seen = new Set<string>();
  let frontier = [...new Set(roots)];
  frontier.forEach((p) => seen.add(p));
  while (frontier.length) {
    // Breadth-first, one level at a time, so a binary cache gets many narinfo requests in flight at once.
    const level = await mapLimit(frontier, opts.concurrency ?? 16, async (path) => {
      const info = await store.queryPathInfo(path);
      if (!info) throw new NixociError(path, `path is not valid in ${store.url}`);
      return info;
    });
    frontier = [];
    for (const info of level) {
      infos.set(info.path, info);
      for (const ref of info.references) {
        if (!seen.has(ref)) {
          seen.add(ref);
          frontier.push(ref);
        }
      }
    }
  }
  return infos;
}

/**
 * Orders paths so that every path comes after its references (self references ignored); ties are broken
 * by path name so the order is the same on every run.
 */
export function referencesFirst(infos: ReadonlyMap<string, PathInfo>): PathInfo[] {
  const out: PathInfo[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (path: string): void => {
    const s = state.get(path);
    if (s === "done") return;
    if (s === "visiting") throw new NixociError(path, "reference cycle between store paths");
    const info = infos.get(path);
    if (!info) return; // outside the set (already present elsewhere)
    state.set(path, "visiting");
    for (const ref of info.references) if (ref !== path) visit(ref);
    state.set(path, "done");
    out.push(info);
  };
  for (const path of [...infos.keys()].sort()) visit(path);
  return out;
}
