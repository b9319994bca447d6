//! The disk copy without KVM: in-memory images with holes and write tracking on the source, a
//! garbage image on the destination, batches applied as they are sent.

use super::*;
use crate::frame::{DiskBatch, Frame};
use crate::migration::MigrationError;
use std::cell::RefCell;
use std::rc::Rc;

const BS: u64 = BLOCK_SIZE as u64;

/// One in-memory image: bytes, which blocks are holes (source), what was read and written.
struct Image {
    index: u32,
    data: Vec<u8>,
    holes: Vec<bool>,
    dirty: Option<DirtyBitmap>,
    reads: Vec<u64>,
    zeroed: u64,
}

impl Image {
    fn new(index: u32, size: u64, fill: impl Fn(u64) -> Option<u8>) -> Rc<RefCell<Image>> {
        let blocks = size.div_ceil(BS);
        let mut data = vec![0u8; size as usize];
        let mut holes = vec![false; blocks as usize];
        for b in 0..blocks {
            let r = (b * BS) as usize..((b + 1) * BS).min(size) as usize;
            match fill(b) {
                Some(v) => data[r].fill(v),
                None => holes[b as usize] = true,
            }
        }
        Rc::new(RefCell::new(Image {
            index,
            data,
            holes,
            dirty: None,
            reads: Vec::new(),
            zeroed: 0,
        }))
    }

    /// The guest writes `v` over block `b` (the source's write path marks it after the write).
    fn guest_write(&mut self, b: u64, v: u8) {
        let size = self.data.len() as u64;
        let r = (b * BS) as usize..((b + 1) * BS).min(size) as usize;
        self.data[r].fill(v);
        self.holes[b as usize] = false;
        if let Some(d) = self.dirty.as_mut() {
            d.set(b);
        }
    }
}

struct Fake(Vec<Rc<RefCell<Image>>>);

impl Fake {
    fn get(&self, index: u32) -> Rc<RefCell<Image>> {
        self.0
            .iter()
            .find(|i| i.borrow().index == index)
            .cloned()
            .expect("known disk")
    }
}

impl VmDisks for Fake {
    fn list(&self) -> Vec<DiskInfo> {
        self.0
            .iter()
            .map(|i| {
                let i = i.borrow();
                DiskInfo {
                    index: i.index,
                    size: i.data.len() as u64,
                }
            })
            .collect()
    }
    fn start_tracking(&mut self) -> Result<(), VmOpError> {
        for i in &self.0 {
            let blocks = i.borrow().holes.len() as u64;
            i.borrow_mut().dirty = Some(DirtyBitmap::new(blocks));
        }
        Ok(())
    }
    fn take_dirty(&mut self, index: u32) -> Result<DirtyBitmap, VmOpError> {
        let img = self.get(index);
        let mut img = img.borrow_mut();
        let blocks = img.holes.len() as u64;
        Ok(img
            .dirty
            .as_mut()
            .map(|d| std::mem::replace(d, DirtyBitmap::new(blocks)))
            .unwrap_or_else(|| DirtyBitmap::new(blocks)))
    }
    fn stop_tracking(&mut self) {
        for i in &self.0 {
            i.borrow_mut().dirty = None;
        }
    }
    fn next_data(&mut self, index: u32, offset: u64) -> Result<Option<(u64, u64)>, VmOpError> {
        let img = self.get(index);
        let img = img.borrow();
        let size = img.data.len() as u64;
        let first = (offset / BS) as usize;
        let Some(start) = (first..img.holes.len()).find(|&b| !img.holes[b]) else {
            return Ok(None);
        };
        let end = (start..img.holes.len())
            .find(|&b| img.holes[b])
            .unwrap_or(img.holes.len());
        Ok(Some((
            (start as u64 * BS).max(offset),
            (end as u64 * BS).min(size),
        )))
    }
    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
        let img = self.get(index);
        let mut img = img.borrow_mut();
        img.reads.push(offset / BS);
        let o = offset as usize;
        buf.copy_from_slice(&img.data[o..o + buf.len()]);
        Ok(())
    }
    fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), VmOpError> {
        let img = self.get(index);
        let o = offset as usize;
        img.borrow_mut().data[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn zero(&mut self, index: u32, offset: u64, len: u64) -> Result<(), VmOpError> {
        let img = self.get(index);
        let mut img = img.borrow_mut();
        let o = offset as usize;
        img.data[o..o + len as usize].fill(0);
        img.zeroed += len;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), VmOpError> {
        Ok(())
    }
}

/// A source image of `size` bytes (block `b` is a hole when `b % 5 == 0`, zeros when
/// `b % 5 == 1`, data otherwise) and a destination of garbage.
fn pair(size: u64) -> (Fake, Fake) {
    let src = Image::new(0, size, |b| match b % 5 {
        0 => None,
        1 => Some(0),
        _ => Some((b % 200) as u8 + 1),
    });
    let dst = Image::new(0, size, |_| Some(0xee));
    (Fake(vec![src]), Fake(vec![dst]))
}

/// Runs a full copy; `during(frame number, source image)` plays the guest between frames.
fn copy(
    src: &mut Fake,
    dst: &mut Fake,
    during: &mut dyn FnMut(usize, &mut Image),
) -> (DiskProgress, DiskProgress) {
    let (sent, got) = (DiskProgress::new(), DiskProgress::new());
    let announced = src.list();
    check_disks(&announced, Some(&mut *dst)).expect("same disks");
    got.start(announced.iter().map(|d| d.size).sum());
    let mut c = DiskCopy::start(src, sent.clone(), 4).expect("start");
    let image = src.get(0);
    let mut frames = 0;
    let full = std::cell::Cell::new(true);
    let mut out = |f: Frame| -> Result<(), MigrationError> {
        let Frame::DiskBlocks(b) = f else {
            panic!("not disk blocks")
        };
        apply_batch(Some(&mut *dst), &announced, &b, &got, full.get())?;
        frames += 1;
        during(frames, &mut image.borrow_mut());
        Ok(())
    };
    c.full_pass(src, &mut out).expect("full pass");
    full.set(false);
    for _ in 0..3 {
        c.take_dirty(src).expect("take");
        c.dirty_pass(src, &mut out).expect("dirty pass");
    }
    // The "paused" round: nothing writes any more.
    c.take_dirty(src).expect("take");
    c.dirty_pass(src, &mut out).expect("last pass");
    c.stop(src);
    (sent, got)
}

#[test]
fn a_full_pass_copies_data_and_zeroes_the_rest_without_reading_holes() {
    // 103 blocks and a short last one (a whole number of sectors).
    let size = 103 * BS + 1024;
    let (mut src, mut dst) = pair(size);
    let (sent, got) = copy(&mut src, &mut dst, &mut |_, _| {});
    let (s, d) = (src.get(0), dst.get(0));
    assert!(s.borrow().data == d.borrow().data, "the copy differs");
    // Holes are never read; data and zero blocks are.
    let holes: Vec<u64> = (0..104).filter(|b| b % 5 == 0).collect();
    assert!(s.borrow().reads.iter().all(|r| !holes.contains(r)));
    // Only non-zero blocks travel: 3 in 5, the short last one (block 103) among them.
    let data_blocks = (0..104u64).filter(|b| b % 5 >= 2).count() as u64;
    let p = sent.snapshot();
    assert_eq!(p.bytes_sent, (data_blocks - 1) * BS + 1024);
    assert_eq!(
        (p.bytes_total, p.bytes_copied, p.dirty_blocks),
        (size, size, 0)
    );
    let g = got.snapshot();
    assert_eq!(
        (g.bytes_total, g.bytes_copied, g.bytes_sent),
        (size, size, p.bytes_sent)
    );
    // The destination zeroed the source's holes and zero blocks (2 in 5).
    assert!(d.borrow().zeroed >= 40 * BS);
}

#[test]
fn blocks_the_guest_writes_during_the_copy_are_sent_again() {
    let (mut src, mut dst) = pair(64 * BS);
    let mut seen = Vec::new();
    let (sent, _) = copy(&mut src, &mut dst, &mut |frame, img| {
        // Rewrites a block the full pass already sent, one it has not reached, and a hole.
        if frame == 2 {
            img.guest_write(2, 0x77);
            img.guest_write(60, 0x78);
            img.guest_write(5, 0x79);
        }
        seen.push(frame);
    });
    assert!(src.get(0).borrow().data == dst.get(0).borrow().data);
    assert!(sent.snapshot().bytes_sent > 0);
    assert!(seen.len() > 3);
}

#[test]
fn a_hostile_or_broken_batch_writes_nothing() {
    let (_, mut dst) = pair(16 * BS);
    let before = dst.get(0).borrow().data.clone();
    let announced = dst.list();
    let p = DiskProgress::new();
    let apply = |dst: &mut Fake, b: &DiskBatch| apply_batch(Some(dst), &announced, b, &p, true);
    let mut b = DiskBatch::new(0);
    b.push_data(1, &[1u8; BLOCK_SIZE]);
    b.push_data(16, &[1u8; BLOCK_SIZE]);
    assert!(matches!(
        apply(&mut dst, &b),
        Err(MigrationError::Protocol(_))
    ));
    let mut b = DiskBatch::new(0);
    b.push_data(1, &[1u8; BLOCK_SIZE]);
    b.push_zero(10, 7);
    assert!(matches!(
        apply(&mut dst, &b),
        Err(MigrationError::Protocol(_))
    ));
    let mut b = DiskBatch::new(0);
    b.push_data(3, &[1u8; 1024]);
    assert!(matches!(
        apply(&mut dst, &b),
        Err(MigrationError::Protocol(_))
    ));
    let mut b = DiskBatch::new(4);
    b.push_zero(0, 1);
    assert!(matches!(
        apply(&mut dst, &b),
        Err(MigrationError::Protocol(_))
    ));
    assert!(before == dst.get(0).borrow().data, "a refused batch wrote");
    assert!(matches!(
        apply_batch(None, &announced, &DiskBatch::new(0), &p, true),
        Err(MigrationError::Protocol(_))
    ));
}

#[test]
fn disks_that_do_not_match_are_refused_naming_both_sizes() {
    let d = |index, size| DiskInfo { index, size };
    let mut ours = Fake(vec![Image::new(0, 8 * BS, |_| None)]);
    let err = |r: Result<(), MigrationError>| match r {
        Err(MigrationError::Incompatible(s)) => s,
        other => panic!("not refused: {other:?}"),
    };
    let s = err(check_disks(&[d(0, 16 * BS)], Some(&mut ours)));
    assert!(
        s.contains(&(16 * BS).to_string()) && s.contains(&(8 * BS).to_string()),
        "{s}"
    );
    assert!(err(check_disks(&[], Some(&mut ours))).contains("copies none"));
    assert!(err(check_disks(&[d(0, 8 * BS), d(1, BS)], Some(&mut ours))).contains("disk 1"));
    assert!(err(check_disks(&[d(3, 8 * BS)], Some(&mut ours))).contains("does not copy"));
    assert!(err(check_disks(&[d(0, 8 * BS)], None)).contains("shared"));
    assert!(check_disks(&[d(0, 8 * BS)], Some(&mut ours)).is_ok());
    assert!(check_disks(&[], None).is_ok());
    let mut none = Fake(Vec::new());
    assert!(check_disks(&[], Some(&mut none)).is_ok());
}
