// Whether standard output carries the command's product (an image archive, a NAR) or only a listing. A reader that
// stops early (`nixoci closure ... | head`) ends a listing quietly, as it should; an image or a NAR cut short is a
// failed delivery, which must end with an error and a non-zero status (as `nix-store --dump | head` does), not 0.
let carriesProduct = false;

/** Called by a command before it writes its product to standard output. */
export function stdoutCarriesProduct(): void {
  carriesProduct = true;
}

/** Whether a closed standard output should end the process quietly with status 0. */
export function closedStdoutIsQuiet(): boolean {
  return !carriesProduct;
}
