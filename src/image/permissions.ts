// File ownership and modes in an image without a VM or fakeroot: rules rewrite the tar headers nixoci writes.
//
// - `--perm REGEX=MODE[:UID[:GID]]` (spec `perms:`): every entry whose absolute path in the image ("/home/app",
//   "/nix/store/<hash>-app/var") matches REGEX (JavaScript syntax, unanchored unless written with ^ and $) gets
//   MODE's permission bits (octal, with setuid/setgid/sticky) and, when given, that owner. Rules apply in order;
//   a later match overrides an earlier one. A symlink keeps mode 0777 (Linux ignores a symlink's mode) and takes
//   the owner only.
// - `--uid N` / `--gid N` (spec `uid`, `gid`): the owner of every entry of the store paths (not of /nix and
//   /nix/store themselves), before the rules.
// Same rules, same bytes: the rules are part of each layer's cache identity, and a layer they leave unchanged
// is byte-identical to one built without them.
import { NixociError, quote } from "../util/errors.js";
import { TAR_SYMLINK, type TarHeader } from "./tar-header.js";
import { decodeFileName } from "../util/file-names.js";

export interface PermRule {
  /** The rule as written (`REGEX=MODE[:UID[:GID]]`), for messages and the cache identity. */
  source: string;
  pattern: RegExp;
  mode: number;
  uid?: number;
  gid?: number;
}

export interface Ownership {
  /** Owner of every store path entry (0 when unset). */
  uid?: number;
  gid?: number;
  rules: PermRule[];
}

/** The largest id a ustar header holds in octal (7 digits). */
const MAX_ID = 0o7777777;

function parseId(s: string, what: string, input: string): number {
  if (!/^\d+$/.test(s) || Number(s) > MAX_ID)
    throw new NixociError(input, `${what} ${quote(s)} is not a number from 0 to ${MAX_ID}`);
  return Number(s);
}

/** An owner id given on its own (`--uid`, `--gid`). */
export function parseOwnerId(s: string, what: "uid" | "gid", input = `--${what}`): number {
  return parseId(s, what, input);
}

/**
 * `REGEX=MODE[:UID[:GID]]`. The mode and owner come after the last `=`, so the pattern may itself hold `=`.
 */
export function parsePermRule(s: string, input = "--perm"): PermRule {
  const eq = s.lastIndexOf("=");
  const usage = "is not REGEX=MODE[:UID[:GID]] (e.g. '^/home/app(/|$)=0700:1000:1000')";
  if (eq <= 0) throw new NixociError(input, `${quote(s)} ${usage}`);
  const [modeText, uid, gid, ...rest] = s.slice(eq + 1).split(":");
  if (rest.length || !/^0?[0-7]{3,4}$/.test(modeText))
    throw new NixociError(input, `${quote(s)} ${usage}; the mode is octal, like 0755 or 4755`);
  let pattern: RegExp;
  try {
    pattern = new RegExp(s.slice(0, eq));
  } catch (err) {
    throw new NixociError(
      input,
      `${quote(s)}: the pattern is not a valid regular expression: ${(err as Error).message}`,
    );
  }
  const rule: PermRule = { source: s, pattern, mode: parseInt(modeText, 8) };
  if (uid !== undefined && uid !== "") rule.uid = parseId(uid, "uid", input);
  if (gid !== undefined && gid !== "") rule.gid = parseId(gid, "gid", input);
  return rule;
}

export function hasOwnership(o: Ownership | undefined): o is Ownership {
  return o !== undefined && (o.uid !== undefined || o.gid !== undefined || o.rules.length > 0);
}

/** What goes into a layer's cache identity (undefined when nothing is rewritten, so identities stay as they were). */
export function ownershipIdentity(o: Ownership | undefined): unknown {
  if (!hasOwnership(o)) return undefined;
  return { uid: o.uid ?? null, gid: o.gid ?? null, rules: o.rules.map((r) => r.source) };
}

/**
 * A header rewriter for one layer. `storeEntries` says whether the layer's entries are store path contents
 * (which `--uid`/`--gid` own); the store directory's own ancestors are never store path contents.
 * `rewritten` becomes true once any header changed.
 */
export class HeaderRewriter {
  rewritten = false;
  private readonly storePrefix: string | undefined;

  constructor(
    private readonly o: Ownership,
    storeDir: string | undefined,
  ) {
    this.storePrefix = storeDir === undefined ? undefined : storeDir.replace(/^\/+|\/+$/g, "") + "/";
  }

  apply(h: TarHeader): TarHeader {
    // Bytes that are not UTF-8 stay escapes (util/file-names.ts): a pattern's U+FFFD does not match them.
    const name = decodeFileName(h.name).replace(/\/$/, "");
    let { mode, uid, gid } = h;
    if (this.storePrefix !== undefined && name.startsWith(this.storePrefix)) {
      if (this.o.uid !== undefined) uid = this.o.uid;
      if (this.o.gid !== undefined) gid = this.o.gid;
    }
    const path = "/" + name;
    for (const r of this.o.rules) {
      if (!r.pattern.test(path)) continue;
      if (h.type !== TAR_SYMLINK) mode = r.mode;
      if (r.uid !== undefined) uid = r.uid;
      if (r.gid !== undefined) gid = r.gid;
    }
    if (mode === h.mode && (uid ?? 0) === (h.uid ?? 0) && (gid ?? 0) === (h.gid ?? 0)) return h;
    this.rewritten = true;
    return { ...h, mode, uid, gid };
  }
}
