// "Did you mean ...?" for a word that is not one of the known ones: an unknown flag (the CLI), an unknown package
// name (serve's pulls and its --meta check).

/** Edit distance counting a swap of neighbours as one edit (the commonest typo). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.length][b.length];
}

/** The known word closest to `word` when it is close enough to be a typo (or a prefix of exactly one). */
export function didYouMean(word: string, known: readonly string[]): string | undefined {
  const prefixed = known.filter((k) => k.startsWith(word));
  if (word.length >= 3 && prefixed.length === 1) return prefixed[0];
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    // The distance is at least the difference in length: a package set has tens of thousands of names.
    if (Math.abs(k.length - word.length) >= bestDistance) continue;
    const d = distance(word, k);
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return best !== undefined && bestDistance <= Math.max(1, Math.floor(best.length / 3)) ? best : undefined;
}
