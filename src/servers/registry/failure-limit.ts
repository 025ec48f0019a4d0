// Failed credential checks per client address: after `max` failures within `windowMs` (counted from the
// first), the address's requests with credentials are refused (429, Retry-After: the rest of the window)
// without checking them, until the window ends. Checks in progress count as possible failures, so a burst of
// concurrent guesses cannot get more than `max` checks started either. Requests without credentials are not
// affected. Memory is bounded: at most `maxClients` addresses are tracked; beyond, expired ones are dropped,
// then the oldest idle ones.
//
// The address is the request's client (client-address.ts: the connection's peer, or what a --trusted-proxy
// forwarded; anyone else's X-Forwarded-For is ignored, since anyone can send it). IPv4-mapped IPv6
// addresses count as IPv4; IPv6 addresses count by their /64, since one host commonly has a whole /64.
import { isIPv6 } from "node:net";
import { plainAddress } from "./client-address.js";

export interface FailureLimitOptions {
  /** Failed checks allowed per window (default 10). */
  max?: number;
  /** The window, from its first failure (default 60 s). */
  windowMs?: number;
  /** Addresses tracked at most (default 10000). */
  maxClients?: number;
  /** The clock (tests). */
  now?: () => number;
}

interface Entry {
  failures: number;
  /** When the failures are forgotten (0: no failures counted). */
  resetAt: number;
  inflight: number;
}

/** The key an address is counted under: IPv4 as is, IPv6 by its first 64 bits. */
export function clientKey(address: string | undefined): string {
  address = plainAddress(address);
  if (!address) return "unknown";
  if (!isIPv6(address)) return address;
  const zoneless = address.replace(/%.*$/, "");
  const [head, tail = ""] = zoneless.split("::");
  const left = head ? head.split(":") : [];
  const right = zoneless.includes("::") ? (tail ? tail.split(":") : []) : [];
  const groups = zoneless.includes("::")
    ? [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right]
    : left;
  return `${groups
    .slice(0, 4)
    .map((g) => (parseInt(g, 16) || 0).toString(16))
    .join(":")}::/64`;
}

export class FailureLimit {
  readonly max: number;
  readonly windowMs: number;
  private readonly maxClients: number;
  private readonly now: () => number;
  private readonly entries = new Map<string, Entry>();

  constructor(opts: FailureLimitOptions = {}) {
    this.max = opts.max ?? 10;
    this.windowMs = opts.windowMs ?? 60_000;
    this.maxClients = opts.maxClients ?? 10_000;
    this.now = opts.now ?? Date.now;
  }

  /** Addresses tracked now. */
  get size(): number {
    return this.entries.size;
  }

  private entry(key: string, create: boolean): Entry | undefined {
    let e = this.entries.get(key);
    const now = this.now();
    if (e && e.resetAt !== 0 && e.resetAt <= now) {
      e.failures = 0;
      e.resetAt = 0;
    }
    if (e || !create) return e;
    if (this.entries.size >= this.maxClients) this.evict(now);
    e = { failures: 0, resetAt: 0, inflight: 0 };
    this.entries.set(key, e);
    return e;
  }

  private evict(now: number): void {
    for (const [k, e] of this.entries)
      if (e.inflight === 0 && (e.resetAt === 0 || e.resetAt <= now)) this.entries.delete(k);
    for (const [k, e] of this.entries) {
      if (this.entries.size < this.maxClients) break;
      if (e.inflight === 0) this.entries.delete(k);
    }
  }

  private tidy(key: string, e: Entry): void {
    if (e.inflight === 0 && e.failures === 0) this.entries.delete(key);
  }

  /** Seconds until `key` may try credentials again, or undefined when it may now. */
  blocked(key: string): number | undefined {
    const e = this.entry(key, false);
    if (!e) return undefined;
    if (e.failures < this.max) {
      this.tidy(key, e);
      return undefined;
    }
    return Math.max(1, Math.ceil((e.resetAt - this.now()) / 1000));
  }

  /**
   * Starts an expensive check (a bcrypt comparison) for `key`: undefined when it may go ahead (then call end()
   * once it is done), else the seconds until it may be retried. Checks in progress count as possible failures.
   */
  begin(key: string): number | undefined {
    const wait = this.blocked(key);
    if (wait !== undefined) return wait;
    const e = this.entry(key, true)!;
    if (e.failures + e.inflight >= this.max) return 1;
    e.inflight++;
    return undefined;
  }

  /** Ends a check begun with begin(). */
  end(key: string): void {
    const e = this.entry(key, false);
    if (!e) return;
    e.inflight = Math.max(0, e.inflight - 1);
    this.tidy(key, e);
  }

  /** Counts a failed check against `key`. */
  fail(key: string): void {
    const e = this.entry(key, true)!;
    if (e.failures === 0) e.resetAt = this.now() + this.windowMs;
    e.failures++;
    // Most recently failing last: eviction drops the oldest first.
    this.entries.delete(key);
    this.entries.set(key, e);
  }
}
