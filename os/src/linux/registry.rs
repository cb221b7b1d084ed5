//! Pulling images from a Docker/OCI registry.

use super::image::{ResolvedImage, UnpackLocks};
use crate::host::{HostError, HostResult};
use crate::layout::Layout;
use trellis_core::api::ImageRef;

pub fn resolve(
    _layout: &Layout,
    uri: &str,
    _image: &ImageRef,
    _locks: &UnpackLocks,
) -> HostResult<ResolvedImage> {
    Err(HostError::Invalid(format!(
        "registry images are not supported yet: {uri}"
    )))
}
