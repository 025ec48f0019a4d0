// Streams in tests: all of a stream's bytes, to compare with what a reference tool makes.

/** Every chunk of `source` (a Readable, or any async iterable of Buffers), concatenated. */
export async function collect(source: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of source) parts.push(c);
  return Buffer.concat(parts);
}
