#!/usr/bin/env node
// Builds the Nix toolchain image for nixoci's BuildKit frontend tests, offline, from Debian packages: this machine's
// nix-bin 2.8 (the default), or with --nix 2.26 Debian 13's nix-bin 2.26 from the trixie root
// scripts/install-nix-toolchains.sh makes ($NIXOCI_NIX_CACHE/2.26, default /var/cache/nixoci/nix/2.26); busybox-static
// from this machine either way:
//   node scripts/nix-toolchain-image.mjs [--nix 2.8|2.26] [--tag NAME:TAG] [--docker-host unix:///path/docker.sock]
//                                        [--output-tar FILE]
// With --docker-host the rootfs is imported into that dockerd (`docker import` with --change for the ENV) as
// NAME:TAG (default nixoci-nix-toolchain:<the --nix version>) and the image id is printed; with --output-tar the
// rootfs tarball is also (or only) written to FILE.
//
// Why it looks like this: the frontend's ExecOps run this image with a persistent cache mount at /nix, run
// nix-build / nix-instantiate / nix-store / `nix path-info --json` on a Nix file from the build context and write
// results to another mount. A mount at /nix hides whatever the image has there, and the cache must start out
// empty, so the image keeps NOTHING under /nix: Nix's files stay at their Debian paths (/usr/bin/nix*,
// /usr/lib/nix/*.so, /usr/libexec/nix) next to every shared library they load (found with `ldd`, copied to the
// path ldd resolves, e.g. /lib/x86_64-linux-gnu/..., with the loader at /lib64/ld-linux-x86-64.so.2; the image has
// plain /bin, /lib, /lib64 directories rather than Debian's merged-/usr symlinks). Nix creates /nix/store and
// /nix/var/nix/{db,gcroots,profiles,...} itself on first use when /nix is writable. For 2.26 the files, ldd and
// the libraries are the trixie root's (ldd runs chrooted into it: its nix needs trixie's libc and libstdc++, which
// this machine's ldd would neither find nor pick).
// Also in the rootfs: busybox-static at /bin/busybox with all its applets linked in /bin (tests' derivations use
// `builder = "/bin/sh"`) and /usr/bin/env; /etc/nix/nix.conf for building as root without build users, sandbox
// or substituters, with nix-command enabled (2.26: and flakes, with no flake registry to download); /etc/passwd and
// /etc/group (root, nobody; no nixbld);
// /root (HOME) and /tmp (1777). ENV: PATH=/usr/bin:/bin HOME=/root USER=root; NIX_REMOTE unset (local store).
import { execFileSync } from "node:child_process";
import { loadedLibraries, loadedLibrariesInRoot } from "./lib-ldd.mjs";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";

const usage =
  "usage: node scripts/nix-toolchain-image.mjs [--nix 2.8|2.26] [--tag NAME:TAG] [--docker-host unix:///path/docker.sock] [--output-tar FILE]";
const fail = (msg) => {
  process.stderr.write(`nix-toolchain-image: ${msg}\n${usage}\n`);
  process.exit(2);
};
const NIX_VERSIONS = ["2.8", "2.26"];
const opts = { nix: "2.8", tag: undefined, dockerHost: undefined, outputTar: undefined };
{
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--nix") opts.nix = value();
    else if (a === "--tag") opts.tag = value();
    else if (a === "--docker-host" || a === "-H") opts.dockerHost = value();
    else if (a === "--output-tar" || a === "-o") opts.outputTar = resolve(value());
    else if (a === "--help" || a === "-h") {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    } else fail(`unknown argument ${a}`);
  }
  if (!opts.dockerHost && !opts.outputTar) fail("give --docker-host and/or --output-tar");
  if (!NIX_VERSIONS.includes(opts.nix)) fail(`--nix ${opts.nix}: expected one of ${NIX_VERSIONS.join(", ")}`);
  opts.tag ??= `nixoci-nix-toolchain:${opts.nix}`;
}

/**
 * Where nix-bin's files come from: this machine (2.8), or the trixie root install-nix-toolchains.sh made (2.26),
 * whose paths are the same Debian paths under `root`.
 */
const source =
  opts.nix === "2.8"
    ? { root: "/", libraries: loadedLibraries }
    : (() => {
        const root = join(process.env.NIXOCI_NIX_CACHE || "/var/cache/nixoci/nix", opts.nix);
        if (!existsSync(join(root, ".installed")))
          fail(
            `no Nix ${opts.nix} root at ${root}: run bash scripts/install-nix-toolchains.sh (or install-test-deps.sh)`,
          );
        return { root, libraries: (elf) => loadedLibrariesInRoot(root, elf) };
      })();
/** `p` (an absolute path as the source's own system sees it) on this machine. */
const at = (p) => join(source.root, p);

/**
 * realpath(p) as the source's system resolves it (symlinks inside a root are read with the root as /; an absolute
 * link such as merged-/usr's never escapes to this machine's files), as a path inside the source's system.
 */
function realpathInSource(p) {
  if (source.root === "/") return realpathSync(p);
  const done = [];
  const todo = p.split("/").filter(Boolean);
  for (let links = 0; todo.length;) {
    const part = todo.shift();
    if (part === ".") continue;
    if (part === "..") {
      done.pop();
      continue;
    }
    const here = "/" + [...done, part].join("/");
    if (!lstatSync(at(here)).isSymbolicLink()) {
      done.push(part);
      continue;
    }
    if (++links > 40) throw new Error(`${p}: too many levels of symbolic links in ${source.root}`);
    const target = readlinkSync(at(here));
    if (isAbsolute(target)) done.length = 0;
    todo.unshift(...target.split("/").filter(Boolean));
  }
  return "/" + done.join("/");
}

const run = (cmd, argv, o = {}) =>
  execFileSync(cmd, argv, { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], ...o });

const NIX_CONF_2_8 = `# nixoci's Nix toolchain image: /nix is a (cache) mount, builds run as root in a container.
build-users-group =
sandbox = false
substituters =
trusted-substituters =
require-sigs = false
experimental-features = nix-command
auto-optimise-store = false
keep-derivations = true
keep-outputs = false
fsync-metadata = false
warn-dirty = false
`;
// 2.26 reads the same settings; flakes are on too (the frontend still passes --extra-experimental-features for
// older toolchains), and the flake registry is empty: resolving one would download it, and builds run offline.
const NIX_CONF =
  opts.nix === "2.8"
    ? NIX_CONF_2_8
    : NIX_CONF_2_8.replace(
        "experimental-features = nix-command",
        "experimental-features = nix-command flakes",
      ) + "flake-registry =\n";

const PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP = "root:x:0:\nnogroup:x:65534:\n";
// Debian's docker.io CLI (20.10, matching the daemon) rather than a newer docker earlier on PATH.
const DOCKER = existsSync("/usr/bin/docker") ? "/usr/bin/docker" : "docker";
const ENV = ["PATH=/usr/bin:/bin", "HOME=/root", "USER=root"];

const work = mkdtempSync(join(tmpdir(), "nixoci-nix-toolchain-"));
const rootfs = join(work, "rootfs");
const started = Date.now();
try {
  const dest = (p) => join(rootfs, p);
  const ensureDir = (p, mode = 0o755) => {
    mkdirSync(dest(p), { recursive: true });
    chmodSync(dest(p), mode);
  };
  const copyFile = (from, to) => {
    mkdirSync(dirname(dest(to)), { recursive: true });
    copyFileSync(realpathSync(from), dest(to));
    chmodSync(dest(to), lstatSync(realpathSync(from)).mode & 0o7777);
  };
  /** Copies the source's file `p` (its Debian path, symlinks followed in the source's system) to `p`. */
  const copyFromSource = (p) => copyFile(at(realpathInSource(p)), p);
  for (const d of ["bin", "usr/bin", "lib", "lib64", "etc/nix", "root", "var", "dev", "proc", "sys"])
    ensureDir(d);
  ensureDir("tmp", 0o1777);
  ensureDir("root", 0o700);

  // 1. nix-bin's files at their Debian paths (symlinks kept; docs, man pages, completions and pkg-config left out).
  const skip = /^\/usr\/share\/(doc|man|bash-completion|fish|zsh|lintian)\/|\/pkgconfig\//;
  const elves = [];
  const listed = run("dpkg-query", ["--admindir", at("/var/lib/dpkg"), "-L", "nix-bin"]);
  for (const p of listed.split("\n")) {
    if (!p.startsWith("/usr/") || skip.test(p)) continue;
    let st;
    try {
      st = lstatSync(at(p));
    } catch {
      continue; // listed but removed
    }
    if (st.isDirectory()) {
      mkdirSync(dest(p), { recursive: true });
    } else if (st.isSymbolicLink()) {
      mkdirSync(dirname(dest(p)), { recursive: true });
      symlinkSync(readlinkSync(at(p)), dest(p));
    } else if (st.isFile()) {
      copyFromSource(p);
      if (readFileSync(at(p)).subarray(0, 4).toString("latin1") === "\x7fELF") elves.push(p);
    }
  }
  if (!elves.includes("/usr/bin/nix")) throw new Error("nix-bin is not installed (no /usr/bin/nix)");

  // 2. every shared library they load, at the path ldd resolves (soname links become copies of the real file),
  // plus the NSS modules Nix dlopens at start-up (without libnss_dns it warns "unable to load nss_dns backend").
  const libs = new Set();
  for (const nss of ["libnss_dns.so.2", "libnss_files.so.2"]) {
    const p = `/lib/x86_64-linux-gnu/${nss}`;
    if (existsSync(at(p))) {
      libs.add(p);
      elves.push(p);
    }
  }
  for (const elf of elves) for (const { path } of source.libraries(elf)) libs.add(path);
  for (const lib of libs) if (!existsSync(dest(lib))) copyFromSource(lib);

  // 3. busybox (static) with its applets in /bin, and /usr/bin/env for `#!/usr/bin/env` scripts.
  copyFile("/bin/busybox", "/bin/busybox");
  chmodSync(dest("/bin/busybox"), 0o755);
  for (const applet of run("/bin/busybox", ["--list"]).split("\n").filter(Boolean)) {
    if (applet === "busybox" || existsSync(dest(`/bin/${applet}`))) continue;
    symlinkSync("busybox", dest(`/bin/${applet}`));
  }
  if (!existsSync(dest("/usr/bin/env"))) symlinkSync("/bin/busybox", dest("/usr/bin/env"));

  // 4. configuration.
  writeFileSync(dest("/etc/nix/nix.conf"), NIX_CONF);
  writeFileSync(dest("/etc/passwd"), PASSWD);
  writeFileSync(dest("/etc/group"), GROUP);
  writeFileSync(dest("/etc/nsswitch.conf"), "passwd: files\ngroup: files\nhosts: files\n");
  writeFileSync(dest("/etc/hosts"), "127.0.0.1 localhost\n::1 localhost\n");
  if (existsSync(dest("/nix"))) throw new Error("the rootfs must not contain /nix");

  // 5. the rootfs tarball (owned by root, sorted, fixed mtimes), then the image.
  const tarFile = opts.outputTar ?? join(work, "rootfs.tar");
  run("tar", [
    "--create",
    "--file",
    tarFile,
    "--directory",
    rootfs,
    "--numeric-owner",
    "--owner=0",
    "--group=0",
    "--sort=name",
    "--mtime=@1",
    "--format=gnu",
    ".",
  ]);
  if (opts.outputTar) process.stderr.write(`rootfs tarball: ${tarFile}\n`);

  if (opts.dockerHost) {
    const changes = [`ENV ${ENV.join(" ")}`, "WORKDIR /", 'CMD ["/bin/sh"]'].flatMap((c) => ["--change", c]);
    const id = run(DOCKER, [
      "-H",
      opts.dockerHost,
      "import",
      ...changes,
      "--message",
      opts.nix === "2.8"
        ? "nixoci Nix toolchain (Debian nix-bin, busybox-static)"
        : `nixoci Nix toolchain (Debian nix-bin ${opts.nix}, busybox-static)`,
      tarFile,
      opts.tag,
    ]).trim();
    process.stdout.write(`${id}\n`);
  }
  process.stderr.write(`done in ${((Date.now() - started) / 1000).toFixed(1)}s\n`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
