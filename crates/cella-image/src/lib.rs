//! Image handling for cella: OCI import and pull, the content-addressed layer cache and rootfs
//! assembly.
//!
//! Not built yet: today a sandbox's root is a host directory given with `--rootfs`, or the
//! default busybox root that `scripts/setup` builds. OCI images are a later issue.
