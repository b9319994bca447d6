//! The backup's half of the disk copy: the Hello's disk list checked against its own images,
//! then each DiskBlocks frame checked whole against the announced sizes before any of it is
//! written (a hostile or broken frame writes nothing).

use super::{DiskInfo, DiskProgress, VmDisks, BLOCK_SIZE};
use crate::frame::{BlockRef, DiskBatch};
use crate::migration::MigrationError;

/// Whether this destination's disks (`ours`: `None` when it takes no disk copy) match what the
/// source announced; the error (`MigrationError::Incompatible`) names the disk and both sizes.
pub fn check_disks(
    announced: &[DiskInfo],
    ours: Option<&mut dyn VmDisks>,
) -> Result<(), MigrationError> {
    let bad = |s: String| Err(MigrationError::Incompatible(s));
    let Some(ours) = ours else {
        if announced.is_empty() {
            return Ok(());
        }
        return bad(format!(
            "the source copies {} replicated disk(s), this destination takes no disk copy \
             (it is set up for shared disks)",
            announced.len()
        ));
    };
    let mine = ours.list();
    if announced.is_empty() && !mine.is_empty() {
        return bad(
            "this destination replicates its disks, but the source copies none (it is set up \
             for shared disks)"
                .into(),
        );
    }
    for m in &mine {
        let name = ours.name(m.index);
        let Some(a) = announced.iter().find(|a| a.index == m.index) else {
            return bad(format!("the source does not copy {name}"));
        };
        if a.size != m.size {
            return bad(format!(
                "{name}: the primary's image is {} bytes, this backup's {} bytes; a replica \
                 must be exactly as large (e.g. `truncate -s {} IMAGE` on the backup's host)",
                a.size, m.size, a.size
            ));
        }
    }
    if let Some(a) = announced
        .iter()
        .find(|a| !mine.iter().any(|m| m.index == a.index))
    {
        return bad(format!(
            "the source copies disk {}, which this destination does not have",
            a.index
        ));
    }
    Ok(())
}

/// Checks `batch` against the disk the Hello announced, then writes it (zero runs as zeroed
/// ranges); `full_pass` says whether it counts towards the copy's progress.
pub(crate) fn apply_batch(
    disks: Option<&mut dyn VmDisks>,
    announced: &[DiskInfo],
    batch: &DiskBatch,
    progress: &DiskProgress,
    full_pass: bool,
) -> Result<(), MigrationError> {
    let bad = |s: String| MigrationError::Protocol(s);
    let d = announced
        .iter()
        .find(|d| d.index == batch.disk())
        .ok_or_else(|| {
            bad(format!(
                "blocks for disk {}, which the Hello did not announce",
                batch.disk()
            ))
        })?;
    let disks = disks.ok_or_else(|| bad("disk blocks, but no disk to write".into()))?;
    for e in batch.iter() {
        match e {
            BlockRef::Data { block, data } if data.len() != d.block_len(block) => {
                return Err(bad(format!(
                    "disk {}: {} bytes for block {block}, which holds {} of a {}-byte disk",
                    d.index,
                    data.len(),
                    d.block_len(block),
                    d.size
                )))
            }
            BlockRef::Zero { block, count }
                if block.saturating_add(u64::from(count)) > d.blocks() =>
            {
                return Err(bad(format!(
                    "disk {}: zero blocks {block}..+{count} past its {} blocks",
                    d.index,
                    d.blocks()
                )))
            }
            _ => {}
        }
    }
    let err = |op| move |source| MigrationError::Vm { op, source };
    for e in batch.iter() {
        match e {
            BlockRef::Data { block, data } => disks
                .write(d.index, block * BLOCK_SIZE as u64, data)
                .map_err(err("write_disk"))?,
            BlockRef::Zero { block, count } => {
                let at = block * BLOCK_SIZE as u64;
                let len = (u64::from(count) * BLOCK_SIZE as u64).min(d.size - at);
                disks.zero(d.index, at, len).map_err(err("zero_disk"))?
            }
        }
    }
    progress.sent(batch.data_bytes());
    if full_pass {
        progress.copied(batch.covered_bytes());
    }
    Ok(())
}
