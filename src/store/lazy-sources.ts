// Binary caches a daemon substitutes from, opened on first use rather than at start: a cache that is down when the
// daemon starts (a node booting while its cache is unreachable) must not stop the daemon, whose other work needs no
// cache at all (the CRI image service also serves every registry image). A cache that fails to open is tried again
// after a pause, not on every call; calls at the same time share one attempt.
import type { Store } from "./store.js";

/** How long a cache that failed to open is left alone before the next try. */
const RETRY_MS = 30_000;

export class LazySources {
  private readonly opened = new Map<string, Store>();
  private readonly opening = new Map<string, Promise<Store | undefined>>();
  private readonly failedAt = new Map<string, number>();
  private closed = false;

  constructor(
    private readonly urls: readonly string[],
    private readonly open: (url: string) => Promise<Store>,
    private readonly onFailure?: (url: string, err: Error) => void,
    private readonly retryMs = RETRY_MS,
  ) {}

  /** How many caches were configured (whether they open or not). */
  get configured(): number {
    return this.urls.length;
  }

  /** The caches that are open now, in the configured order (opening the ones not open yet, if due). */
  async stores(): Promise<Store[]> {
    const out: Store[] = [];
    for (const url of this.urls) {
      const store = this.opened.get(url) ?? (await this.tryOpen(url));
      if (store) out.push(store);
    }
    return out;
  }

  private tryOpen(url: string): Promise<Store | undefined> {
    const failed = this.failedAt.get(url);
    if (this.closed || (failed !== undefined && Date.now() - failed < this.retryMs))
      return Promise.resolve(undefined);
    let attempt = this.opening.get(url);
    if (!attempt) {
      attempt = this.open(url).then(
        (store) => {
          this.opening.delete(url);
          // Closed while it was opening: nobody will close it later.
          if (this.closed) {
            store.close();
            return undefined;
          }
          this.opened.set(url, store);
          this.failedAt.delete(url);
          return store;
        },
        (err: Error) => {
          this.opening.delete(url);
          this.failedAt.set(url, Date.now());
          this.onFailure?.(url, err);
          return undefined;
        },
      );
      this.opening.set(url, attempt);
    }
    return attempt;
  }

  close(): void {
    this.closed = true;
    for (const store of this.opened.values()) store.close();
    this.opened.clear();
  }
}
