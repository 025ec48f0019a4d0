// The processes a test process started, from /proc (zombies included). The tool launcher (src/util/tool-launcher.ts:
// forked on first use, kept until this process exits) is infrastructure, not a leftover: toolProcesses() counts
// the tools it started instead.
import { readdirSync, readFileSync } from "node:fs";
import { launcherInfo } from "../../src/util/tool-launcher.js";

/** Processes whose parent is `parent`, as "pid comm state". */
export function childProcesses(parent = process.pid): string[] {
  const out: string[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, "utf8");
    } catch {
      continue; // gone meanwhile
    }
    const close = stat.lastIndexOf(")");
    const comm = stat.slice(stat.indexOf("(") + 1, close);
    const [state, ppid] = stat.slice(close + 2).split(" ");
    if (Number(ppid) === parent) out.push(`${name} ${comm} ${state}`);
  }
  return out;
}

/** This process's children but the tool launcher, and the launcher's children (the tools it started). */
export async function toolProcesses(): Promise<string[]> {
  const launcher = (await launcherInfo())?.pid;
  const own = childProcesses().filter((c) => Number(c.split(" ")[0]) !== launcher);
  return launcher === undefined ? own : [...own, ...childProcesses(launcher)];
}
