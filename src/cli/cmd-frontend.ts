// nixoci frontend: the BuildKit gateway frontend (no arguments: BuildKit runs it with the gateway API on
// stdin/stdout, see buildkit/frontend.ts), and the steps it runs inside BuildKit's ExecOps:
//   nixoci frontend plan --out FILE [--layering L] [--max-layers N] [--batches DIR --batch-scope S] [--max-batches N]
//                        [--metadata-cache DIR]
//                        (--from URL... [--trusted-public-key K]... [--custom DIR [--user U]] PATH...
//                         | --closure FILE --roots FILE)
//   nixoci frontend fetch --out DIR --from URL... [--trusted-public-key K]... PATH... | DIR=PATH,PATH...
//   nixoci frontend custom --plan FILE --layers DIR --out DIR --meta FILE [--user U]
import { mkdir, readFile, writeFile } from "node:fs/promises";
import type { Plan } from "../servers/buildkit/steps.js";
import { DEFAULT_STORE_DIR } from "../nix/store-path.js";
import { NixociError } from "../util/errors.js";
import { readJsonFile, writeFileAtomic } from "../util/fs.js";
import type { LayeringStrategy } from "../image/types.js";
import { helpHint, intOption, parse, printHelp, UsageError } from "./args.js";
import { FRONTEND } from "./help-texts.js";

const LAYERINGS = ["size", "popularity", "nixery"];

async function gatewayMode(): Promise<number> {
  // Loaded here, not above: the steps (one process each, many per build) need neither gRPC nor the LLB code.
  const { buildWithGateway, frontendOpts, stdioStream } = await import("../servers/buildkit/frontend.js");
  const { Gateway } = await import("../servers/buildkit/gateway.js");
  const { buildErrorLine } = await import("../servers/buildkit/step-errors.js");
  const log = (msg: string): void => void process.stderr.write(`${msg}\n`);
  const gateway = new Gateway(stdioStream(), log);
  try {
    await buildWithGateway({
      opts: frontendOpts(process.env),
      sessionId: process.env.BUILDKIT_SESSION_ID || undefined,
      gateway,
      log,
    });
  } catch (err) {
    const message = (err as Error).message ?? String(err);
    log(`nixoci frontend: ${message}`);
    // The error goes back through the gateway, so the build fails with it; the process still exits 0.
    await gateway
      .return({ error: buildErrorLine(message) })
      .catch((e: Error) => log(`nixoci frontend: Return: ${e.message}`));
  }
  // Exit without closing the connection first: BuildKit treats the gateway connection closing while the
  // frontend process still runs as a crash ("frontend grpc server closed unexpectedly"), overriding Return.
  process.exit(0);
}

export async function frontendCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined) return gatewayMode();
  if (sub === "--help" || sub === "-h") return printHelp(FRONTEND);
  const { values, positionals } = parse(rest, FRONTEND);
  const need = (v: string | undefined, flag: string): string => {
    if (!v) throw new UsageError(`--${flag} is required; ${helpHint(FRONTEND)}`);
    return v;
  };
  // Loaded here, not above: the gateway mode (on every build's path, a no-change build's too) needs none of it.
  const {
    closureFromNixJson,
    copyStep,
    customStep,
    fetchStep,
    parseStepLayers,
    openCaches,
    planOfClosure,
    planStep,
  } = await import("../servers/buildkit/steps.js");
  const { defaultFetchBatches } = await import("../servers/buildkit/fetch-batches.js");
  const { trustOptions } = await import("./stores.js");
  const trust = () => trustOptions(values["trusted-public-key"], values["no-check-sigs"]);
  switch (sub) {
    case "plan": {
      const started = performance.now();
      const layering = values.layering ?? "size";
      if (!LAYERINGS.includes(layering)) throw new UsageError(`--layering: expected ${LAYERINGS.join(", ")}`);
      const maxLayers = intOption(values["max-layers"], "max-layers", 100, 2);
      const batching = {
        ledger: values.batches,
        scope: values["batch-scope"] ?? "",
        maxNew: intOption(values["max-batches"], "max-batches", defaultFetchBatches(), 1),
      };
      const out = need(values.out, "out");
      let plan: Plan;
      let metadata: string | undefined;
      if (values.closure) {
        // A Nix file's closure, as nix path-info --json -r printed it, and its roots.
        const json = await readJsonFile(values.closure);
        if (json === undefined) throw new NixociError(values.closure, "no such file");
        const closure = closureFromNixJson(json, DEFAULT_STORE_DIR);
        const roots = (await readFile(need(values.roots, "roots"), "utf8")).split("\n").filter(Boolean);
        plan = await planOfClosure(
          roots,
          closure,
          layering as LayeringStrategy,
          maxLayers,
          DEFAULT_STORE_DIR,
          batching,
        );
      } else {
        const metadataDir = values["metadata-cache"];
        if (metadataDir) await mkdir(metadataDir, { recursive: true });
        const caches = await openCaches(values.from ?? [], trust(), DEFAULT_STORE_DIR, metadataDir);
        try {
          plan = await planStep({
            roots: positionals,
            caches,
            layering: layering as LayeringStrategy,
            maxLayers,
            batching,
            ...(values.custom ? { custom: { out: values.custom, user: values.user } } : {}),
          });
          await caches.flushMetadata((msg) => void process.stderr.write(`warning: ${msg}\n`));
          metadata = caches.metadataStats();
        } finally {
          caches.close();
        }
      }
      await writeFileAtomic(out, JSON.stringify(plan));
      for (const w of plan.custom?.warnings ?? []) process.stderr.write(`warning: ${w}\n`);
      // What the step's time went to (starting up against planning), and whether it made the customisation layer.
      process.stderr.write(
        `planned ${plan.layers.length} store layers in ${plan.batches.length} fetch steps` +
          (values.custom
            ? plan.custom
              ? ", the customisation layer from NAR listings"
              : ", no NAR listings"
            : "") +
          (metadata ? ` (narinfos and listings: ${metadata})` : "") +
          ` in ${((performance.now() - started) / 1000).toFixed(2)} s (started after ${(started / 1000).toFixed(2)} s)\n`,
      );
      return 0;
    }
    case "fetch": {
      const started = performance.now();
      const layers = parseStepLayers(positionals);
      const caches = await openCaches(values.from ?? [], trust(), DEFAULT_STORE_DIR);
      try {
        await fetchStep(layers, caches, need(values.out, "out"));
      } finally {
        caches.close();
      }
      // What the step's time went to: starting up (node, modules) against fetching.
      process.stderr.write(
        `fetched ${layers.length} layers, ${layers.reduce((n, l) => n + l.paths.length, 0)} paths in ` +
          `${((performance.now() - started) / 1000).toFixed(2)} s (started after ${(started / 1000).toFixed(2)} s)\n`,
      );
      return 0;
    }
    case "copy": {
      await copyStep(parseStepLayers(positionals), need(values.from?.[0], "from"), need(values.out, "out"));
      return 0;
    }
    case "custom": {
      const plan = JSON.parse(await readFile(need(values.plan, "plan"), "utf8")) as Plan;
      const r = await customStep({
        plan,
        layersDir: need(values.layers, "layers"),
        out: need(values.out, "out"),
        user: values.user,
      });
      await writeFile(need(values.meta, "meta"), JSON.stringify(r));
      for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
      return 0;
    }
    default:
      throw new UsageError(`unknown frontend step ${JSON.stringify(sub)}; ${helpHint(FRONTEND)}`);
  }
}
