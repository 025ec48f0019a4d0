// Package name and version of a store path name, split as Nix's builtins.parseDrvName splits them: the version
// starts after the first '-' that is followed by anything but an ASCII letter ("git-2.44.0" → git, 2.44.0;
// "python3.11-requests-2.31" → python3.11-requests, 2.31; "hello" → hello, ""). Checked against nix 2.8, whose
// rule is "not a letter" (so "foo-.1" gives version ".1"), which its manual words as "followed by a digit".

export interface DrvName {
  name: string;
  version: string;
}

export function parseDrvName(s: string): DrvName {
  for (let i = 0; i + 1 < s.length; i++) {
    if (s[i] === "-" && !/[A-Za-z]/.test(s[i + 1])) return { name: s.slice(0, i), version: s.slice(i + 1) };
  }
  return { name: s, version: "" };
}
