// The listing resources of the distribution API: the catalog (/v2/_catalog) and a repository's tags
// (/v2/<name>/tags/list), both paged with `n` and `last` in the order of compareTags, with a Link to the next page.
// A repository's tags are its pushed ones and those that pull it from the manifest source (nixoci's on-demand
// images: `latest` and revisions), so a name that pulls lists the tags it pulls by.
import type { ServerResponse } from "node:http";
import { compareTags } from "../../oci/reference.js";
import { registryError } from "./errors.js";
import { JSON_TYPE, sendBytes } from "./http-io.js";
import type { ManifestSource } from "./manifest-source.js";
import type { HandlerContext } from "./routes.js";
import type { RegistryStorage } from "./storage.js";

/**
 * Pagination of tags/list and _catalog: `n` (limit) and `last` (exclusive start, in the order of compareTags,
 * which `items` are sorted by; `last` need not be in the list).
 */
export function paginate(
  items: string[],
  query: URLSearchParams,
  linkBase: string,
): { page: string[]; link?: string } {
  const nRaw = query.get("n");
  const last = query.get("last");
  let list = last !== null ? items.filter((t) => compareTags(t, last) > 0) : items;
  if (nRaw === null) return { page: list };
  if (!/^\d{1,9}$/.test(nRaw)) throw registryError("PAGINATION_NUMBER_INVALID", { detail: { n: nRaw } });
  const n = Number(nRaw);
  if (list.length <= n) return { page: list };
  list = list.slice(0, n);
  if (n === 0) return { page: [] };
  const next = `${linkBase}?n=${n}&last=${encodeURIComponent(list[list.length - 1])}`;
  return { page: list, link: `<${next}>; rel="next"` };
}

export class CatalogHandlers {
  constructor(
    readonly storage: RegistryStorage,
    readonly source?: ManifestSource,
  ) {}

  async catalog(res: ServerResponse, ctx: HandlerContext): Promise<void> {
    const { page, link } = paginate(await this.storage.listRepositories(), ctx.query, "/v2/_catalog");
    sendBytes(
      res,
      200,
      JSON_TYPE,
      Buffer.from(JSON.stringify({ repositories: page })),
      link ? { Link: link } : {},
    );
  }

  async tags(res: ServerResponse, name: string, ctx: HandlerContext): Promise<void> {
    const served = await this.servedTags(name, res);
    if (!served && !(await this.storage.hasRepository(name)))
      throw registryError("NAME_UNKNOWN", { detail: { name } });
    const tags = [...new Set([...(await this.storage.listTags(name)), ...(served ?? [])])].sort(compareTags);
    const { page, link } = paginate(tags, ctx.query, `/v2/${name}/tags/list`);
    sendBytes(
      res,
      200,
      JSON_TYPE,
      Buffer.from(JSON.stringify({ name, tags: page })),
      link ? { Link: link } : {},
    );
  }

  /** The source's tags for `name` (undefined when it serves no such name); its work stops if the client goes. */
  private async servedTags(name: string, res: ServerResponse): Promise<string[] | undefined> {
    if (!this.source?.tags) return undefined;
    const abort = new AbortController();
    const onClose = (): void => {
      if (!res.writableFinished) abort.abort();
    };
    res.once("close", onClose);
    try {
      return await this.source.tags(name, { signal: abort.signal });
    } finally {
      res.off("close", onClose);
    }
  }
}
