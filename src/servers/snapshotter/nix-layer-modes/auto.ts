// Which mode a new nix layer is held in: the --nix-layers setting, or for auto (the default) target when
// containerd mounts Mount.target (1.7 and later: no per-file work, wherever the store is; asked on the first nix
// layer, when the containerd calling the snapshotter is surely up, and kept), else link when the
// store and ROOT share a filesystem, else metacopy when the kernel supports it (probed once, on first need, and
// logged), else none: the layer is downloaded, since bind compositions trip containerd 1.6's own non-recursive
// unmounts of the rootfs it mounts (e.g. `ctr run`'s temporary mount).
import { statSync } from "node:fs";
import type { LocalStore } from "../../../store/local-store.js";
import type { Logger } from "../../../util/logger.js";
import type { LayerMode } from "./layer-mode.js";
import { probeMetacopy } from "./metacopy.js";
import { layerMode, type NixLayerMode } from "./modes.js";
import { makeDirsSync } from "../../../util/fs.js";

/**
 * Whether the node's containerd mounts a Mount's target inside the rootfs (>= 1.7): known, or asked once, on the
 * first need (the answer is kept). The question never rejects: a containerd it cannot tell counts as no.
 */
export type MountTargets = boolean | (() => Promise<boolean>);

/**
 * --target-mounts: how containers above target-mode layers get their store paths: one store view per image
 * (store-view.ts, any containerd), a read-only bind per path that containerd >= 1.7 mounts, or auto: views
 * when they work here (probed once, on first need, and logged), else binds.
 */
export type TargetMounts = "auto" | "view" | "binds";

export class ModeChooser {
  private metacopyProbe?: Promise<boolean>;
  private mountsTargetsAnswer?: Promise<boolean>;
  private targetMountsAnswer?: Promise<"view" | "binds">;

  constructor(
    private readonly setting: NixLayerMode,
    private readonly store: LocalStore,
    /** Where the layers go (the probe's mount too). */
    private readonly snapshotsDir: string,
    private readonly log?: Logger,
    /** Whether the node's containerd mounts a Mount's target inside the rootfs (>= 1.7). */
    private readonly mountTargets: MountTargets = false,
    private readonly targetMountsSetting: TargetMounts = "binds",
    /** Whether store views work here: undefined when they do, else why not (asked once, under auto). */
    private readonly probeViews: () => Promise<string | undefined> = () => Promise.resolve("not probed"),
  ) {}

  /** How containers above target-mode layers get their paths (see TargetMounts). */
  targetMounts(): Promise<"view" | "binds"> {
    const setting = this.targetMountsSetting;
    this.targetMountsAnswer ??=
      setting !== "auto"
        ? Promise.resolve(setting)
        : this.probeViews().then((error) => {
            if (error) this.log?.warn("store views unusable; target-mode paths are bind-mounted", { error });
            else this.log?.info("store views usable: one overlay per image gives containers its store paths");
            return error ? "binds" : "view";
          });
    return this.targetMountsAnswer;
  }

  /** The mode for a new nix layer, or undefined when it cannot be one. */
  async choose(): Promise<LayerMode | undefined> {
    if (this.setting !== "auto") return layerMode(this.setting);
    try {
      // A store directory that does not exist yet (an empty chroot store) is made, as substitution would.
      makeDirsSync(this.store.realDir);
      if (await this.containerdMountsTargets()) {
        // How containers will get the paths: probed now, in the background, so that the image's first container
        // finds the answer (the probe mounts twice: a few hundred ms).
        void this.targetMounts();
        return layerMode("target");
      }
      if (statSync(this.store.realDir).dev === statSync(this.snapshotsDir).dev) return layerMode("link");
    } catch {
      return undefined;
    }
    return (await this.metacopySupported()) ? layerMode("metacopy") : undefined;
  }

  /**
   * False when target-mode layers made earlier cannot serve containers any more: auto mode, their paths are to be
   * bind-mounted (no store views), and the node's containerd does not mount a mount's target (a downgrade to 1.6,
   * or a node moved to an older containerd). A forced --nix-layers target is taken at its word.
   */
  async targetLayersMountable(): Promise<boolean> {
    if (this.setting !== "auto" || (await this.targetMounts()) === "view") return true;
    return this.containerdMountsTargets();
  }

  private containerdMountsTargets(): Promise<boolean> {
    const m = this.mountTargets;
    this.mountsTargetsAnswer ??= typeof m === "boolean" ? Promise.resolve(m) : m();
    return this.mountsTargetsAnswer;
  }

  /** Whether overlay metacopy with data-only layers works here: probed once, on first need, and logged. */
  metacopySupported(): Promise<boolean> {
    this.metacopyProbe ??= probeMetacopy(this.snapshotsDir).then((error) => {
      if (error)
        this.log?.warn("overlay metacopy unsupported; nix layers across filesystems are downloaded", {
          error,
        });
      else this.log?.info("overlay metacopy with data-only layers supported");
      return !error;
    });
    return this.metacopyProbe;
  }
}
