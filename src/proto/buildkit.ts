// BuildKit's message types from nixoci's own minimal protos (proto/buildkit), loaded with protobufjs so the
// frontend can encode LLB itself (a vertex's digest is the sha256 of its exact bytes) and speak the gateway API
// over its stdio. Field names are as in the .proto files (keepCase).
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import protobuf from "protobufjs/light.js";
import { distFile } from "../util/package-files.js";
import { protoDir } from "./proto-dir.js";

let root: protobuf.Root | undefined;

/**
 * The messages as `npm run build` wrote them (dist/proto/buildkit.json: protobufjs's JSON of the same .proto files),
 * read with protobufjs's light build: the frontend starts on every build's path, and the full build's parser and
 * the parse itself cost it ~20 ms. Without that file (a checkout not built that way) the .proto files are parsed.
 */
function loaded(): protobuf.Root {
  if (!root) {
    const json = distFile("proto/buildkit.json");
    root = existsSync(json)
      ? protobuf.Root.fromJSON(JSON.parse(readFileSync(json, "utf8")) as protobuf.INamespace)
      : parseProtos();
  }
  return root;
}

/** gateway.proto and control.proto (and what they import) parsed, field names as written (keepCase). */
export function parseProtos(): protobuf.Root {
  const full = createRequire(import.meta.url)("protobufjs") as typeof protobuf;
  const dir = protoDir("buildkit");
  const r = new full.Root();
  r.resolvePath = (_origin, target) => join(dir, target);
  r.loadSync(["gateway.proto", "control.proto"], { keepCase: true });
  return r;
}

export function messageType(name: string): protobuf.Type {
  return loaded().lookupType(name);
}

/**
 * Drops scalar fields holding their type's default (0, false, "", empty bytes, the zero enum) and empty
 * repeated/map fields, recursively, so the bytes are what Go's (gogo) marshallers write for the same message:
 * proto3 never writes defaults. Set sub-messages stay, even empty (Go writes an empty WorkerConstraints).
 */
function stripDefaults(msg: protobuf.Message, type: protobuf.Type): void {
  const m = msg as unknown as Record<string, unknown>;
  for (const f of type.fieldsArray) {
    if (!Object.hasOwn(m, f.name)) continue;
    const v = m[f.name];
    const rt = f.resolvedType;
    if (f.map) {
      const entries = Object.values(v as Record<string, unknown>);
      if (!entries.length) delete m[f.name];
      else if (rt instanceof protobuf.Type) for (const e of entries) stripDefaults(e as protobuf.Message, rt);
    } else if (f.repeated) {
      const arr = v as unknown[];
      if (!arr.length) delete m[f.name];
      else if (rt instanceof protobuf.Type) for (const e of arr) stripDefaults(e as protobuf.Message, rt);
    } else if (rt instanceof protobuf.Type) {
      if (v != null) stripDefaults(v as protobuf.Message, rt);
    } else if (
      v == null ||
      v === false ||
      v === "" ||
      (typeof v === "number" && v === 0) ||
      (typeof v === "object" && "low" in (v as object) && Number(v) === 0) ||
      (v instanceof Uint8Array && v.length === 0)
    ) {
      // A oneof member that is set keeps the oneof's choice even when it is a default (not used here).
      if (!f.partOf) delete m[f.name];
    }
  }
}

/** Every key of `value` (recursively) must be a field of `type`: fromObject would silently drop a typo. */
function checkFields(value: unknown, type: protobuf.Type, where: string): void {
  if (value === null || typeof value !== "object" || Buffer.isBuffer(value)) return;
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    const f = type.fields[k];
    if (!f) throw new Error(`${where}: ${type.name} has no field ${JSON.stringify(k)}`);
    const rt = f.resolvedType;
    if (!(rt instanceof protobuf.Type)) continue;
    const items = f.map ? Object.values(v as object) : f.repeated ? (v as unknown[]) : [v];
    for (const item of items) checkFields(item, rt, `${where}.${k}`);
  }
}

/**
 * Encodes a plain object as `name` (checked against the type first, so a typo is an error, not a silent drop),
 * without default-valued fields (see stripDefaults): LLB bytes then match the Go client's for the same op, so
 * BuildKit shares those vertices (and their cache) with what other frontends solved.
 */
export function encode(name: string, value: Record<string, unknown>): Buffer {
  const t = messageType(name);
  checkFields(value, t, name);
  const msg = t.fromObject(value);
  stripDefaults(msg, t);
  return Buffer.from(t.encode(msg).finish());
}

/** Decodes bytes as `name` into a plain object (int64 as numbers, bytes as Buffers, defaults filled in). */
export function decode<T>(name: string, bytes: Uint8Array): T {
  const t = messageType(name);
  return t.toObject(t.decode(bytes), {
    longs: Number,
    bytes: Buffer,
    defaults: true,
    arrays: true,
    objects: true,
  }) as T;
}
