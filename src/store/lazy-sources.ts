// Binary caches a daemon substitutes from, opened on first use rather than at start: a cache that is down when the
// daemon starts (a node booting while its cache is unreachable) must not stop the daemon, whose other work needs no
// cache at all (the CRI image service also serves every registry image). A cache that fails to open is tried again
// after a pause, not on every call.
import type { Store } from "./store.js";

/** How long a cache that failed to open is left alone before the next try. */
const RETRY_MS = 30_000;

export class LazySources {
  private readonly opened = new Map<string, Store>();
  private readonly failedAt = new Map<string, number>();

  constructor(
    private readonly urls: readonly string[],
    private readonly open: (url: string) => Promise<Store>,
    private readonly onFailure?: (url: string, err: Error) => void,
  ) {}

  /** How many caches were configured (whether they open or not). */
  get configured(): number {
    return this.urls.length;
  }

  /** The caches that are open now, in the configured order (opening the ones not open yet, if due). */
  async stores(): Promise<Store[]> {
    const out: Store[] = [];
    for (const url of this.urls) {
      let store = this.opened.get(url);
      if (!store) {
        const failed = this.failedAt.get(url);
        if (failed !== undefined && Date.now() - failed < RETRY_MS) continue;
        try {
          store = await this.open(url);
        } catch (err) {
          this.failedAt.set(url, Date.now());
          this.onFailure?.(url, err as Error);
          continue;
        }
        this.opened.set(url, store);
        this.failedAt.delete(url);
      }
      out.push(store);
    }
    return out;
  }

  close(): void {
    for (const store of this.opened.values()) store.close();
    this.opened.clear();
  }
}
