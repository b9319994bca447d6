//! Live migration glue: the VMM's VM as ft's `MigratableVm` on both ends, and the state blobs
//! that travel on the stream (one per vCPU, one for the platform and devices, each with the
//! state file's checked header).

pub mod incoming;
pub mod pages;
pub mod source;

use crate::state::{format, VmSnapshot};
use ft::vm::{VmOpError, VmState};

/// Wraps a VMM error as an ft backend error.
fn backend<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> VmOpError {
    move |e| VmOpError::Backend {
        what,
        source: Box::new(e),
    }
}

/// Splits a snapshot into per-vCPU blobs and one platform/devices blob.
pub fn encode_state(mut snapshot: VmSnapshot) -> Result<VmState, VmOpError> {
    let vcpus = std::mem::take(&mut snapshot.vcpus)
        .iter()
        .map(format::encode_part)
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend("encode vCPU state"))?;
    let devices = format::encode(&snapshot).map_err(backend("encode device state"))?;
    Ok(VmState { vcpus, devices })
}

/// The inverse of [`encode_state`]; every blob's header and checksum are checked.
pub fn decode_state(state: &VmState) -> Result<VmSnapshot, VmOpError> {
    let rejected = |e: format::FormatError| VmOpError::StateRejected {
        reason: errors::chain(&e),
    };
    let mut snapshot = format::decode(&state.devices).map_err(rejected)?;
    snapshot.vcpus = state
        .vcpus
        .iter()
        .map(|b| format::decode_part(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(rejected)?;
    Ok(snapshot)
}
