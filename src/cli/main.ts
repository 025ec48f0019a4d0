// Entry point of the nixoci CLI: dispatches to one module per command.
export async function main(argv: string[]): Promise<number> {
  process.stdout.write(`nixoci ${argv.join(" ")}\n`);
  return 0;
}
