// Streams that are handed on, or wait, before anyone reads them.
//
// A stream that fails while it has no 'error' listener throws the error as an uncaught exception: the process
// dies (`nixoci serve` with every request it was answering). Consumers attach their listener when they start
// reading, so a stream created or received before an `await` — a NAR whose verifier finds it short as soon as
// the download ends, a decompressor that rejects an empty file, a file that cannot be opened — can fail in the
// gap, while its consumer still waits for a mkdir or a round trip.
import type { Stream } from "node:stream";

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
