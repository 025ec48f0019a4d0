// Untrusted JSON documents (manifests, configs, indexes read back from layouts, registries and the store).

/** Manifests, indexes, configs and manifest.json are JSON of at most this size. */
export const MAX_JSON_BYTES = 4 << 20;

/** `bytes` parsed as a JSON object (not an array, not a scalar); otherwise an Error naming it as `what`. */
export function parseJsonObject(bytes: Buffer, what: string): Record<string, unknown> {
  try {
    const v = JSON.parse(bytes.toString("utf8")) as unknown;
    if (typeof v === "object" && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // below
  }
  throw new Error(`${what} is not a JSON object`);
}
