// The command line's arguments with their exact bytes. Node decodes argv as UTF-8 and turns every byte that is not
// part of a valid sequence into U+FFFD, so an argument naming a file whose name is not UTF-8 (which Nix allows:
// names are bytes) would name another file, or none. Linux keeps the bytes in /proc/self/cmdline: where an argument
// came out with U+FFFD, the arguments are taken from there instead, decoded as file names are (decodeFileName keeps
// such bytes as escapes, which fsPath turns back into the bytes at the filesystem).
import { readFileSync } from "node:fs";
import { decodeFileName } from "../util/file-names.js";

const lossy = new TextDecoder("utf-8", { ignoreBOM: true });

/** `args` (process.argv after the script) with the bytes Node's decoding lost restored as escapes. */
export function commandLineArguments(args: string[], cmdline = "/proc/self/cmdline"): string[] {
  if (!args.some((a) => a.includes("\ufffd"))) return args;
  let raw: Buffer;
  try {
    raw = readFileSync(cmdline);
  } catch {
    return args; // not Linux, or no /proc: the decoded arguments are all there is
  }
  // NUL-terminated strings: node, its own options, the script, then the arguments (the last args.length).
  const all: Buffer[] = [];
  for (let start = 0; start < raw.length;) {
    const end = raw.indexOf(0, start);
    all.push(raw.subarray(start, end === -1 ? raw.length : end));
    start = end === -1 ? raw.length : end + 1;
  }
  if (all.length < args.length) return args;
  const tail = all.slice(all.length - args.length);
  // Only if they are the same arguments (something may have rewritten the process's title over them).
  if (!tail.every((bytes, i) => lossy.decode(bytes) === args[i])) return args;
  return tail.map(decodeFileName);
}
