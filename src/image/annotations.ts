// Snapshot labels containerd's unpacker and CRI plugin set, which nixoci's snapshotter and image service both read
// or write.

/** The chain ID a Prepare is meant to become (containerd's remote-snapshot protocol). */
export const REF_LABEL = "containerd.io/snapshot.ref";
/** The manifest digest of the image a layer is unpacked for (CRI, with snapshot annotations enabled). */
export const MANIFEST_DIGEST_LABEL = "containerd.io/snapshot/cri.manifest-digest";
