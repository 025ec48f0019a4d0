// Same-size buffers taken and given back, so that a stream's chunks reuse the same memory. A fresh 1 MiB buffer
// is fresh pages for the kernel to fault in (256 faults; several microseconds each on a virtual machine): a cold
// build that allocated a new chunk for every megabyte of its tars spent more time faulting than hashing. With a
// pool a build touches a few megabytes of chunks, whatever the size of its layers.
//
// Only the pool's own buffers come back (a chunk is a view of one: its ArrayBuffer is the pool's); a buffer given
// twice is taken once. Whoever gives a chunk back promises that nothing reads or writes it afterwards.

export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly isFree = new WeakSet<ArrayBufferLike>();
  private readonly own = new WeakSet<ArrayBufferLike>();

  /**
   * @param size  bytes of every buffer
   * @param keep  buffers kept for reuse at most (more given back are left to the garbage collector)
   */
  constructor(
    readonly size: number,
    private readonly keep = 16,
  ) {}

  /** A buffer of `size` bytes (contents undefined). */
  take(): Buffer {
    const buf = this.free.pop();
    if (buf) {
      this.isFree.delete(buf.buffer);
      return buf;
    }
    // Slow: its own ArrayBuffer, never a slice of Node's shared pool (which would be given back with others).
    const made = Buffer.allocUnsafeSlow(this.size);
    this.own.add(made.buffer);
    return made;
  }

  /** Gives back the buffer a chunk is a view of; chunks of other buffers are ignored. */
  give(chunk: Uint8Array): void {
    const ab = chunk.buffer;
    if (!this.own.has(ab) || this.isFree.has(ab) || this.free.length >= this.keep) return;
    this.isFree.add(ab);
    this.free.push(Buffer.from(ab, 0, this.size));
  }
}
