// What `nixoci build` says on stderr while it works. In a log (stderr not a terminal): the plan, one line per layer
// in layer order whatever order they finish in, one line per output, and the summary (digest, layers reused/built/
// uploaded, size, time); with `-o -` the digest is there, since stdout carries the archive. On a terminal (a pty
// from script(1)): a status line redrawn in place (layers done/total, bytes, rate, elapsed time, the layer's store
// path), cut to the terminal's width, and the same summary. stdout carries only the results.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { buildFixtures, makeTempDir } from "../support/fixtures.js";
import { runText } from "../support/run.js";
import { nixoci, nixociOk, ROOT } from "../support/cli.js";
import { startRegistry, type Registry } from "../support/daemons.js";
import { formatBytes } from "../../src/cli/progress.js";

const fx = buildFixtures();
// hello's closure (hello, greeting, busybox) and big: four store paths.
const roots = [fx.hello, fx.big];
let registry: Registry;

before(async () => {
  registry = await startRegistry();
});
after(async () => {
  await registry?.stop();
});

interface Report {
  manifestDigest: string;
  layers: { digest: string; size: number; paths: string[]; status: string }[];
}

/** The --json report of a build whose layers are all in `cache` (so building it again changes nothing). */
function report(cache: string, args: string[]): Report {
  return JSON.parse(nixociOk(["build", "--json", "-q", "--cache-dir", cache, ...args]).text) as Report;
}

const closure = runText("nix-store", ["-qR", ...roots]).split("\n");
const closureSize = formatBytes(
  closure.reduce((n, p) => n + Number(runText("nix-store", ["-q", "--size", p])), 0),
);

/** "planned ..." for the closure of `roots`, as the build words it. */
function plannedLine(layers: number): string {
  return `planned ${layers} layers for ${closure.length} store paths (${closureSize})`;
}

/** The per-layer lines a log gets, `status` saying which layers were reused or built. */
function layerLines(r: Report, status: (digest: string) => string): string[] {
  const n = r.layers.length;
  return r.layers.map((l, i) => {
    const what =
      l.paths.length === 1
        ? "1 store path"
        : l.paths.length
          ? `${l.paths.length} store paths`
          : "customisation";
    return `layer ${i + 1}/${n}: ${status(l.digest)} ${l.digest.slice(0, 19)}, ${formatBytes(l.size)}, ${what}`;
  });
}

const ELAPSED = String.raw`(\d+\.\d s|\d+ min \d\d s)`;

/** The summary line's pattern (the time is whatever it took). */
function summaryPattern(r: Report, counts: string): RegExp {
  const size = formatBytes(r.layers.reduce((n, l) => n + l.size, 0)).replace(".", "\\.");
  return new RegExp(
    `^built ${r.manifestDigest}: ${r.layers.length} layers \\(${counts}\\), ${size} in ${ELAPSED}$`,
  );
}

/** stderr's lines, the last one (the summary) apart. */
function split(stderr: string): { lines: string[]; summary: string } {
  assert.ok(stderr.endsWith("\n"), JSON.stringify(stderr));
  const lines = stderr.slice(0, -1).split("\n");
  return { lines: lines.slice(0, -1), summary: lines[lines.length - 1] };
}

test("a log gets the plan, ordered per-layer lines with plurals, the outputs and the summary; stdout the digest", () => {
  const cache = makeTempDir("progress-log");
  const dir = makeTempDir("progress-log-out");
  // Three layers: hello's closure and big share one (3 store paths), the small root hello has its own (1 store
  // path), then the customisation layer.
  const args = ["--max-layers", "3", ...roots];
  const r = nixociOk(["build", "--cache-dir", cache, ...args, "-o", `oci:${dir}/a`]);
  const first = report(cache, args);
  assert.equal(r.text, `${first.manifestDigest}\n`, "stdout: the digest alone");
  const { lines, summary } = split(r.stderr);
  const expected = [plannedLine(3), ...layerLines(first, () => "built"), `wrote oci:${dir}/a`];
  assert.deepEqual(lines, expected);
  assert.match(lines[1], /, 3 store paths$/);
  assert.match(lines[2], /, 1 store path$/);
  assert.match(summary, summaryPattern(first, "0 reused, 3 built"));

  // Another plan over the same cache: layers it shares with the first are reused, the others built; pushed to a
  // registry that has none of them, every layer is uploaded (and the config).
  const ref = `${registry.host}/nixoci/progress:v1`;
  const pushed = nixociOk(["build", "--cache-dir", cache, ...roots, "-o", `docker://${ref}`]);
  const second = report(cache, roots);
  const before = new Set(first.layers.map((l) => l.digest));
  const status = (d: string) => (before.has(d) ? "reused" : "built");
  const reused = second.layers.filter((l) => before.has(l.digest)).length;
  assert.ok(reused > 0 && reused < second.layers.length, "some layers reused, some built");
  const n = second.layers.length;
  const out = split(pushed.stderr);
  assert.deepEqual(out.lines, [
    plannedLine(n),
    ...layerLines(second, status),
    `wrote docker://${ref} (${n + 1} blobs uploaded, 0 already there)`,
  ]);
  assert.match(out.summary, summaryPattern(second, `${reused} reused, ${n - reused} built, ${n} uploaded`));
  assert.equal(pushed.text, `${second.manifestDigest}\n`);

  // Pushed again: nothing is uploaded.
  const again = split(nixociOk(["build", "--cache-dir", cache, ...roots, "-o", `docker://${ref}`]).stderr);
  assert.equal(again.lines.at(-1), `wrote docker://${ref} (0 blobs uploaded, ${n + 1} already there)`);
  assert.match(again.summary, summaryPattern(second, `${n} reused, 0 built, 0 uploaded`));
});

test("-o -: the archive alone on stdout, the digest on stderr (in the summary; alone with -q)", () => {
  const cache = makeTempDir("progress-stdout");
  const r = nixociOk(["build", "--cache-dir", cache, ...roots, "-o", "-"]);
  const built = report(cache, roots);
  // A docker-archive: a tar whose manifest.json lists the layers.
  assert.equal(r.stdout.subarray(257, 262).toString(), "ustar");
  const { lines, summary } = split(r.stderr);
  assert.deepEqual(lines, [plannedLine(built.layers.length), ...layerLines(built, () => "built"), "wrote -"]);
  assert.match(summary, summaryPattern(built, `0 reused, ${built.layers.length} built`));

  const quiet = nixociOk(["build", "-q", "--cache-dir", cache, ...roots, "-o", "-"]);
  assert.equal(quiet.stderr, `${built.manifestDigest}\n`);
  assert.ok(quiet.stdout.equals(r.stdout), "the same archive");
  // --json with -o -: the report goes to stderr, as before; no summary line in a log.
  const json = nixoci(["build", "--json", "--cache-dir", cache, ...roots, "-o", "-"]);
  assert.equal(json.status, 0, json.stderr);
  assert.equal((JSON.parse(json.stderr) as Report).manifestDigest, built.manifestDigest);
});

/**
 * Runs `nixoci ARGS > STDOUT` with stderr on a pseudo-terminal COLUMNS wide (script(1)), and splits what the
 * terminal got into the status lines drawn and the lines that stayed.
 */
function onTerminal(
  columns: number,
  args: string[],
): { statuses: string[]; logged: string[]; stdout: string } {
  const stdoutFile = join(makeTempDir("progress-tty"), "stdout");
  const cmd = [process.execPath, join(ROOT, "bin/nixoci.js"), ...args].map((a) => `'${a}'`).join(" ");
  // The command line is ours (test paths without quotes). A pty nobody sized is 0 columns wide: stty sizes it.
  const r = spawnSync(
    "script",
    ["-qec", `stty cols ${columns} rows 50; ${cmd} > '${stdoutFile}'`, "/dev/null"],
    {
      encoding: "utf8",
    },
  );
  assert.equal(r.status, 0, r.stdout + r.stderr);
  // The terminal turns "\n" into "\r\n". A status line is drawn as "\r\e[K" + text; a line that stays ends with a
  // newline, and the status line is drawn again after it.
  const statuses: string[] = [];
  const logged: string[] = [];
  const rows = r.stdout.split("\r\n");
  rows.forEach((row, i) => {
    const parts = row.split("\r\x1b[K").filter((p) => p !== "");
    if (i < rows.length - 1) logged.push(parts.pop()!);
    statuses.push(...parts);
  });
  return { statuses, logged, stdout: readFileSync(stdoutFile, "utf8") };
}

test("on a terminal: a status line with layers, bytes, rate, elapsed time and a store path; the summary stays", () => {
  const cache = makeTempDir("progress-tty-cache");
  const dir = makeTempDir("progress-tty-out");
  const t = onTerminal(300, ["build", "--cache-dir", cache, ...roots, "-o", `oci:${dir}/a`]);
  const built = report(cache, roots);
  const n = built.layers.length;
  assert.equal(t.stdout, `${built.manifestDigest}\n`, "stdout: the digest alone");
  // No per-layer lines: the status line says it.
  assert.deepEqual(t.logged.slice(0, -1), [plannedLine(n), `wrote oci:${dir}/a`]);
  assert.match(t.logged.at(-1)!, summaryPattern(built, `0 reused, ${n} built`));
  // The first status line comes with the first layer built (the cache is empty): it names its store path.
  const status = new RegExp(
    String.raw`^\[\d+/${n} layers\] \d+(\.\d)? (B|KiB|MiB)/${closureSize.replace(".", "\\.")}, \d+(\.\d)? (B|KiB|MiB)/s, ${ELAPSED} \| layer \d+( \(\+\d+ building\))? \d+(\.\d)? (B|KiB|MiB)/\d+(\.\d)? (B|KiB|MiB): /nix/store/[0-9a-z]{32}-`,
  );
  assert.match(t.statuses[0], status, t.statuses.join("\n"));

  // A narrow terminal: every status line fits (the last column left free), cut with "…".
  const narrow = onTerminal(40, ["build", "--cache-dir", cache, ...roots, "-o", "-"]);
  assert.ok(narrow.statuses.length > 0);
  for (const s of narrow.statuses) assert.ok(s.length <= 39, `${s.length} columns: ${s}`);
  assert.ok(narrow.statuses.some((s) => s.endsWith("…")));
  // -o - with stdout redirected: the digest is in the summary on the terminal.
  assert.match(narrow.logged.at(-1)!, summaryPattern(built, `${n} reused, 0 built`));
});
