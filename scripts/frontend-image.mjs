#!/usr/bin/env node
// Builds nixoci's BuildKit frontend image with nixoci itself, from a Nix closure holding Node.js and nixoci:
//   node scripts/frontend-image.mjs [--tag NAME:TAG] -o DEST...    (DEST as for `nixoci build -o`)
// On these machines the closure is made of this machine's binaries packaged as store paths (`nix-store --add`,
// so no nix build runs): the node executable, the xz/zstd/bzip2 programs, the shared libraries they load (with the dynamic loader; the
// image's symlink farm puts them at /lib64 and /lib/x86_64-linux-gnu, where the unmodified executable looks for
// them), and nixoci (bin/, dist/ (the bundle, its code cache, the compiled modules and the protos as JSON), proto/, package.json and
// the production node_modules). The image's
// entrypoint runs `nixoci frontend`; its labels tell BuildKit to give it no network (it needs none: its steps
// run as ExecOps). Its top layer repeats the customisation below it, and a label names the layers under it: the
// steps' own image (see step 4). Prints the four store paths, then what `nixoci build` prints. Run `npm run
// build` first.
// A nixpkgs user builds the same closure from pkgs.nodejs and a nixoci package instead (see the README).
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, cpSync, mkdirSync, mkdtempSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { loadedLibraries } from "./lib-ldd.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const run = (cmd, argv, opts = {}) => execFileSync(cmd, argv, { encoding: "utf8", ...opts });

const work = mkdtempSync(join(tmpdir(), "nixoci-frontend-image-"));
try {
  // 1. node, as a store path of its own.
  const node = realpathSync(process.execPath);
  const nodeDir = join(work, "nodejs");
  mkdirSync(join(nodeDir, "bin"), { recursive: true });
  copyFileSync(node, join(nodeDir, "bin", "node"));
  chmodSync(join(nodeDir, "bin", "node"), 0o555);

  // The compressors nixoci streams binary-cache NARs through (xz, zstd, bzip2), as a store path of their own.
  const toolsDir = join(work, "compression-tools");
  mkdirSync(join(toolsDir, "bin"), { recursive: true });
  const tools = ["xz", "zstd", "bzip2"].map((t) => realpathSync(run("which", [t]).trim()));
  for (const t of tools) {
    copyFileSync(t, join(toolsDir, "bin", basename(t)));
    chmodSync(join(toolsDir, "bin", basename(t)), 0o555);
  }

  // 2. the libraries they load, where the executables' loader and search path expect them.
  const libsDir = join(work, "node-runtime-libs");
  for (const { soname, path } of [node, ...tools].flatMap(loadedLibraries)) {
    const real = realpathSync(path);
    // The loader at its absolute name (/lib64/ld-linux-x86-64.so.2), libraries under lib/<triplet>/.
    const dest = soname
      ? join(libsDir, "lib", basename(dirname(path)), soname)
      : join(libsDir, path.slice(1));
    mkdirSync(dirname(dest), { recursive: true });
    copyFileSync(real, dest);
    chmodSync(dest, 0o555);
  }

  // 3. nixoci with its production dependencies.
  const pkgDir = join(work, "nixoci");
  for (const p of [
    "bin",
    "dist/src",
    "dist/nixoci.cjs",
    "dist/nixoci.cjs.cache",
    "dist/proto",
    "proto",
    "package.json",
  ])
    cpSync(join(root, p), join(pkgDir, p), { recursive: true });
  const prod = run("npm", ["ls", "--omit=dev", "--parseable", "--all"], { cwd: root })
    .trim()
    .split("\n")
    .filter((p) => p !== root);
  for (const p of prod) cpSync(p, join(pkgDir, relative(root, p)), { recursive: true, dereference: false });

  const add = (dir) => run("nix-store", ["--add", dir]).trim();
  const libs = add(libsDir);
  const nodePath = add(nodeDir);
  const toolsPath = add(toolsDir);
  const nixoci = add(pkgDir);
  process.stdout.write(`${libs}\n${nodePath}\n${toolsPath}\n${nixoci}\n`);

  // 4. the image, built by nixoci, twice: first the steps' image (what the frontend's ExecOps run in), then the
  // frontend's image on top of it, adding one layer that repeats the customisation below and a label saying how
  // many layers the steps' image has. The frontend runs its steps on those lower layers alone (a layer limit),
  // which BuildKit sees as another image than the one it runs the frontend from: with the same image, BuildKit
  // before v0.32 hands the steps no cache keys to import a registry cache with (see stepImage in frontend.ts).
  const packages = [libs, nodePath, toolsPath, nixoci];
  const config = [
    "--entrypoint",
    JSON.stringify([`${nodePath}/bin/node`, `${nixoci}/bin/nixoci.js`, "frontend"]),
    "--label",
    "moby.buildkit.frontend.network.none=true",
    // It takes the build context as a frontend input when its caller offers one (newer Dockerfile frontends).
    "--label",
    "moby.buildkit.frontend.caps=moby.buildkit.frontend.inputs",
    "--label",
    "org.opencontainers.image.title=nixoci BuildKit frontend",
  ];
  const nixociBuild = (argv) =>
    run(process.execPath, [join(root, "bin/nixoci.js"), "build", "-q", ...argv], {
      stdio: ["ignore", "pipe", "inherit"],
    });
  const steps = join(work, "steps-image");
  const stepLayers = JSON.parse(nixociBuild([...packages, ...config, "--json", "-o", `oci:${steps}`])).layers
    .length;
  const out = nixociBuild([
    ...packages,
    "--from",
    `oci:${steps}`,
    ...config,
    "--label",
    `org.nixoci.frontend.step-layers=${stepLayers}`,
    ...args,
  ]);
  process.stdout.write(out);
} finally {
  rmSync(work, { recursive: true, force: true });
}
