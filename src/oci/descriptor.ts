// An OCI content descriptor: what a manifest or index says about a blob it points to.
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  /** What an artifact manifest holds (image spec 1.1), copied into the descriptors that point at it. */
  artifactType?: string;
  annotations?: Record<string, string>;
  platform?: { architecture: string; os: string; variant?: string };
}
