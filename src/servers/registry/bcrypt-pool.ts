// bcrypt comparisons for the registry's htpasswd users, run in worker threads so the event loop never waits
// for them: requests without credentials (and with cached ones) are served while password checks run.
//
// A few long-lived workers (started on first use, one fewer than the CPUs, at most 4, at least 1), each doing
// one comparison at a time; comparisons beyond them wait in a queue of bounded length, and one more is refused
// (BcryptBusy) rather than queued: a flood of password guesses costs a bounded amount of CPU and memory. The
// workers are unref'd while idle, so they never keep the process alive.
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { distFile } from "../../util/package-files.js";

/** Thrown by compare() when the queue is full. */
export class BcryptBusy extends Error {
  override name = "BcryptBusy";
}

export interface BcryptPoolOptions {
  /** Worker threads (default: CPUs - 1, between 1 and 4). */
  workers?: number;
  /** Comparisons waiting for a worker, at most (default 256). */
  maxQueue?: number;
}

interface Job {
  password: string;
  hash: string;
  resolve(ok: boolean): void;
  reject(err: Error): void;
}

class Slot {
  private worker?: Worker;
  job?: Job;

  constructor(private readonly onIdle: (slot: Slot) => void) {}

  private start(): Worker {
    const w = new Worker(distFile("src/servers/registry/bcrypt-worker.js"), { execArgv: [] });
    w.on("message", (m: { ok: boolean }) => this.finish((job) => job.resolve(m.ok === true)));
    const fail = (err: Error): void => {
      if (this.worker !== w) return; // an old worker's last event (it was replaced or closed)
      this.worker = undefined;
      this.finish((job) => job.reject(err));
    };
    w.on("error", fail);
    w.on("exit", (code) => fail(new Error(`bcrypt worker exited with code ${code}`)));
    w.unref();
    return w;
  }

  private finish(settle: (job: Job) => void): void {
    const job = this.job;
    if (!job) return;
    this.job = undefined;
    this.worker?.unref();
    settle(job);
    this.onIdle(this);
  }

  run(job: Job): void {
    this.job = job;
    this.worker ??= this.start();
    this.worker.ref();
    this.worker.postMessage({ id: 0, password: job.password, hash: job.hash });
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    this.finish((job) => job.reject(new Error("bcrypt pool closed")));
    if (w) await w.terminate();
  }
}

export class BcryptPool {
  private readonly slots: Slot[];
  private readonly queue: Job[] = [];
  private readonly maxQueue: number;

  constructor(opts: BcryptPoolOptions = {}) {
    const n = opts.workers ?? Math.min(4, Math.max(1, availableParallelism() - 1));
    this.maxQueue = opts.maxQueue ?? 256;
    this.slots = Array.from({ length: Math.max(1, n) }, () => new Slot((s) => this.next(s)));
  }

  /** Comparisons running or waiting. */
  get pending(): number {
    return this.queue.length + this.slots.filter((s) => s.job).length;
  }

  private next(slot: Slot): void {
    const job = this.queue.shift();
    if (job) slot.run(job);
  }

  /** Whether `password` matches the bcrypt `hash` (false for a malformed hash). Rejects with BcryptBusy. */
  compare(password: string, hash: string): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      const job: Job = { password, hash, resolve, reject };
      const idle = this.slots.find((s) => !s.job);
      if (idle) idle.run(job);
      else if (this.queue.length < this.maxQueue) this.queue.push(job);
      else reject(new BcryptBusy("too many password checks waiting"));
    });
  }

  /** Stops the workers (comparisons in flight are rejected). */
  async close(): Promise<void> {
    for (const job of this.queue.splice(0)) job.reject(new Error("bcrypt pool closed"));
    await Promise.all(this.slots.map((s) => s.close()));
  }
}

let shared: BcryptPool | undefined;

/** The process's pool (made on first use). */
export function bcryptCompare(password: string, hash: string): Promise<boolean> {
  shared ??= new BcryptPool();
  return shared.compare(password, hash);
}
