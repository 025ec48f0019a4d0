// Streams that are handed on, or wait, before anyone reads them.
//
// A stream that fails while it has no 'error' listener throws the error as an uncaught exception: the process
// dies (`nixoci serve` with every request it was answering). Consumers attach their listener when they start
// reading, so a stream created or received before an `await` — a NAR whose verifier finds it short as soon as
// the download ends, a decompressor that rejects an empty file, a file that cannot be opened — can fail in the
// gap, while its consumer still waits for a mkdir or a round trip.
import { finished, PassThrough, type Readable, type Stream } from "node:stream";

const ignore = (): void => undefined;

/**
 * Gives `stream` an 'error' listener at once, so an error before its consumer attaches one is not an uncaught
 * exception. Nothing is lost: the stream is destroyed and keeps the error (`errored`), and async iteration,
 * pipeline() and finished() report it as soon as the consumer starts (a bare `.pipe()` does not: consume such
 * streams with those). Whoever gives up on the stream without reading it must destroy it.
 */
export function holdErrors<T extends Stream>(stream: T): T {
  stream.on("error", ignore);
  return stream;
}

/**
 * The body of `req` as a stream whose failure leaves `req` alone. A pipeline that fails while it writes a request
 * body somewhere (a full disk) destroys every stream in it, and destroying the request destroys its socket: the
 * client then sees a reset instead of the server's error answer. Here the request is only unpiped, and the rest
 * of its body read and dropped, so the connection stays able to carry that answer (whoever answers must bound a
 * body that stops coming). The request's own errors (the client gone) still reach the returned stream.
 */
export function detachedBody(req: Readable): Readable {
  const body = new PassThrough();
  req.on("error", (err) => body.destroy(err));
  req.pipe(body);
  finished(body, () => {
    if (body.readableEnded) return;
    req.unpipe(body);
    req.resume();
  });
  req.once("close", () => {
    if (!req.readableEnded) body.destroy(new Error("the client closed the connection before the body ended"));
  });
  return holdErrors(body);
}

/**
 * All of a stream that must be small (a manifest, a config, an error body), refusing it past `max` bytes so a
 * peer cannot make the process hold an arbitrary amount. The stream is destroyed when refused.
 */
export async function collectBounded(stream: Readable, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of stream) {
    const chunk = typeof c === "string" ? Buffer.from(c) : (c as Buffer);
    size += chunk.length;
    if (size > max) {
      stream.destroy();
      throw new Error(`more than ${max} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
