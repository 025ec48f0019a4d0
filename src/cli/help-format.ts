// The one source of every command's help: a command's flags (with the value they take, one line of help and the
// default), its usage lines, a description and examples. `--help` renders it as text, scripts/gen-cli-reference
// renders the same as the README's CLI reference, and the argument parser takes its flag table from it, so the
// flags, the help and the README cannot drift apart.

/** One flag: what node:util parseArgs needs, plus its help. */
export interface FlagHelp {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
  /** The value's placeholder in the help (`DIR`, `N`, `gzip|zstd|none`). */
  value?: string;
  /** One line: what the flag does. */
  help: string;
  /** The default, as the help shows it (not applied by the parser: commands apply their own). */
  byDefault?: string;
  /** A heading the flag starts in the help (flags that follow it are under it until the next one). */
  section?: string;
}

export type FlagTable = Record<string, FlagHelp>;

export interface CommandHelp {
  /** "build", or "cache push" for a subcommand. */
  name: string;
  /** One line, for the command list. */
  summary: string;
  /** Usage lines, each starting with `nixoci `. */
  usage: readonly string[];
  /** Paragraphs after the usage (plain text; `code` in backticks renders as code in the README). */
  description?: readonly string[];
  flags: FlagTable;
  /** Placeholders of positional arguments and what they are, listed after the flags. */
  args?: ReadonlyArray<readonly [string, string]>;
  /** [command line, what it does]. */
  examples: ReadonlyArray<readonly [string, string]>;
}

/** `-o, --output DEST` */
export function flagLabel(name: string, f: FlagHelp): string {
  const long = `--${name}${f.type === "string" ? ` ${f.value ?? "VALUE"}` : ""}`;
  return f.short ? `-${f.short}, ${long}` : `    ${long}`;
}

/** The help line's text: help, repeatable, default. */
function flagText(f: FlagHelp): string {
  const notes = [f.multiple ? "repeatable" : "", f.byDefault !== undefined ? `default: ${f.byDefault}` : ""]
    .filter(Boolean)
    .join("; ");
  return notes ? `${f.help} (${notes})` : f.help;
}

/** Words of `text` in lines of at most `width` characters (a longer word gets a line of its own). */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

const WIDTH = 100;

/** Rows of [label, text] as an aligned two-column list, the text wrapped beside the labels. */
function columns(rows: Array<[string, string]>, indent: number, labelWidth: number): string[] {
  const out: string[] = [];
  const pad = " ".repeat(indent + labelWidth);
  for (const [label, text] of rows) {
    const body = wrap(text, WIDTH - indent - labelWidth);
    if (label.length + 2 > labelWidth) {
      out.push(" ".repeat(indent) + label);
      out.push(...body.map((l) => pad + l));
    } else {
      out.push(" ".repeat(indent) + label.padEnd(labelWidth) + (body[0] ?? ""));
      out.push(...body.slice(1).map((l) => pad + l));
    }
  }
  return out;
}

/** The width of a label column: its labels and two spaces, at most `max` (longer labels get a line of their own). */
const labelColumn = (labels: string[], max: number): number =>
  Math.min(Math.max(...labels.map((l) => l.length)) + 2, max);

/** Backquoted code spans as plain text (the terminal has no code font). */
const plain = (s: string): string => s.replace(/`([^`]*)`/g, "$1");

/** `nixoci CMD --help`. */
export function helpText(h: CommandHelp): string {
  const out: string[] = [];
  out.push(`usage: ${h.usage[0]}`, ...h.usage.slice(1).map((u) => `       ${u}`), "");
  out.push(...wrap(plain(h.summary.charAt(0).toUpperCase() + h.summary.slice(1)) + ".", WIDTH), "");
  for (const p of h.description ?? []) out.push(...wrap(plain(p), WIDTH), "");
  if (h.args?.length) {
    const rows = h.args.map(([a, t]): [string, string] => [a, plain(t)]);
    out.push(
      "arguments:",
      ...columns(
        rows,
        2,
        labelColumn(
          rows.map(([a]) => a),
          16,
        ),
      ),
      "",
    );
  }
  const flags = Object.entries(h.flags);
  if (flags.length) {
    const indent = flags.some(([, f]) => f.section) ? 4 : 2;
    const rows = flags.map(([name, f]): [string, string] => [flagLabel(name, f), plain(flagText(f))]);
    rows.push(["-h, --help", "this help"]);
    const width = labelColumn(
      rows.map(([l]) => l),
      30,
    );
    out.push("options:");
    flags.forEach(([, f], i) => {
      if (f.section) out.push(`  ${f.section}:`);
      out.push(...columns([rows[i]], indent, width));
    });
    out.push(...columns([rows[rows.length - 1]], indent, width), "");
  }
  if (h.examples.length) {
    out.push("examples:");
    for (const [cmd, what] of h.examples)
      out.push(...wrap(`# ${plain(what)}`, WIDTH - 2).map((l) => `  ${l}`), `  ${cmd}`);
    out.push("");
  }
  return out.join("\n");
}

/** A table cell: pipes escaped. */
const cell = (s: string): string => s.replace(/\|/g, "\\|");

/** The README's entry for one command. */
export function markdown(h: CommandHelp): string {
  const out: string[] = [];
  out.push(`### \`nixoci ${h.name}\``, "");
  out.push(`${h.summary.charAt(0).toUpperCase()}${h.summary.slice(1)}.`, "");
  out.push("```", ...h.usage, "```", "");
  for (const p of h.description ?? []) out.push(p, "");
  if (h.args?.length) {
    out.push("| argument | |", "|---|---|");
    for (const [a, t] of h.args) out.push(`| \`${a}\` | ${cell(t)} |`);
    out.push("");
  }
  const flags = Object.entries(h.flags);
  if (flags.length) {
    out.push("| option | | default |", "|---|---|---|");
    for (const [name, f] of flags) {
      const label = flagLabel(name, f).trim();
      const help = (f.multiple ? `${f.help} (repeatable)` : f.help) + "";
      out.push(
        `| \`${cell(label)}\` | ${cell(help)} | ${f.byDefault !== undefined ? cell(f.byDefault) : ""} |`,
      );
    }
    out.push("");
  }
  if (h.examples.length) {
    out.push("```sh");
    for (const [cmd, what] of h.examples) out.push(`# ${what.replace(/`/g, "")}`, cmd);
    out.push("```", "");
  }
  return out.join("\n");
}

/** The flag table as node:util parseArgs options (help fields dropped; the type keeps the flags' literal types). */
export function parseOptions<T extends FlagTable>(flags: T): T {
  const out: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = {};
  for (const [name, f] of Object.entries(flags))
    out[name] = {
      type: f.type,
      ...(f.short ? { short: f.short } : {}),
      ...(f.multiple ? { multiple: true } : {}),
    };
  return out as unknown as T;
}

export const REFERENCE_START =
  "<!-- cli-reference: generated from src/cli/help-texts.ts by npm run gen:readme -->";
export const REFERENCE_END = "<!-- cli-reference: end -->";

/** `readme` with the text between the reference markers replaced (an error when the markers are missing). */
export function replaceCliReference(readme: string, reference: string): string {
  const start = readme.indexOf(REFERENCE_START);
  const end = readme.indexOf(REFERENCE_END);
  if (start < 0 || end < start)
    throw new Error(`README: the markers ${REFERENCE_START} … ${REFERENCE_END} are missing`);
  return `${readme.slice(0, start + REFERENCE_START.length)}\n\n${reference}\n${readme.slice(end)}`;
}
