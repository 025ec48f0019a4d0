// Shared storage for a Nix store that several "nodes" of one test mount read-only, as a cluster's nodes mount a
// store an admin maintains:
// - a block device: an ext4 image of a chroot store, attached by each node through a loop device of its own
//   (`losetup --read-only`, then `mount -o ro`): what a SAN LUN is to the hosts that attach it. ext4 is not a
//   cluster filesystem, so the admin writes to the image only while no node has it mounted.
// - a network filesystem: sshfs (FUSE) over loopback to a private sshd (own config, host key and authorized key in
//   a temp dir, `sshd -D -e`, stopped by pid), exporting a chroot store on local disk that the admin writes to in
//   place.
// Every mount is undone by its own unmount (plain umount: a busy mount fails loudly); cleanupMounts is the after()
// hook's fallback for a failed test (lazy unmounts, loop devices detached).
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort, mountsUnder } from "./daemons.js";
import { GiveUp, until } from "./poll.js";
import { nixCmd, run, runText } from "./run.js";
import { exited, tail, waitExit } from "./snapshotter.js";

/** Copies the closures of `paths` into a chroot store ROOT/nix/store with its database ROOT/nix/var/nix/db. */
export function copyToChrootStore(root: string, paths: string[]): void {
  nixCmd(["copy", "--no-check-sigs", "--to", `local?root=${root}`, ...paths]);
}

/** An ext4 filesystem image of `sizeMiB` holding the tree at `root` (mkfs.ext4 -d). */
export function makeExt4Image(image: string, root: string, sizeMiB = 64): void {
  run("truncate", ["-s", `${sizeMiB}M`, image]);
  run("mkfs.ext4", ["-q", "-F", "-d", root, image]);
}

/** A node's read-only attachment of an image: its own loop device, mounted read-only at `mountpoint`. */
export interface Attachment {
  device: string;
  mountpoint: string;
}

/** Attaches `image` through a new read-only loop device and mounts it read-only at `mountpoint`. */
export function attachReadOnly(image: string, mountpoint: string): Attachment {
  mkdirSync(mountpoint, { recursive: true });
  const device = runText("losetup", ["--find", "--show", "--read-only", image]);
  try {
    run("mount", ["-t", "ext4", "-o", "ro", device, mountpoint]);
  } catch (err) {
    run("losetup", ["-d", device]);
    throw err;
  }
  return { device, mountpoint };
}

/** Unmounts (plain umount: fails when something still holds the filesystem) and detaches the loop device. */
export function detach(a: Attachment): void {
  run("umount", [a.mountpoint]);
  run("losetup", ["-d", a.device]);
}

/** Runs `fn` with `image` mounted read-write at `mountpoint` (the admin, while no node has it attached). */
export function withImageWritable<T>(image: string, mountpoint: string, fn: () => T): T {
  mkdirSync(mountpoint, { recursive: true });
  run("mount", ["-t", "ext4", "-o", "loop", image, mountpoint]);
  try {
    return fn();
  } finally {
    run("umount", [mountpoint]); // a loop mount's device goes with it (autoclear)
  }
}

/** The loop devices backed by `image` (losetup -j). */
export function loopDevicesOf(image: string): string[] {
  return runText("losetup", ["-j", image])
    .split("\n")
    .map((l) => l.split(":")[0])
    .filter(Boolean);
}

/** The after() fallback: lazily unmounts whatever is left under `dir` and detaches `image`'s loop devices. */
export function cleanupMounts(dir: string, image?: string): void {
  for (const mp of mountsUnder(dir)) {
    try {
      run("umount", ["-l", mp]);
    } catch {
      // reported by the caller's check
    }
  }
  if (image)
    for (const dev of loopDevicesOf(image)) {
      try {
        run("losetup", ["-d", dev]);
      } catch {
        // gone meanwhile
      }
    }
}

// ---- sshd and sshfs ----

export interface Sshd {
  port: number;
  /** The client's private key (its public half is the server's only authorized key). */
  identity: string;
  stop(): Promise<void>;
}

/**
 * A private sshd on 127.0.0.1 and a free port, as a child process (`sshd -D -e -f CONF`) with its own host key and
 * one authorized key (made here, in `dir`); resolves once it accepts an ssh session (bounded).
 */
export async function startSshd(dir: string): Promise<Sshd> {
  mkdirSync(dir, { recursive: true });
  const hostKey = join(dir, "host_ed25519");
  const identity = join(dir, "id_ed25519");
  for (const key of [hostKey, identity]) run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key]);
  const authorized = join(dir, "authorized_keys");
  writeFileSync(authorized, readFileSync(`${identity}.pub`));
  chmodSync(authorized, 0o600);
  // sshd's privilege separation directory; Debian's package creates it at boot (tmpfiles), not at install.
  mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  const port = await freePort();
  const config = join(dir, "sshd_config");
  writeFileSync(
    config,
    [
      `ListenAddress 127.0.0.1:${port}`,
      `HostKey ${hostKey}`,
      `AuthorizedKeysFile ${authorized}`,
      `PidFile none`,
      `PermitRootLogin prohibit-password`,
      `PasswordAuthentication no`,
      `KbdInteractiveAuthentication no`,
      `UsePAM no`,
      // The temp dir's modes are not what StrictModes wants for a home directory's files.
      `StrictModes no`,
      `Subsystem sftp internal-sftp`,
      "",
    ].join("\n"),
  );
  const logFile = join(dir, "sshd.log");
  const fd = openSync(logFile, "a");
  // sshd re-executes itself by its absolute path.
  const child = spawn("/usr/sbin/sshd", ["-D", "-e", "-f", config], { stdio: ["ignore", fd, fd] });
  closeSync(fd);
  child.once("error", () => undefined); // reported by the readiness wait
  const stop = async (): Promise<void> => {
    if (exited(child)) return;
    child.kill("SIGTERM");
    if (!(await waitExit(child, 5000))) {
      child.kill("SIGKILL");
      await waitExit(child, 5000);
    }
  };
  try {
    await until("sshd accepts a session", 15_000, () => {
      if (exited(child)) throw new GiveUp(`sshd exited:\n${tail(logFile)}`);
      run("ssh", [...sshOptions({ port, identity }), "-p", String(port), "root@127.0.0.1", "true"]);
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { port, identity, stop };
}

/** ssh client options for the private sshd: its key only, no prompt, no known_hosts file. */
function sshOptions(s: { port: number; identity: string }): string[] {
  return [
    "-o",
    `IdentityFile=${s.identity}`,
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
  ];
}

export interface SshfsMount {
  mountpoint: string;
  child: ChildProcess;
  /** Plain umount (fails when the filesystem is busy), then waits for sshfs to exit. */
  unmount(): Promise<void>;
}

/**
 * Mounts `remoteDir` of the private sshd read-only at `mountpoint` with sshfs in the foreground (a child process
 * of this test, ended by the unmount); resolves once the mount is there (bounded).
 */
export async function mountSshfs(sshd: Sshd, remoteDir: string, mountpoint: string): Promise<SshfsMount> {
  mkdirSync(mountpoint, { recursive: true });
  const opts = [
    "ro",
    `port=${sshd.port}`,
    `IdentityFile=${sshd.identity}`,
    "IdentitiesOnly=yes",
    "BatchMode=yes",
    "StrictHostKeyChecking=no",
    "UserKnownHostsFile=/dev/null",
    "LogLevel=ERROR",
  ].join(",");
  const logFile = `${mountpoint}.sshfs.log`;
  const fd = openSync(logFile, "a");
  const child = spawn("sshfs", ["-f", "-o", opts, `root@127.0.0.1:${remoteDir}`, mountpoint], {
    stdio: ["ignore", fd, fd],
  });
  closeSync(fd);
  child.once("error", () => undefined);
  const unmount = async (): Promise<void> => {
    if (mountsUnder(mountpoint).includes(mountpoint)) run("umount", [mountpoint]);
    if (!(await waitExit(child, 10_000))) {
      child.kill("SIGKILL");
      await waitExit(child, 5000);
    }
  };
  try {
    await until("sshfs mounted", 15_000, () => {
      if (exited(child)) throw new GiveUp(`sshfs exited:\n${tail(logFile)}`);
      if (!mountsUnder(mountpoint).includes(mountpoint)) throw new Error("not mounted yet");
    });
  } catch (err) {
    if (!exited(child)) child.kill("SIGKILL");
    await waitExit(child, 5000);
    throw err;
  }
  return { mountpoint, child, unmount };
}
