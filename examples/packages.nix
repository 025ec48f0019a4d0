# An example package set for `nixoci serve` on a machine without nixpkgs: real, runnable programs built with
# nix from Debian's binaries. busybox-static provides a static shell and the usual tools (one package per
# applet, so images can be composed from many packages); bash is Debian's dynamically linked bash, packaged
# with the libraries `ldd` finds and started through the dynamic loader in its own closure, so it runs in an
# image that has nothing but its closure.
#
#   nix-build examples/packages.nix -A hello          # or: nixoci serve --nix-file examples/packages.nix
{ system ? builtins.currentSystem }:
let
  mk =
    name: script:
    builtins.derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [ "-c" "export PATH=/bin:/usr/bin LC_ALL=C; set -eu; ${script}" ];
    };

  busybox = mk "busybox" ''
    mkdir -p $out/bin
    cp /bin/busybox $out/bin/busybox
    chmod 0555 $out/bin/busybox
    for a in sh ash; do ln -s busybox $out/bin/$a; done
  '';

  # One package per busybox applet: `ls`, `grep`, ... each a store path with bin/<applet> -> busybox.
  applet =
    name:
    mk name ''
      mkdir -p $out/bin
      ln -s ${busybox}/bin/busybox $out/bin/${name}
    '';

  applets = [
    "awk" "cat" "cut" "date" "df" "diff" "du" "env" "find" "free" "grep" "gzip" "head" "hostname" "less"
    "ls" "md5sum" "ps" "sed" "sha256sum" "sort" "tail" "tar" "top" "tr" "uniq" "vi" "wc" "wget" "which"
    "xargs" "nc" "ping" "ip" "tree"
  ];

  coreutilsApplets = [
    "basename" "cat" "chmod" "chown" "cp" "cut" "date" "dd" "df" "dirname" "du" "echo" "env" "false" "head"
    "id" "ln" "ls" "mkdir" "mktemp" "mv" "printf" "pwd" "readlink" "rm" "rmdir" "sleep" "sort" "stat" "tail"
    "tee" "test" "touch" "tr" "true" "uname" "uniq" "wc" "whoami" "yes"
  ];

  # Debian's bash with the shared libraries it needs, run through the loader shipped in the same closure.
  bash-unwrapped = mk "bash-unwrapped" ''
    mkdir -p $out/bin $out/lib
    cp /bin/bash $out/bin/bash
    for lib in $(ldd /bin/bash | grep -o '/[^ ]*'); do cp -L "$lib" $out/lib/; done
    chmod -R u+w $out
  '';
  bash = mk "bash" ''
    mkdir -p $out/bin
    loader=$(ls ${bash-unwrapped}/lib/ld-linux* | head -n 1)
    printf '#!${busybox}/bin/sh\nexec %s --library-path ${bash-unwrapped}/lib ${bash-unwrapped}/bin/bash "$@"\n' "$loader" > $out/bin/bash
    chmod 0555 $out/bin/bash
    ln -s bash $out/bin/sh
  '';
in
builtins.listToAttrs (map (name: { inherit name; value = applet name; }) applets)
// {
  inherit busybox bash;
  coreutils = mk "coreutils" ''
    mkdir -p $out/bin
    for a in ${builtins.concatStringsSep " " coreutilsApplets}; do ln -s ${busybox}/bin/busybox $out/bin/$a; done
  '';
  hello = mk "hello" ''
    mkdir -p $out/bin
    printf '#!${busybox}/bin/sh\necho "Hello from a Nix image served by nixoci!"\n' > $out/bin/hello
    chmod 0555 $out/bin/hello
  '';
}
