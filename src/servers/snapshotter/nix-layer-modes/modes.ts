// The --nix-layers setting and the mode behind each kind a nix layer is recorded with (metadata nix_layers.mode).
import type { NixLayerKind } from "../metadata.js";
import { bindMode } from "./bind.js";
import type { LayerMode } from "./layer-mode.js";
import { linkMode } from "./link.js";
import { metacopyMode } from "./metacopy.js";
import { targetMode } from "./target.js";

/** --nix-layers: one mode for every new nix layer, or auto (auto.ts chooses). */
export type NixLayerMode = "auto" | NixLayerKind;

const MODES: Record<NixLayerKind, LayerMode> = {
  link: linkMode,
  metacopy: metacopyMode,
  bind: bindMode,
  target: targetMode,
};

/** The mode a nix layer recorded as `kind` is held in. */
export function layerMode(kind: NixLayerKind): LayerMode {
  return MODES[kind];
}
