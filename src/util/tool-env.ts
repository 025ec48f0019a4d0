// The environment filter programs (xz, zstd, bzip2, igzip) run with: the C locale (stable messages), and none of
// the variables through which those tools take options, so their output depends only on their arguments.
const ENV_OPTIONS = ["XZ_OPT", "XZ_DEFAULTS", "ZSTD_CLEVEL", "ZSTD_NBTHREADS", "BZIP2", "BZIP"];

export function toolEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: "C" };
  for (const k of ENV_OPTIONS) delete env[k];
  return env;
}

/** The tool launcher's protocol (tool-launcher.ts): the byte acknowledging a request. */
export const LAUNCHER_ACK = 0x06;
