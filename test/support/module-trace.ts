// Loaded into a nixoci process with `node --import` (through NODE_OPTIONS): records the URL of every module the
// process loads, a line each, in the file NIXOCI_TEST_MODULE_TRACE names. It registers itself as the module
// hooks, which Node runs in a thread of their own (where it does not register again).
import { appendFileSync } from "node:fs";
import { register } from "node:module";
import { isMainThread } from "node:worker_threads";

if (isMainThread) register(import.meta.url);

type NextLoad = (url: string, context: unknown) => Promise<unknown>;

export async function load(url: string, context: unknown, next: NextLoad): Promise<unknown> {
  const file = process.env.NIXOCI_TEST_MODULE_TRACE;
  if (file) appendFileSync(file, `${url}\n`);
  return next(url, context);
}
