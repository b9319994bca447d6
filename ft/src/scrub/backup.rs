//! The backup's side of the scrub: a digest of checkpoint N arrives after N was applied and
//! before N+1 is; the repairs it carries are written first, then every region it names is hashed
//! from this copy and compared.

use super::hash::{HashError, Sources, StateHashes};
use super::region::Layout;
use super::{ScrubDisks, ScrubError};
use crate::frame::{ScrubDigest, ScrubOutcome, ScrubRegion, ScrubResult, PAGE_SIZE};
use crate::vm::{MigratableVm, VmOpError, VmState};

/// Answers `d`, the digest of checkpoint `epoch`, for a backup whose last committed checkpoint
/// is `committed` (with its kept state). A copy at another checkpoint answers stale and changes
/// nothing; a repair this copy cannot take is an error (the copy is not what was committed).
pub(crate) fn check<V: MigratableVm + ?Sized>(
    vm: &mut V,
    committed: Option<(u64, &VmState)>,
    epoch: u64,
    d: &ScrubDigest,
    disks: Option<&dyn ScrubDisks>,
) -> Result<ScrubResult, ScrubError> {
    let stale = ScrubResult {
        pass: d.pass,
        outcome: ScrubOutcome::Stale,
        backup_epoch: committed.map_or(0, |c| c.0),
        checked: 0,
        bytes: 0,
        repaired: 0,
        mismatches: Vec::new(),
    };
    let Some(state) = committed.filter(|c| c.0 == epoch).map(|c| c.1) else {
        log::info!(
            "ft scrub: digest of checkpoint {epoch} while holding {:?}: not compared",
            committed.map(|c| c.0)
        );
        return Ok(stale);
    };
    let layout = Layout::of(&*vm, disks);
    let mut repaired = 0u32;
    for rep in &d.repairs {
        write(vm, disks, &rep.region, &rep.data).map_err(|source| ScrubError::Repair {
            region: layout.name(&rep.region),
            source,
        })?;
        repaired += 1;
    }
    let hashes = StateHashes::of(state);
    let src = Sources {
        vm: &*vm,
        disks,
        state: Some(&hashes),
    };
    let mut mismatches = Vec::new();
    let mut bytes = 0u64;
    for e in &d.entries {
        bytes += e.region.bytes();
        let same = match src.hash(&e.region, None) {
            Ok(h) => h == e.hash,
            Err(HashError::Absent) => false,
            Err(HashError::Read(err)) => {
                log::warn!(
                    "ft scrub: cannot read {} of this copy: {}",
                    layout.name(&e.region),
                    crate::migration::error_chain(&err)
                );
                false
            }
        };
        if !same {
            log::warn!(
                "ft scrub: this copy differs from the primary's at checkpoint {epoch}: {}",
                layout.name(&e.region)
            );
            mismatches.push(e.region);
        }
    }
    if repaired > 0 {
        log::info!("ft scrub: wrote {repaired} repairs from the primary at checkpoint {epoch}");
    }
    Ok(ScrubResult {
        pass: d.pass,
        outcome: ScrubOutcome::Compared,
        backup_epoch: epoch,
        checked: u32::try_from(d.entries.len()).unwrap_or(u32::MAX),
        bytes,
        repaired,
        mismatches,
    })
}

/// Writes one repair into this copy; its length was checked against the region when decoded.
fn write<V: MigratableVm + ?Sized>(
    vm: &mut V,
    disks: Option<&dyn ScrubDisks>,
    r: &ScrubRegion,
    data: &[u8],
) -> Result<(), VmOpError> {
    match *r {
        ScrubRegion::Memory { first_pfn, pages } => {
            let end = first_pfn.saturating_add(u64::from(pages));
            if end > vm.page_count() {
                return Err(VmOpError::PageOutOfRange {
                    pfn: end - 1,
                    pages: vm.page_count(),
                });
            }
            for (pfn, page) in (first_pfn..end).zip(data.chunks_exact(PAGE_SIZE)) {
                let page: &[u8; PAGE_SIZE] =
                    page.try_into().map_err(|_| VmOpError::StateRejected {
                        reason: "a memory repair is not whole pages".into(),
                    })?;
                vm.write_page(pfn, page)?;
            }
            Ok(())
        }
        ScrubRegion::Disk { index, offset, len } => {
            let refuse = |reason: String| VmOpError::InvalidState {
                what: "repair a disk",
                reason,
            };
            let d = disks.ok_or_else(|| refuse("this backup replicates no disks".into()))?;
            let size = d
                .list()
                .iter()
                .find(|x| x.index == index)
                .map(|x| x.size)
                .ok_or_else(|| refuse(format!("no replicated disk {index} here")))?;
            if offset.saturating_add(u64::from(len)) > size {
                return Err(refuse(format!(
                    "bytes {offset}..{} lie past the end of disk {index} ({size} bytes)",
                    offset.saturating_add(u64::from(len))
                )));
            }
            d.write(index, offset, data)
        }
        // Decoding refuses repairs of state regions.
        ScrubRegion::Devices | ScrubRegion::Vcpu { .. } => Ok(()),
    }
}
