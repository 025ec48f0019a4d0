// A memo with a lifetime, for what resolvers fetch or evaluate once in a while (a package index, an evaluation).
/** A value computed at most once per `ttlMs` (concurrent callers share the computation; failures are not kept). */
export class Cached<T> {
  private value?: { at: number; promise: Promise<T> };

  constructor(
    private readonly ttlMs: number,
    private readonly compute: () => Promise<T>,
  ) {}

  get(): Promise<T> {
    const now = Date.now();
    if (this.value && now - this.value.at < this.ttlMs) return this.value.promise;
    const promise = this.compute();
    const entry = { at: now, promise };
    this.value = entry;
    promise.catch(() => {
      if (this.value === entry) this.value = undefined;
    });
    return promise;
  }

  invalidate(): void {
    this.value = undefined;
  }
}
