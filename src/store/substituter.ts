// Realises store paths into a local store directory from a chain of sources: the local Nix store first
// (when it is not the target), then binary caches by priority. The whole closure is planned from metadata
// before any NAR moves; paths are then copied with bounded parallelism, each only after its references, and
// each atomically (see LocalStore.addPath). A source that fails for one path is followed by the next.
import { NixociError } from "../util/errors.js";
import { allSettledOrThrow, Limiter } from "../util/concurrency.js";
import type { LocalStore } from "./local-store.js";
import type { PathInfo } from "./path-info.js";
import type { Store } from "./store.js";

export type SubstituteEvent =
  | { type: "present"; path: string }
  | { type: "copying"; path: string; from: string; narSize: number }
  | { type: "copied"; path: string; from: string; narSize: number }
  | { type: "failed"; path: string; from: string; error: string };

export interface SubstituteResult {
  /** Paths copied into the target by this run. */
  copied: string[];
  /** Paths of the closure that were already valid in the target. */
  present: string[];
}

interface Plan {
  info: PathInfo;
  /** The best source that has the path; the ones after it are fallbacks. */
  source: Store;
}

export class Substituter {
  private readonly sources: Store[];

  constructor(
    private readonly target: LocalStore,
    sources: Store[],
    private readonly opts: { parallelism?: number; onEvent?: (e: SubstituteEvent) => void } = {},
  ) {
    // Stable sort: equal priorities keep the caller's order.
    this.sources = sources
      .map((s, i) => ({ s, i }))
      .sort((a, b) => a.s.priority - b.s.priority || a.i - b.i)
      .map((x) => x.s);
  }

  private emit(e: SubstituteEvent): void {
    this.opts.onEvent?.(e);
  }

  /** Finds every source that has `path`; errors from individual sources are kept as reasons. */
  private async locate(path: string): Promise<Plan | undefined> {
    const reasons: string[] = [];
    for (const source of this.sources) {
      try {
        const info = await source.queryPathInfo(path);
        if (info) return { info, source }; // fallbacks are looked up only if copying from it fails
      } catch (err) {
        reasons.push((err as Error).message);
      }
    }
    if (reasons.length) throw new NixociError(path, `cannot substitute: ${reasons.join("; ")}`);
    return undefined;
  }

  async realise(roots: readonly string[]): Promise<SubstituteResult> {
    const plans = new Map<string, Plan>();
    const present: string[] = [];
    const seen = new Set<string>();
    let frontier = [...new Set(roots)];
    frontier.forEach((p) => seen.add(p));
    const query = new Limiter(16);
    while (frontier.length) {
      const level = await Promise.all(
        frontier.map((path) =>
          query.run(async () => {
            if (await this.target.queryPathInfo(path)) return { path, present: true as const };
            const plan = await this.locate(path);
            if (!plan) throw new NixociError(path, `not found in any of: ${this.sourceList()}`);
            return { path, present: false as const, plan };
          }),
        ),
      );
      frontier = [];
      for (const r of level) {
        if (r.present) {
          present.push(r.path);
          this.emit({ type: "present", path: r.path });
          continue;
        }
        plans.set(r.path, r.plan);
        for (const ref of r.plan.info.references) {
          if (!seen.has(ref)) {
            seen.add(ref);
            frontier.push(ref);
          }
        }
      }
    }
    await this.copyAll(plans);
    return { copied: [...plans.keys()].sort(), present: present.sort() };
  }

  private sourceList(): string {
    return this.sources.map((s) => s.url).join(", ") || "(no sources)";
  }

  private async copyAll(plans: Map<string, Plan>): Promise<void> {
    const limiter = new Limiter(this.opts.parallelism ?? 4);
    const done = new Map<string, Promise<void>>();
    const realise = (path: string): Promise<void> => {
      let p = done.get(path);
      if (!p) {
        const plan = plans.get(path);
        p = plan
          ? Promise.all(plan.info.references.filter((r) => r !== path).map(realise)).then(() =>
              limiter.run(() => this.copyOne(plan)),
            )
          : Promise.resolve(); // already present in the target
        done.set(path, p);
      }
      return p;
    };
    await allSettledOrThrow([...plans.keys()].sort().map(realise));
  }

  /** Copies one path from its best source, falling back to the other sources on failure. */
  private async copyOne(plan: Plan): Promise<void> {
    const errors: string[] = [];
    let info = plan.info;
    for (const source of this.sources.slice(this.sources.indexOf(plan.source))) {
      try {
        if (source !== plan.source) {
          const alt = await source.queryPathInfo(info.path);
          if (!alt) continue;
          info = alt;
        }
        this.emit({ type: "copying", path: info.path, from: source.url, narSize: info.narSize });
        const input = info.download ? `${source.url}/${info.download.url}` : info.path;
        await this.target.addPath(info, await source.narFromPath(info), input);
        this.emit({ type: "copied", path: info.path, from: source.url, narSize: info.narSize });
        return;
      } catch (err) {
        const msg = (err as Error).message;
        errors.push(msg);
        this.emit({ type: "failed", path: info.path, from: source.url, error: msg });
      }
    }
    throw new NixociError(plan.info.path, `cannot substitute: ${errors.join("; ")}`);
  }
}
