// The layering of src/, checked by `npm run lint` (dependency-cruiser): each layer imports only from layers
// listed before it, the servers never from one another, and no module takes part in an import cycle. The order is
// the pipeline the README's Layout section draws: shared helpers, wire vocabularies, Nix formats, stores,
// resolution, image core, outputs, the servers (thin adapters over all of that), and the CLI on top.
/** @type {string[]} bottom first */
const LAYERS = [
  "util", // generic helpers: errors, files, streams, compression, logger, metrics, ops HTTP
  "proto", // .proto loading and the gRPC message types
  "oci", // OCI spec primitives: digests, media types, descriptors, the reference grammar, blob store
  "nix", // Nix formats: NAR, narinfo, signatures, store paths, hashes
  "store", // stores: local store, binary caches, closures, substitution
  "resolve", // installables and package names to store paths
  "image", // image core: layering, layer tars and blobs, image config, annotations, build
  "outputs", // sinks: OCI layout, archives, registry client, containerd, nix: descriptions
  "servers", // registry, snapshotter, CRI image service, BuildKit frontend
  "cli",
];
const SERVERS = ["registry", "snapshotter", "cri", "buildkit"];

const upward = LAYERS.map((layer, i) => ({
  name: `no-upward-from-${layer}`,
  comment: `src/${layer} may import only from layers below it (${LAYERS.slice(0, i).join(", ") || "none"})`,
  severity: "error",
  from: { path: `^src/${layer}/` },
  to: { path: `^src/(${LAYERS.slice(i + 1).join("|") || "$^"})/` },
}));

const siblings = SERVERS.map((server) => ({
  name: `no-server-to-server-from-${server}`,
  comment: `servers are adapters over the core: src/servers/${server} does not import another server`,
  severity: "error",
  from: { path: `^src/servers/${server}/` },
  to: { path: `^src/servers/(?!${server}/)` },
}));

module.exports = {
  forbidden: [
    {
      name: "no-cycles",
      comment: "no module imports itself through others",
      severity: "error",
      from: {},
      to: { circular: true },
    },
    {
      name: "layers-known",
      comment: "every directory of src/ is a layer of LAYERS (add new ones there, in pipeline order)",
      severity: "error",
      from: { path: "^src/", pathNot: `^src/(${LAYERS.join("|")})/` },
      to: {},
    },
    {
      name: "layers-known-imported",
      comment: "imports go to a layer of LAYERS only",
      severity: "error",
      from: { path: "^src/" },
      to: { path: "^src/", pathNot: `^src/(${LAYERS.join("|")})/` },
    },
    {
      name: "layers-known-orphan",
      comment: "a module outside LAYERS that imports nothing is still outside the layering",
      severity: "error",
      from: { orphan: true, path: "^src/", pathNot: `^src/(${LAYERS.join("|")})/` },
      to: {},
    },
    {
      name: "src-not-from-tests",
      comment: "the product never imports tests or benchmarks",
      severity: "error",
      from: { path: "^src/" },
      to: { path: "^(test|bench)/" },
    },
    ...upward,
    ...siblings,
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^dist/" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
  },
};
