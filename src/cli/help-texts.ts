// Every command's flags, help and examples (see help-format.ts): `nixoci CMD --help`, the command list of
// `nixoci --help` and the README's CLI reference (scripts/gen-cli-reference.mjs) all render these.
import { markdown, type CommandHelp, type FlagTable } from "./help-format.js";
import { DAEMON_FLAGS, SUBSTITUTER_FLAGS, TRUST_FLAGS } from "./shared-options.js";

const STORE_URL = {
  store: {
    type: "string",
    value: "URL",
    help: "the store to read: a store directory, or a binary cache (file:///DIR, http://…, https://…)",
    byDefault: "/nix/store",
  },
} as const satisfies FlagTable;

/** How commands that read an image (diff, sbom) pick it from an index and reach its registry. */
const IMAGE_READ_FLAGS = {
  platform: {
    type: "string",
    value: "OS/ARCH[/VARIANT]",
    help: "the image a multi-platform index resolves to",
    byDefault: "this machine's",
  },
  creds: {
    type: "string",
    value: "USER:PASS",
    help: "registry credentials for docker:// images",
    byDefault: "~/.docker/config.json",
  },
  insecure: { type: "boolean", help: "plain HTTP to a registry that is not on loopback" },
} as const satisfies FlagTable;

const LOCAL_STORE = {
  store: {
    type: "string",
    value: "DIR",
    help: "the local Nix store directory (a store elsewhere keeps its metadata in DIR/.nixoci)",
    byDefault: "/nix/store",
  },
} as const satisfies FlagTable;

const LAYER_FLAGS = {
  layering: {
    type: "string",
    value: "size|popularity|nixery",
    help: "how store paths are grouped into layers: size (nixpkgs' auto-layering), popularity, nixery",
  },
  "max-layers": {
    type: "string",
    value: "N",
    help: "at most N layers, the customisation layer included (N >= 2)",
    byDefault: "100",
  },
  compression: { type: "string", value: "gzip|zstd|none", help: "layer compression", byDefault: "gzip" },
  "compression-level": {
    type: "string",
    value: "N",
    help: "compression level (gzip 0-9, or 0-3 through ISA-L; zstd 1-22); a level makes --gzip-encoder auto zlib's",
    byDefault: "gzip 6 (ISA-L 1), zstd 3",
  },
  "gzip-encoder": {
    type: "string",
    value: "auto|isal|zlib",
    help: "gzip's encoder: ISA-L's igzip (Debian's isal; 5-10x faster, output ~4% larger than zlib -6) or zlib; auto = igzip for layers of 256 KiB or more when installed and no level is given",
    byDefault: "auto",
  },
  "tar-format": {
    type: "string",
    value: "standard|docker20",
    help: "layer tar headers: standard = permission bits only, no owner names (as containerd, BuildKit and Docker 23+ write layers: the same diff_ids as their builds of the same files); docker20 = file-type bits in the mode and owner names root (dockerd 20.10 and its BuildKit)",
    byDefault: "standard",
  },
} as const satisfies FlagTable;

const OUTPUT_KINDS =
  "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG], docker://HOST/NAME[:TAG], " +
  "nix:[NAME] (an image description in the Nix store), or - (a docker-archive on stdout)";

export const BUILD = {
  name: "build",
  summary: "build a layered OCI image from Nix store paths and write it to outputs",
  usage: [
    "nixoci build [OPTIONS] INSTALLABLE... -o DEST [-o DEST]...",
    "nixoci build [OPTIONS] -f FILE.nix -A ATTR... -o DEST",
    "nixoci build [OPTIONS] --spec FILE -o DEST",
    "nixoci build [OPTIONS] --platform OS/ARCH=INSTALLABLE[,...] --platform OS/ARCH=... -o DEST",
  ],
  description: [
    "Builds a layered OCI image of the installables' closure and writes it to every `DEST`. Layers are planned " +
      "from the closure, built once into the layer cache (a layer is its store paths: a rebuild after a change " +
      "builds only the layers whose paths changed) and reused by every later image. Every destination and the " +
      "layer cache are checked before any work.",
    "Prints the manifest digest on stdout, then the store path of each `nix:` output, one per line; with " +
      "`--json`, a report instead (manifest digest; per layer digest, diff_id, size, store paths and whether it " +
      "was reused, built, uploaded; per output its report; with `--from`, the base's layers and whether each was " +
      "fetched). With `-o -` stdout carries the archive and the " +
      "digest is in the summary line on stderr. With no `-o` it refuses before any work (exit 2), as " +
      "`docker save` refuses a terminal; `--json` alone builds into the layer cache and prints the report.",
    "With `--platform` (or a spec's `platforms:`) given for two or more platforms, it builds one image per " +
      "platform (every other flag applies to each) and an OCI image index listing them; the index digest is " +
      "printed, and `--json` reports it with each platform's report. Only `oci:`, `oci-archive:` and `docker://` " +
      "hold an index: `docker-archive:`, `-` and `nix:` are refused before any work. One `--platform` builds a " +
      "plain image, the same as `--arch`.",
    "With `--sbom FORMAT`, each image manifest gets a document per format (`nixoci sbom`'s, of the closure it was " +
      "built of) as an OCI referrer: an artifact manifest whose `subject` is the image's manifest (each platform's " +
      "for a multi-platform image). `oci:` and `oci-archive:` list it untagged in index.json; `docker://` pushes " +
      "it by digest and, where the registry has no referrers API, lists it under the tag `sha256-<hex>` of the " +
      "subject (the tag-schema fallback). Other outputs cannot carry it: with only those, `--sbom` is refused. " +
      "`--json` lists each output's referrer digests (`referrers`) and the fallback tags it wrote (`referrersTags`).",
  ],
  args: [
    [
      "INSTALLABLE",
      "a store path, a path inside one (/nix/store/…-hello/bin/hello), or a symlink into the store (./result)",
    ],
    ["DEST", OUTPUT_KINDS],
  ],
  flags: {
    output: {
      type: "string",
      short: "o",
      multiple: true,
      value: "DEST",
      help: "where to write the image (see DEST above); `docker://` pushes natively",
      section: "what to build",
    },
    file: {
      type: "string",
      short: "f",
      value: "FILE.nix",
      help: "build attributes of this Nix file with nix-build",
    },
    attr: { type: "string", short: "A", multiple: true, value: "ATTR", help: "an attribute of -f FILE.nix" },
    spec: {
      type: "string",
      value: "FILE",
      help: "the image in JSON or YAML (packages, entrypoint, env, tags, layering, …); flags override it",
    },
    from: {
      type: "string",
      value: "IMAGE",
      help: "a base image to build on (oci:, oci-archive:, docker-archive:, docker://; an index gives each platform's)",
    },
    entrypoint: {
      type: "string",
      value: "CMD",
      help: "the entrypoint: a JSON array, or words split on spaces",
      section: "image configuration",
    },
    cmd: {
      type: "string",
      value: "CMD",
      help: "the default arguments: a JSON array, or words split on spaces",
    },
    env: { type: "string", short: "e", multiple: true, value: "K=V", help: "an environment variable" },
    workdir: { type: "string", value: "DIR", help: "the working directory" },
    user: {
      type: "string",
      value: "U",
      help: "the user: NAME[:GROUP] or UID[:GID] (added to /etc/passwd, with a home /home/NAME it owns)",
    },
    perm: {
      type: "string",
      multiple: true,
      value: "REGEX=MODE[:UID[:GID]]",
      help:
        "give the entries whose absolute path matches REGEX this mode (octal) and owner; later rules win; an " +
        "empty UID keeps the owner (e.g. '^/home/app(/|$)=0700:1000:1000', '^/srv=0770::100' for the group only)",
    },
    uid: { type: "string", value: "N", help: "owner of every file of the store paths", byDefault: "0" },
    gid: { type: "string", value: "N", help: "group of every file of the store paths", byDefault: "0" },
    expose: { type: "string", multiple: true, value: "PORT[/PROTO]", help: "a port the image listens on" },
    label: { type: "string", multiple: true, value: "K=V", help: "an image label" },
    arch: {
      type: "string",
      value: "ARCH",
      help: "the image's architecture (amd64, arm64, …)",
      byDefault: "this machine's",
    },
    os: { type: "string", value: "OS", help: "the image's operating system", byDefault: "linux" },
    platform: {
      type: "string",
      multiple: true,
      value: "OS/ARCH[/VARIANT]=INSTALLABLE[,…]",
      help:
        "a platform of a multi-platform image and its installables (repeat per platform; instead of INSTALLABLE " +
        "arguments, -f/-A, --arch and --os)",
    },
    created: {
      type: "string",
      value: "TIME",
      help: "the creation time (RFC 3339)",
      byDefault: "1970-01-01T00:00:01Z",
    },
    tag: {
      type: "string",
      short: "t",
      multiple: true,
      value: "NAME[:TAG]",
      help: "names the image for outputs that do not (oci: tags, registries, docker archives' RepoTags)",
      byDefault: "the first package's name, latest",
    },
    sbom: {
      type: "string",
      multiple: true,
      value: "FORMAT[,FORMAT…]",
      help:
        "attach the closure's SBOM in each FORMAT (cyclonedx, spdx, provenance) as an OCI referrer of the image " +
        "(of each platform's image) to oci:, oci-archive: and docker:// outputs",
    },
    ...LAYER_FLAGS,
    layering: { ...LAYER_FLAGS.layering, byDefault: "size", section: "layers" },
    compression: {
      ...LAYER_FLAGS.compression,
      value: "gzip|zstd|none|auto",
      help: "layer compression; auto: zstd when every output is a nix: description (containerd reads it), else gzip",
    },
    jobs: {
      type: "string",
      short: "j",
      value: "N",
      help: "layers built at once",
      byDefault: "the number of cores",
    },
    "no-cache": { type: "boolean", help: "build into a temporary directory, not the layer cache" },
    "cache-dir": {
      type: "string",
      value: "DIR",
      help: "the layer cache",
      byDefault: "$XDG_CACHE_HOME/nixoci or ~/.cache/nixoci",
    },
    ...SUBSTITUTER_FLAGS,
    substituter: { ...SUBSTITUTER_FLAGS.substituter, section: "store paths" },
    ...LOCAL_STORE,
    creds: {
      type: "string",
      value: "USER:PASS",
      help: "registry credentials for docker:// outputs and --from",
      byDefault: "~/.docker/config.json",
      section: "registries and reporting",
    },
    insecure: { type: "boolean", help: "plain HTTP to a registry that is not on loopback" },
    json: { type: "boolean", help: "print a JSON report on stdout instead of the digest" },
    quiet: { type: "boolean", short: "q", help: "no progress on stderr" },
  },
  examples: [
    ["nixoci build ./result -o oci:./hello-oci:latest", "the closure of ./result as an OCI layout"],
    [
      "nixoci build --entrypoint /bin/hello $(nix-build '<nixpkgs>' -A hello) -o - | docker load",
      "an image that runs hello, loaded into docker",
    ],
    [
      "nixoci build -f default.nix -A app --tag app:1.0 -o docker://localhost:5000/app:1.0",
      "build an attribute with nix-build and push it to a registry",
    ],
  ],
} as const satisfies CommandHelp;

export const PATH_INFO = {
  name: "path-info",
  summary: "metadata of store paths (local store or binary cache)",
  usage: ["nixoci path-info [OPTIONS] PATH..."],
  description: [
    "Prints the metadata of store paths, as `nix path-info` does: one path per line, or with `--json` Nix's JSON " +
      "shape (path, narHash, narSize, references, deriver, registrationTime, ultimate, signatures, ca; for binary " +
      'caches also url, compression, downloadHash, downloadSize). A path that is not valid is `{"path", ' +
      '"valid": false}` and the exit code 1.',
  ],
  flags: {
    json: { type: "boolean", help: "print JSON (nix path-info --json's shape)" },
    recursive: { type: "boolean", short: "r", help: "the whole closure of the paths" },
    size: { type: "boolean", short: "s", help: "add each path's NAR size" },
    ...STORE_URL,
    ...TRUST_FLAGS,
  },
  examples: [
    ["nixoci path-info -rs ./result", "every path of ./result's closure with its size"],
    [
      "nixoci path-info --json --store https://cache.nixos.org /nix/store/…-hello-2.12.1",
      "a path's narinfo from a binary cache, signatures checked",
    ],
  ],
} as const satisfies CommandHelp;

export const CLOSURE = {
  name: "closure",
  summary: "the closure of store paths, one per line, sorted",
  usage: ["nixoci closure [OPTIONS] PATH..."],
  flags: { ...STORE_URL, ...TRUST_FLAGS },
  examples: [
    ["nixoci closure ./result", "every store path ./result needs"],
    ["nixoci closure --store file:///srv/cache /nix/store/…-hello", "the same from a binary cache"],
  ],
} as const satisfies CommandHelp;

export const SBOM = {
  name: "sbom",
  summary: "an SBOM (CycloneDX, SPDX) or SLSA provenance of store paths' closure or of an image",
  usage: ["nixoci sbom [OPTIONS] PATH...", "nixoci sbom [OPTIONS] IMAGE"],
  description: [
    "One entry per store path of the closure: name and version split as builtins.parseDrvName does, a " +
      "`pkg:nix/NAME@VERSION` purl, the NAR hash (SHA-256), NAR size, deriver and the references as " +
      "dependencies. The roots are applications, the rest libraries. provenance is an in-toto Statement with an " +
      "SLSA Provenance v1 predicate: the roots by NAR hash as subject, every store path (and the binary cache " +
      "read) as resolved dependencies. With the same --created the output is byte for byte the same.",
    "Of an `IMAGE` (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE`, `docker://HOST/NAME[:TAG]`, " +
      "`nix:` — as `nixoci diff` reads them): the closure of the store paths its layers hold (nixoci's " +
      "annotations, else a scan of the layers), with their infos from the store (`--store`); the image (its " +
      "manifest digest) is the subject, its roots the packages it was built from, and its creation time the " +
      "document's unless --created or SOURCE_DATE_EPOCH say otherwise.",
  ],
  flags: {
    format: {
      type: "string",
      value: "cyclonedx|spdx|provenance",
      help: "the document: CycloneDX 1.6 JSON, SPDX 2.3 JSON, or in-toto SLSA provenance",
      byDefault: "cyclonedx",
    },
    output: {
      type: "string",
      short: "o",
      value: "FILE",
      help: "write the document here (atomically)",
      byDefault: "stdout",
    },
    created: {
      type: "string",
      value: "TIME",
      help: "the document time (RFC 3339)",
      byDefault: "SOURCE_DATE_EPOCH if set, else now",
    },
    ...IMAGE_READ_FLAGS,
    ...STORE_URL,
    ...TRUST_FLAGS,
  },
  examples: [
    ["nixoci sbom ./result > sbom.cdx.json", "CycloneDX of everything ./result needs"],
    ["nixoci sbom --format spdx oci:./image:1.0", "SPDX of what an image holds"],
    ["nixoci sbom --format spdx -o sbom.spdx.json ./result", "SPDX into a file"],
    [
      "nixoci sbom --format provenance --store file:///srv/cache /nix/store/…-hello",
      "provenance from a binary cache",
    ],
  ],
} as const satisfies CommandHelp;

export const NAR = {
  name: "nar",
  summary: "dump, restore and list NAR archives",
  usage: ["nixoci nar dump PATH > out.nar", "nixoci nar restore DEST < in.nar", "nixoci nar ls FILE|-"],
  description: [
    "dump writes the NAR of a file tree to stdout (bytes equal `nix-store --dump`; a symlink is dumped as the " +
      "symlink, as there). restore unpacks a NAR from " +
      "stdin into DEST, which must not exist: every NAR rule is enforced and the tree is written under a " +
      "temporary name and renamed, so a bad NAR leaves nothing; SIGTERM, SIGINT or SIGHUP remove the temporary " +
      "tree and exit 128+N, and what a restore killed otherwise left beside DEST (`.DEST.tmp-PID-…`) goes with " +
      "the next restore to DEST once process PID is gone. ls prints Nix's `.ls` listing JSON (with narOffset) of " +
      "a NAR file (- for stdin; .xz, .zst, .bz2, .br and .gz names are decompressed). File names are bytes, " +
      "as in Nix: PATH, DEST, FILE and the names inside may be any bytes, not only UTF-8.",
  ],
  flags: {},
  examples: [
    [
      "nixoci nar dump $(readlink ./result) > hello.nar",
      "the NAR of a store path (./result itself is a symlink)",
    ],
    ["nixoci nar restore ./copy < hello.nar", "unpack it again"],
    ["nixoci nar ls hello.nar.xz", "its listing"],
  ],
} as const satisfies CommandHelp;

export const CACHE_PUSH = {
  name: "cache push",
  summary: "write the closure of store paths into a binary cache that `nix copy --from` reads",
  usage: ["nixoci cache push --to file:///DIR [OPTIONS] PATH..."],
  description: [
    "Writes `nix-cache-info`, `nar/<FileHash>.nar.<ext>` and a `<hash>.narinfo` (signed with `--sign-key`) per " +
      "path of the closure; paths the cache has already are skipped. SIGINT, SIGTERM or SIGHUP remove what was " +
      "being written and exit 128+N.",
  ],
  flags: {
    to: { type: "string", value: "file:///DIR", help: "the binary cache to write (required)" },
    "sign-key": {
      type: "string",
      value: "FILE",
      help: "sign narinfos with this secret key (nix-store --generate-binary-cache-key)",
    },
    compression: { type: "string", value: "xz|zstd|bzip2|br|none", help: "NAR compression", byDefault: "xz" },
    ...STORE_URL,
    jobs: { type: "string", short: "j", value: "N", help: "paths written at once", byDefault: "2" },
    quiet: { type: "boolean", short: "q", help: "no progress on stderr" },
  },
  examples: [
    [
      "nixoci cache push --to file:///srv/cache --sign-key key.sec ./result",
      "a signed cache of ./result's closure",
    ],
    ["nix copy --from file:///srv/cache ./result", "read by Nix"],
  ],
} as const satisfies CommandHelp;

export const CACHE_GC = {
  name: "cache gc",
  summary: "remove layer-cache blobs that no recently built image uses",
  usage: ["nixoci cache gc [--cache-dir DIR] [--keep-images N] [--keep-days N]"],
  description: [
    "Keeps the blobs of the N most recent images and of every image built in the last D days; removes the rest. " +
      "A directory that is not a layer cache (an OCI layout, a registry's --storage, anything without layers/ or " +
      "images/) is refused: its blobs are recorded by no built image.",
  ],
  flags: {
    "cache-dir": {
      type: "string",
      value: "DIR",
      help: "the layer cache",
      byDefault: "$XDG_CACHE_HOME/nixoci or ~/.cache/nixoci",
    },
    "keep-images": {
      type: "string",
      value: "N",
      help: "keep the N most recent images' blobs",
      byDefault: "20",
    },
    "keep-days": {
      type: "string",
      value: "N",
      help: "keep the blobs of images built in the last N days",
      byDefault: "7",
    },
  },
  examples: [["nixoci cache gc --keep-images 5 --keep-days 1", "keep the last five images and today's"]],
} as const satisfies CommandHelp;

/** `nixoci cache --help`: the two subcommands. */
export const CACHE = {
  name: "cache",
  summary: "push store paths into a binary cache; garbage-collect the layer cache",
  usage: [...CACHE_PUSH.usage, ...CACHE_GC.usage],
  description: [
    `push: ${CACHE_PUSH.summary}. gc: ${CACHE_GC.summary}. Run 'nixoci cache push --help' or ` +
      "'nixoci cache gc --help' for their options.",
  ],
  flags: {},
  examples: [...CACHE_PUSH.examples.slice(0, 1), ...CACHE_GC.examples],
} as const satisfies CommandHelp;

export const SUBSTITUTE = {
  name: "substitute",
  summary: "realise store paths from binary caches into a store directory",
  usage: ["nixoci substitute --from URL [--from URL]... [OPTIONS] PATH..."],
  description: [
    "Realises the closure of PATH... (store paths, or `result` symlinks: the path each points to, there or " +
      "not yet) into a store directory from the `--from` stores (binary caches, or local " +
      "store directories such as /nix/store) by priority: local stores first, then nix-cache-info's order. Paths " +
      "already valid are kept; NARs are decompressed and verified while streaming, each path added only after " +
      "its references, atomically. Into /nix/store paths are registered in Nix's database, so nix-store sees " +
      "them valid. Prints the requested paths. SIGINT, SIGTERM or SIGHUP remove the path being restored and " +
      "exit 128+N.",
  ],
  flags: {
    from: { type: "string", multiple: true, value: "URL", help: "a store to substitute from (required)" },
    ...TRUST_FLAGS,
    "store-dir": {
      type: "string",
      value: "DIR",
      help: "the store directory to fill",
      byDefault: "/nix/store",
    },
    jobs: { type: "string", short: "j", value: "N", help: "paths downloaded at once", byDefault: "4" },
    quiet: { type: "boolean", short: "q", help: "no progress on stderr" },
  },
  examples: [
    [
      "nixoci substitute --from https://cache.nixos.org /nix/store/…-hello-2.12.1",
      "hello and its closure into /nix/store, no nix binary needed",
    ],
  ],
} as const satisfies CommandHelp;

export const SERVE = {
  name: "serve",
  summary: "an on-demand registry of Nix package images that is also a Nix binary cache",
  usage: [
    "nixoci serve [--listen ADDR:PORT] [--storage DIR] [--nix-file FILE | --nixpkgs PATH | --flake REF | --index FILE] [OPTIONS]",
  ],
  description: [
    "An OCI registry (pull, push, tags, catalog, delete) whose image names are package names: " +
      "`docker pull HOST/git/htop` builds an image of git and htop from the package source, layered like " +
      "`nixoci build` and cached; a first component `amd64/` or `arm64/` picks the architecture (without one: a multi-platform index when the packages exist for several). It also serves " +
      "the local store as a Nix binary cache (`nix copy --from http://HOST`). Without a package source, names " +
      "are literal store path base names (HOST/<hash>-hello).",
  ],
  flags: {
    listen: {
      type: "string",
      value: "ADDR:PORT",
      help: "the address to listen on (PORT alone: 127.0.0.1)",
      byDefault: "127.0.0.1:5000",
      section: "where",
    },
    storage: {
      type: "string",
      value: "DIR",
      help: "registry storage: blobs, manifests, uploads, built-image records",
      byDefault: "$XDG_STATE_HOME/nixoci/registry or ~/.local/state/nixoci/registry",
    },
    ...LOCAL_STORE,
    "public-host": { type: "string", value: "HOST", help: "the host name clients use, for the page at /" },
    "nix-file": {
      type: "string",
      value: "FILE",
      help: "packages are attributes of this Nix file (an attribute set, or a function of { system })",
      section: "package source (one of)",
    },
    nixpkgs: { type: "string", value: "PATH", help: "packages are nixpkgs attributes of this checkout" },
    flake: { type: "string", value: "REF", help: "packages are this flake's packages.<system>" },
    index: {
      type: "string",
      value: "FILE",
      help: "a JSON index of package store paths, resolved against --substituter caches (no nix binary)",
    },
    ...SUBSTITUTER_FLAGS,
    meta: {
      type: "string",
      multiple: true,
      value: "NAME=PKG,PKG…",
      help: "a name that stands for several packages (added to the built-in shell, or replacing it)",
      byDefault: "shell=bashInteractive,coreutils, or what the set has of bash, busybox",
      section: "images",
    },
    arch: {
      type: "string",
      value: "ARCH",
      help: "the architecture of names without one",
      byDefault: "this machine's",
    },
    ...LAYER_FLAGS,
    layering: { ...LAYER_FLAGS.layering, byDefault: "nixery" },
    "build-timeout": {
      type: "string",
      value: "SECONDS",
      help: "a build taking longer fails with 504",
      byDefault: "600",
      section: "limits",
    },
    "max-builds": { type: "string", value: "N", help: "builds at once", byDefault: "2" },
    "max-queue": { type: "string", value: "N", help: "builds waiting; more get 429", byDefault: "32" },
    "upload-ttl": {
      type: "string",
      value: "SECONDS",
      help: "upload sessions idle this long are removed",
      byDefault: "3600",
    },
    "max-nar-streams": {
      type: "string",
      value: "N",
      help: "NAR bodies produced at once (more wait; beyond 256 waiting, 503)",
      byDefault: "2 per CPU",
    },
    "sign-key": {
      type: "string",
      value: "FILE",
      help: "sign the binary cache's narinfos with this secret key",
      section: "binary cache",
    },
    "nar-cache-mib": {
      type: "string",
      value: "MIB",
      help: "compressed NARs kept under --storage, so each is compressed once (least recently served go first; 0: none)",
      byDefault: "2048",
    },
    "cache-compression": {
      type: "string",
      value: "zstd|xz|none",
      help: "NAR compression",
      byDefault: "zstd",
    },
    "no-binary-cache": { type: "boolean", help: "do not serve the store as a binary cache" },
    auth: {
      type: "string",
      value: "htpasswd:FILE|tokens:FILE",
      help: "credentials (bcrypt htpasswd, bearer tokens, or both joined with ,); pushes need them",
      section: "access and logs",
    },
    "auth-pull": { type: "boolean", help: "every read needs credentials too (only /healthz stays open)" },
    "trusted-proxy": {
      type: "string",
      multiple: true,
      value: "ADDR[/BITS]",
      help: "a reverse proxy whose X-Forwarded-For names the client (failure limit, logs)",
    },
    "log-level": DAEMON_FLAGS["log-level"],
    "log-format": DAEMON_FLAGS["log-format"],
  },
  examples: [
    [
      "nixoci serve --nix-file examples/packages.nix --listen 127.0.0.1:5000",
      "serve the example package set",
    ],
    [
      "skopeo copy --src-tls-verify=false docker://127.0.0.1:5000/shell/hello oci:./hello:latest",
      "an image of bash, coreutils and hello, built on demand",
    ],
    [
      "nix copy --extra-experimental-features nix-command --from http://127.0.0.1:5000 /nix/store/…-hello",
      "the same server as a Nix binary cache",
    ],
  ],
} as const satisfies CommandHelp;

export const SNAPSHOTTER = {
  name: "snapshotter",
  summary:
    "a containerd proxy snapshotter that composes Nix layers from the store instead of downloading them",
  usage: [
    "nixoci snapshotter --address SOCK --root DIR [OPTIONS]",
    "nixoci snapshotter --print-containerd-config [--containerd-version 1.6|1.7|2.x|k3s] [--address SOCK] [--root DIR]",
  ],
  description: [
    "A containerd proxy snapshotter (snapshots v1 over gRPC on a unix socket; containerd's config: " +
      '`[proxy_plugins.nixoci] type = "snapshot"`). Ordinary layers behave as with containerd\'s overlay ' +
      "snapshotter, with durable metadata under --root (SQLite). A layer whose Prepare labels name its store " +
      "paths (`containerd.io/snapshot/nix-store-path.<i>`) is committed straight from --store when its paths are " +
      "valid there, after substituting missing ones from the --substituter caches; Prepare then answers " +
      "ALREADY_EXISTS, so containerd neither downloads nor unpacks it. Since containerd then checks nothing, the " +
      "snapshotter first checks that the layer is those paths: the diff_id of nixoci's tar of them must make the " +
      "chain ID containerd asked for (otherwise an image claiming another image's diff_id would make that " +
      "image's layer hold its paths). That reads the paths once per node (the diff_ids are kept under --root); a " +
      "layer that does not verify (built by another tool, e.g. nix-snapshotter's mountpoint-only layers) is " +
      "unpacked as usual, unless --trust-layer-labels.",
    "A layer with paths still missing is unpacked as an ordinary one. containerd downloads every layer from the " +
      "first one it has to unpack on, store layers the node holds included; so when a layer above it in the " +
      "image's manifest is one the store holds, the snapshotter downloads the layer itself from the registry the " +
      "pull is from (CRI's snapshot annotations `cri.image-ref`, `cri.layer-digest` and `cri.manifest-digest` " +
      "say which: the printed containerd configs turn them on; credentials from Docker's config.json; the blob " +
      "checked against its digest, the tar against the snapshot's chain ID, only directories, files and links " +
      "under the store directory written) and still answers ALREADY_EXISTS. Without those labels (`ctr pull`, " +
      "k3s with annotations off) or when that download fails, containerd unpacks the layer as before.",
    "--nix-layers: `link` holds the paths as hard links to the store's files (what auto picks when the store and " +
      "--root share a filesystem); `metacopy` holds each store file as an overlay metacopy stub and gives " +
      "containers one overlay mount with the store as a data-only lower layer (auto's choice across filesystems, " +
      "e.g. a store on a SAN or NFS share, when the kernel supports it: Linux >= 6.5; otherwise auto downloads); " +
      "`bind` composes each container's root from the overlay plus a read-only bind mount per store path; " +
      "`target` layers are empty: containers get an overlay of the other layers topped by the image's store view " +
      "(--target-mounts view, the default where a probe shows it works: one read-only overlay per image, mounted " +
      "by the snapshotter on a tmpfs (--mountpoints-dir), whose directories redirect into the store, so the " +
      "container sees exactly the image's store paths; containers start in the same time whatever their number) " +
      "or, with --target-mounts binds, by its mountpoints directory plus a read-only bind mount per store path at " +
      "its place in the rootfs (Mount.target), which containerd >= 1.7 mounts itself: no per-file " +
      "work, any filesystem; auto's choice when the node's containerd is 1.7 or later: --containerd-version, else " +
      "what the running containerd's Version API at --containerd-address answers, else `containerd --version` " +
      '(asked on the first nix layer; the debug line "containerd version" says which decided; none answering: ' +
      "a warning, and no target mode). Under auto, with binds, a container above target layers on a containerd " +
      "older than 1.7 (a downgrade) is refused with FAILED_PRECONDITION: remove the image and pull it again; views " +
      "serve any containerd.",
    "GC roots: one per image, a directory of links into the store (to the image's roots its layers name, " +
      "nix-closure-root.<i>, when their closure holds the layer's paths, else to each path), under " +
      "/nix/var/nix/gcroots/nixoci/ for a writable /nix/store (else ROOT/gcroots/), made before its layer is " +
      "committed and removed with the image's last layer. SIGTERM or SIGINT: stop accepting calls, finish running ones, exit 0.",
    "--print-containerd-config prints what containerd's config.toml needs for the snapshotter, in the schema of " +
      "the node's containerd (--containerd-version, else the Version API at --containerd-address, else " +
      "`containerd --version`): the proxy plugin on --address " +
      "(default /run/nixoci/snapshotter.sock) with --root (default /var/lib/nixoci/snapshotter) as the image " +
      "filesystem CRI reports (1.7 and later), CRI pulls unpacking into it and snapshot annotations on. containerd 1.6 and 1.7 read config version 2 " +
      '(`[plugins."io.containerd.grpc.v1.cri".containerd]`), 2.x version 3 (`[plugins."io.containerd.cri.v1.images"]`). ' +
      '`--containerd-version k3s` prints a k3s containerd config template instead: `{{ template "base" . }}` (k3s\'s ' +
      "own config) plus the proxy plugin, for k3s started with --snapshotter nixoci.",
  ],
  flags: {
    address: { type: "string", value: "SOCK", help: "the unix socket to serve on (required)" },
    root: { type: "string", value: "DIR", help: "snapshots and their metadata (required)" },
    ...LOCAL_STORE,
    ...SUBSTITUTER_FLAGS,
    "nix-layers": {
      type: "string",
      value: "auto|link|metacopy|bind|target",
      help: "how nix layers hold their store paths",
      byDefault: "auto",
    },
    "trust-layer-labels": {
      type: "boolean",
      help:
        "commit nix layers without checking that their store paths make their chain ID (only where every image " +
        "the node pulls is trusted: a pulled image could replace another's layer)",
    },
    "target-mounts": {
      type: "string",
      value: "auto|view|binds",
      help: "how containers above target-mode layers get their store paths (auto: view where it works)",
      byDefault: "auto",
    },
    "mountpoints-dir": {
      type: "string",
      value: "DIR",
      help: "target mode's store views and mountpoints directories (derived, remade on need: best on a tmpfs)",
      byDefault: "/dev/shm/nixoci-sn-<id of --root>, else ROOT/mountpoints",
    },
    ...DAEMON_FLAGS,
    "print-containerd-config": {
      type: "boolean",
      help: "print the containerd config snippet a node needs for the snapshotter, and exit",
      section: "node setup",
    },
    "containerd-version": {
      type: "string",
      value: "1.6|1.7|2.x|k3s",
      help: "the node's containerd, for --print-containerd-config (k3s: its template) and auto's target mode (>= 1.7)",
      byDefault: "asked of --containerd-address, else containerd --version",
    },
    "containerd-address": {
      type: "string",
      value: "SOCK",
      help: "the running containerd's socket, asked for its version (k3s: /run/k3s/containerd/containerd.sock)",
      byDefault: "/run/containerd/containerd.sock",
    },
  },
  examples: [
    [
      "nixoci snapshotter --address /run/nixoci/snapshotter.sock --root /var/lib/nixoci/snapshotter",
      'with containerd\'s [proxy_plugins.nixoci] type = "snapshot", address = "/run/nixoci/snapshotter.sock"',
    ],
    [
      "nixoci snapshotter --address /run/nixoci/sn.sock --root /var/lib/nixoci/sn --substituter https://cache.nixos.org",
      "store paths missing on the node come from a binary cache",
    ],
    [
      "nixoci snapshotter --print-containerd-config --address /run/nixoci/snapshotter.sock >> /etc/containerd/config.toml",
      "configure this node's containerd for it (then restart containerd)",
    ],
    [
      "nixoci snapshotter --print-containerd-config --containerd-version k3s > /var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl",
      "the same on a k3s node (containerd 2.x; then restart k3s with --snapshotter nixoci)",
    ],
  ],
} as const satisfies CommandHelp;

export const IMAGE_SERVICE = {
  name: "image-service",
  summary: "a CRI image service: nix:0/nix/store/... images from the store, the rest proxied to containerd",
  usage: ["nixoci image-service --address SOCK --containerd SOCK [OPTIONS]"],
  description: [
    "A Kubernetes CRI image service (runtime.v1.ImageService; kubelet --image-service-endpoint unix://SOCK) in " +
      "front of containerd's CRI plugin. PullImage of `nix:0/nix/store/<hash>-<name>[:tag]` loads that image " +
      "description (`nixoci build -o nix:`) from --store into containerd with no registry; every other " +
      "reference and call goes to containerd's CRI unchanged. Errors: INVALID_ARGUMENT for a malformed " +
      "reference, NOT_FOUND for a path not in the store (after the --substituter caches), FAILED_PRECONDITION " +
      "for a store path that is not a valid description or an image for another platform.",
  ],
  flags: {
    address: { type: "string", value: "SOCK", help: "the unix socket to serve on (required)" },
    containerd: { type: "string", value: "SOCK", help: "containerd's main socket (required)" },
    snapshotter: {
      type: "string",
      value: "NAME",
      help: "the snapshotter images are unpacked into",
      byDefault: "nixoci",
    },
    namespace: { type: "string", value: "NS", help: "containerd's namespace", byDefault: "k8s.io" },
    ...LOCAL_STORE,
    ...SUBSTITUTER_FLAGS,
    ...DAEMON_FLAGS,
  },
  examples: [
    [
      "nixoci image-service --address /run/nixoci/image.sock --containerd /run/containerd/containerd.sock",
      "then kubelet --image-service-endpoint unix:///run/nixoci/image.sock",
    ],
  ],
} as const satisfies CommandHelp;

export const K8S_POD = {
  name: "k8s pod",
  summary: "k8s pod: a Pod manifest whose image is a nix:0 reference (no registry)",
  usage: ["nixoci k8s pod IMAGE [OPTIONS] [-- COMMAND [ARG...]]"],
  description: [
    "Prints a Pod manifest (YAML, or JSON with --json) whose container image is `nix:0/nix/store/…` for the " +
      "image description IMAGE (checked to be one), with imagePullPolicy IfNotPresent, named after the " +
      "description unless --name is given. A node whose kubelet uses `nixoci image-service` runs it from its store.",
  ],
  args: [
    [
      "IMAGE",
      "an image description's store path (or a symlink to it, like ./result) or its nix:0/… reference",
    ],
  ],
  flags: {
    name: { type: "string", value: "NAME", help: "the pod's name", byDefault: "the description's name" },
    namespace: { type: "string", value: "NS", help: "the pod's namespace" },
    container: { type: "string", value: "NAME", help: "the container's name", byDefault: "the pod's name" },
    "image-pull-policy": {
      type: "string",
      value: "IfNotPresent|Always|Never",
      help: "the container's imagePullPolicy",
      byDefault: "IfNotPresent",
    },
    "restart-policy": { type: "string", value: "Always|OnFailure|Never", help: "the pod's restartPolicy" },
    ...LOCAL_STORE,
    json: { type: "boolean", help: "print JSON instead of YAML" },
  },
  examples: [
    [
      "nixoci k8s pod $(nixoci build -q --entrypoint /bin/hello ./result -o nix:hello | tail -1) | kubectl apply -f -",
      "run an image description as a pod",
    ],
  ],
} as const satisfies CommandHelp;

export const FRONTEND = {
  name: "frontend",
  summary: "the BuildKit frontend (run by BuildKit; `# syntax=` its image) and its build steps",
  usage: [
    "nixoci frontend                       (run by BuildKit: the gateway API on stdin/stdout)",
    "nixoci frontend plan --out FILE --from URL... [--layering L] [--max-layers N] [--batches DIR] [--metadata-cache DIR] [--custom DIR [--user U]] PATH...",
    "nixoci frontend plan --out FILE --closure FILE --roots FILE [--layering L] [--max-layers N] [--batches DIR]",
    "nixoci frontend fetch --out DIR --from URL... PATH... | LAYERDIR=PATH,PATH...",
    "nixoci frontend custom --plan FILE --layers DIR --out DIR --meta FILE [--user U]",
    "nixoci frontend copy --from DIR --out DIR PATH... | LAYERDIR=PATH,PATH...",
  ],
  description: [
    "With no step, speaks BuildKit's gateway API on stdin/stdout: put `# syntax=IMAGE` (the frontend image, made " +
      "by scripts/frontend-image.mjs) on the first line of a nixoci.yaml spec or a Nix file and build it with " +
      "docker build. The steps run inside the build: plan computes the closure and the layer plan from the " +
      "caches (and, with --custom, the customisation layer from the caches' NAR listings when every path has " +
      "one); fetch fetches store paths into a layer (or several layers, each under DIR/LAYERDIR); custom writes " +
      "the customisation layer from the fetched layers; copy copies store paths out of a store directory.",
  ],
  flags: {
    out: { type: "string", value: "FILE|DIR", help: "where a step writes" },
    from: {
      type: "string",
      multiple: true,
      value: "URL|DIR",
      help: "binary caches (plan, fetch); a store directory (copy)",
    },
    ...TRUST_FLAGS,
    layering: LAYER_FLAGS.layering,
    "max-layers": LAYER_FLAGS["max-layers"],
    closure: {
      type: "string",
      value: "FILE",
      help: "a closure as `nix path-info --json -r` prints it (plan)",
    },
    roots: {
      type: "string",
      value: "FILE",
      help: "the closure's roots, one per line (plan, with --closure)",
    },
    batches: {
      type: "string",
      value: "DIR",
      help: "the fetch batches earlier builds ran, reused and recorded there (plan)",
    },
    "batch-scope": {
      type: "string",
      value: "S",
      help: "which recorded batches apply: the steps' image and sources (plan)",
    },
    "max-batches": {
      type: "string",
      value: "N",
      help: "new fetch steps at most, for the layers no recorded batch has (plan)",
      byDefault: "the cores, at least 2",
    },
    "metadata-cache": {
      type: "string",
      value: "DIR",
      help:
        "narinfos and NAR listings the caches sent, remembered there for 30 days and read before asking " +
        "(signatures checked on every use) (plan)",
    },
    plan: { type: "string", value: "FILE", help: "the plan a plan step wrote (custom)" },
    layers: { type: "string", value: "DIR", help: "the fetched layers (custom)" },
    meta: { type: "string", value: "FILE", help: "the image configuration (custom)" },
    custom: {
      type: "string",
      value: "DIR",
      help: "also write the customisation layer's tree here, when the caches have every path's NAR listing (plan)",
    },
    user: { type: "string", value: "U", help: "the image's user (custom; plan with --custom)" },
  },
  examples: [
    [
      "DOCKER_BUILDKIT=1 docker build --network host -f nixoci.yaml .",
      "nixoci.yaml's first line: # syntax=IMAGE",
    ],
  ],
} as const satisfies CommandHelp;

/** The README's CLI reference, in order. */
export const DIFF = {
  name: "diff",
  summary: "what changed between two images: store paths, layers, config",
  usage: ["nixoci diff [OPTIONS] IMAGE IMAGE"],
  description: [
    "Compares two images at the level of store paths: paths added and removed, paths changed (paired by package " +
      "name as Nix's parseDrvName splits it: `git-2.44.0` → `git-2.45.1` is `git: 2.44.0 → 2.45.1`; the same " +
      "name and version with another hash is `rebuilt`), layers added and removed (by digest, with their store " +
      "paths), and the config fields a user sets (entrypoint, cmd, env, user, workdir, labels, exposed ports, " +
      "platform). Store paths come from nixoci's layer annotations, else from the layers' tars (their top-level " +
      "`nix/store/<hash>-<name>` entries, whiteouts applied), so any image compares. Every blob read is verified " +
      "against its digest.",
    "Exits 0 whatever the difference (1 with `--exit-code` when the images differ), 1 when an image cannot be " +
      "read, 2 on a usage error. `--json` prints an object described in the README (Comparing images).",
  ],
  args: [
    [
      "IMAGE",
      "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG], docker://HOST/NAME[:TAG|@DIGEST], " +
        "or nix:/nix/store/<hash>-NAME (an image description)",
    ],
  ],
  flags: {
    json: { type: "boolean", help: "print the difference as JSON" },
    "exit-code": { type: "boolean", help: "exit 1 when the images differ (as git diff --exit-code)" },
    ...IMAGE_READ_FLAGS,
  },
  examples: [
    ["nixoci diff oci:./image:1.0 oci:./image:1.1", "what a release changed"],
    [
      "nixoci diff --json docker://localhost:5000/app:1.0 docker://localhost:5000/app:1.1",
      "the same for two tags in a registry, as JSON",
    ],
  ],
} as const satisfies CommandHelp;

export const REFERENCE: readonly CommandHelp[] = [
  BUILD,
  DIFF,
  PATH_INFO,
  CLOSURE,
  SBOM,
  NAR,
  CACHE_PUSH,
  CACHE_GC,
  SUBSTITUTE,
  SERVE,
  SNAPSHOTTER,
  IMAGE_SERVICE,
  K8S_POD,
  FRONTEND,
];

/** What the README holds between its cli-reference markers (scripts/gen-cli-reference.mjs writes it). */
export function cliReferenceMarkdown(): string {
  return REFERENCE.map(markdown).join("\n").trimEnd() + "\n";
}
