// Who a request came from. The connection's peer, unless that peer is a reverse proxy the operator named with
// --trusted-proxy: then the client is the address that proxy (and any trusted proxies before it) saw, read from
// X-Forwarded-For right to left, skipping trusted hops. Anyone can send X-Forwarded-For, so it is read only
// when the peer is trusted, and only up to the first address no trusted proxy vouches for. That address keys
// the failed-login limit and appears in the request log.
import { BlockList, isIP, isIPv4 } from "node:net";
import { NixociError } from "../../util/errors.js";

/** An IPv4 address in IPv6's mapped form (a dual-stack listener's view of an IPv4 client) as plain IPv4. */
export function plainAddress(address: string | undefined): string | undefined {
  return address && /^::ffff:/i.test(address) && isIPv4(address.slice(7)) ? address.slice(7) : address;
}

/** The reverse proxies whose X-Forwarded-For is believed: addresses and ADDRESS/BITS networks. */
export class TrustedProxies {
  private readonly list = new BlockList();
  readonly size: number;

  /** `specs`: "10.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"; a malformed one is a NixociError naming it. */
  constructor(specs: readonly string[], where = "--trusted-proxy") {
    for (const spec of specs) {
      const [address, bits, extra] = spec.split("/");
      const family = isIP(address);
      const max = family === 4 ? 32 : 128;
      const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
      if (family === 0 || extra !== undefined || !(prefix >= 0 && prefix <= max))
        throw new NixociError(where, `not an IP address or ADDRESS/BITS network: ${JSON.stringify(spec)}`);
      const type = family === 4 ? "ipv4" : "ipv6";
      if (prefix === max) this.list.addAddress(address, type);
      else this.list.addSubnet(address, prefix, type);
    }
    this.size = specs.length;
  }

  /** Whether `address` (plain or IPv4-mapped) is one of the trusted proxies. */
  trusts(address: string | undefined): boolean {
    const a = plainAddress(address)?.replace(/%.*$/, "");
    if (!a || this.size === 0) return false;
    const family = isIP(a);
    return family !== 0 && this.list.check(a, family === 4 ? "ipv4" : "ipv6");
  }

  /**
   * The client of a request whose connection comes from `peer` with these X-Forwarded-For values: the peer
   * itself unless trusted; else the rightmost forwarded address that is not a trusted proxy (a malformed entry
   * stops the walk at the last trusted hop; all trusted: the leftmost).
   */
  clientOf(peer: string | undefined, forwardedFor: string | string[] | undefined): string | undefined {
    let client = plainAddress(peer);
    if (!this.trusts(client) || forwardedFor === undefined) return client;
    const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(",") : forwardedFor)
      .split(",")
      .map((h) => h.trim())
      .filter((h) => h !== "");
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = plainAddress(hops[i].replace(/^\[(.*)\]$/, "$1"));
      if (!hop || isIP(hop.replace(/%.*$/, "")) === 0) return client;
      client = hop;
      if (!this.trusts(hop)) return hop;
    }
    return client;
  }
}

/** No trusted proxies: every request's client is its connection's peer. */
export const NO_TRUSTED_PROXIES = new TrustedProxies([]);
