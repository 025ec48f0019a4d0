// File-system failures as a user should read them: the path they gave or know (never the name of a temporary a
// writer was using, which means nothing to them), the problem in words, and the fix where there is one. Node's
// own messages repeat the errno code and add the system call and the temporary's path
// ("ENOENT: no such file or directory, open '/out/.x.tar.tmp-14490-…'").
import { resolve } from "node:path";
import { NixociError, oneLine } from "./errors.js";

/** Words for the errno codes file-system calls fail with (those of strerror(3), lowercased). */
const WORDS: Record<string, string> = {
  EACCES: "permission denied",
  EBUSY: "device or resource busy",
  EDQUOT: "disk quota exceeded",
  EEXIST: "already exists",
  EFBIG: "file too large",
  EIO: "input/output error",
  EISDIR: "is a directory",
  ELOOP: "too many levels of symbolic links",
  EMFILE: "too many open files",
  EMLINK: "too many links",
  ENAMETOOLONG: "file name too long",
  ENFILE: "too many open files in the system",
  ENOENT: "no such file or directory",
  ENOSPC: "no space left on device",
  ENOTDIR: "not a directory",
  ENOTEMPTY: "directory not empty",
  EPERM: "operation not permitted",
  EPIPE: "the reader closed the pipe",
  EROFS: "read-only file system",
  ETXTBSY: "text file busy",
  EXDEV: "cross-device link",
};

/** The errno code of a failed system call ("EACCES"), or undefined for any other error. */
export function errnoCode(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

/**
 * The problem in words: "permission denied" for EACCES. An errno code without words here gets libuv's own
 * description from the message ("EXYZ: some description, open '/p'" -> "some description"), never the path.
 */
export function errnoWords(err: unknown): string {
  const code = errnoCode(err);
  if (code && WORDS[code]) return WORDS[code];
  const message = (err as Error | undefined)?.message ?? String(err);
  if (!code) return message;
  const m = new RegExp(`^${code}: (.*?)(?:, [a-z_]+(?: '.*)?)?$`, "s").exec(message);
  return m?.[1] || code.toLowerCase();
}

/** The codes of a refusal a user fixes by choosing another place or running as another user. */
export const PERMISSION: ReadonlySet<string> = new Set(["EACCES", "EPERM", "EROFS"]);

/** The codes of a full file system (space or quota). */
export const NO_SPACE: ReadonlySet<string> = new Set(["ENOSPC", "EDQUOT"]);

/** True when `path` is `dir` or inside it (both absolute, or both as the user gave them). */
export function isInside(path: string, dir: string): boolean {
  const d = resolve(dir);
  const p = resolve(path);
  return p === d || p.startsWith(d.endsWith("/") ? d : `${d}/`);
}

/** Writers' temporaries: ".<name>.tmp-<pid>-<12 hex>" (util/fs.ts tempSuffix), as one path component. */
const TEMP_COMPONENT = /^\..*\.tmp-\d+-[0-9a-f]{12}$/s;

/**
 * A path fit to show: when a component is a temporary's name, the directory holding that temporary (a user knows
 * the directory; the temporary's name means nothing to them, and is gone by the time they look).
 */
export function withoutTemporaries(path: string): string {
  const parts = path.split("/");
  const i = parts.findIndex((p) => TEMP_COMPONENT.test(p));
  if (i < 0) return path;
  return parts.slice(0, i).join("/") || "/";
}

/** A file-system failure on `path` (what the user knows: the output, the cache, the store), with its errno code. */
export class FileSystemError extends NixociError {
  constructor(
    /** The path the message names. */
    readonly path: string,
    /** The errno code of the failed call ("ENOSPC"). */
    readonly code: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super(path, problem, options);
    this.name = "FileSystemError";
  }
}

/** `text` with each path in it (from a "/" to the next space) shown as withoutTemporaries shows it. */
export function withoutTemporariesIn(text: string): string {
  return text.replace(/\/\S*/g, (p) => withoutTemporaries(p));
}

/**
 * `err` as an error naming `path` (shown without temporaries): "PATH: DOING: PROBLEM", a FileSystemError for a
 * failed system call. A NixociError (already worded) passes through unchanged; any other error keeps its message,
 * but for the temporaries it may name.
 */
export function fsError(path: string, err: unknown, doing: string): Error {
  if (err instanceof NixociError) return err;
  const shown = withoutTemporaries(path);
  const code = errnoCode(err);
  if (!code) {
    const message = (err as Error | undefined)?.message ?? String(err);
    return new NixociError(shown, `${doing}: ${withoutTemporariesIn(message)}`, {
      cause: err,
    });
  }
  return new FileSystemError(shown, code, `${doing}: ${errnoWords(err)}`, { cause: err });
}

/** What a failed system call was doing, as a user reads it. */
const DOING: Record<string, string> = {
  access: "cannot access",
  chmod: "cannot change the mode",
  copyfile: "cannot copy",
  fsync: "cannot sync",
  link: "cannot link",
  lstat: "cannot access",
  mkdir: "cannot create the directory",
  open: "cannot open",
  opendir: "cannot list the directory",
  read: "cannot read",
  readlink: "cannot read the link",
  realpath: "cannot resolve",
  rename: "cannot put in place",
  rm: "cannot remove",
  rmdir: "cannot remove",
  scandir: "cannot list the directory",
  stat: "cannot access",
  symlink: "cannot create the symlink",
  unlink: "cannot remove",
  utime: "cannot set the times",
  write: "cannot write",
};

/**
 * The last resort for a failed system call nobody worded: "PATH: DOING: PROBLEM" with the path shown without
 * temporaries (a rename names its destination); undefined for anything else.
 */
export function describeSystemError(err: unknown): string | undefined {
  const e = err as NodeJS.ErrnoException & { dest?: string };
  const code = errnoCode(e);
  if (!code || typeof e.path !== "string") return undefined;
  const path = withoutTemporaries(typeof e.dest === "string" ? e.dest : e.path);
  const doing = (e.syscall && DOING[e.syscall]) ?? (e.syscall ? `${e.syscall} failed` : undefined);
  return oneLine(`${path}: ${doing ? `${doing}: ` : ""}${errnoWords(e)}`);
}

/**
 * Out of space or quota: an ENOSPC or EDQUOT as the error or anywhere in its causes (a NixociError wrapping the
 * write's), or said so by a program's message. The registry answers 507 for it: the request failed, the server
 * is not broken.
 */
export function isStorageFull(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOSPC" || code === "EDQUOT") return true;
    if (e instanceof Error && /no space left on device|disk quota exceeded/i.test(e.message)) return true;
  }
  return false;
}
