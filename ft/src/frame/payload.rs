//! Typed payloads of each frame type and their wire forms (all integers little-endian, byte
//! strings as a u32 length and the bytes).

use super::disk::DiskBatch;
use super::pages::{PageBatch, PAGE_SIZE};
use super::scrub::{ScrubDigest, ScrubResult};
use super::wire::{put_len_prefixed, WireError, WireReader};
use super::{FrameError, FrameType};
use crate::arbiter::Identity;
use crate::disk::DiskInfo;
use crate::vm::VmIdentity;

/// Why a stream was opened; a receiver refuses a purpose it was not set up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum StreamPurpose {
    /// Live migration: the source stops for good once the destination has acked.
    Migration = 1,
    /// FT: initial sync then checkpoints; the source keeps running.
    FaultTolerance = 2,
}

impl StreamPurpose {
    /// Oldest protocol version that can carry a stream of this purpose.
    pub fn min_protocol_version(self) -> u16 {
        match self {
            // Version 5: a source that never resumes once the destination may run, and the
            // Handover frame; an older source resumes when the final ack is lost. Version 6:
            // the vCPU state blobs are in the VMM's state format 2 (XSAVE as bytes), which an
            // older peer cannot read.
            StreamPurpose::Migration => 6,
            // Version 3: the Commit's CommitInfo (a backup must know when the guest was left
            // paused); version 4: checkpoints carry delta page entries; version 5: the pair's
            // settings in the Hello, the backup confirms an intended end (EndConfirmed), without
            // which a primary must not run alone before winning the arbiter, replicated disks are
            // copied in the initial sync (DiskBlocks), a backup that cannot keep its copy
            // withdraws with an Abort the primary may take as final, and the primary's
            // shared-disk lease travels in the extras (a backup must wait it out); version 6:
            // state format 2, as for migration.
            StreamPurpose::FaultTolerance => 6,
        }
    }
}

/// First frame of a stream: which protocol versions the sender speaks and what VM it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Oldest protocol version the sender can speak.
    pub min_version: u16,
    /// Newest protocol version the sender can speak.
    pub max_version: u16,
    /// Why the stream was opened.
    pub purpose: StreamPurpose,
    /// Guest page size in bytes (must be `PAGE_SIZE`).
    pub page_size: u32,
    /// The VM being sent, with the disks the stream copies (protocol version 5: after the pair
    /// settings, a u32 count and per disk its u32 index and u64 size, present only when there
    /// are disks).
    pub identity: VmIdentity,
    /// FT streams (protocol 5): the pair's settings as JSON (`checkpoint::PairSettings`), after
    /// the identity; absent from a migration's Hello.
    pub pair: Option<String>,
}

/// What an FT checkpoint's Commit adds (protocol version 3): 9 bytes after `vcpus` and `pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitInfo {
    /// How long the primary's guest was paused to capture the checkpoint, microseconds.
    pub pause_us: u64,
    /// The guest was left paused at this checkpoint (`vm.pause` on the primary): a backup that
    /// goes live from it must not run it.
    pub guest_paused: bool,
}

/// `CommitInfo` flag: the guest is paused.
const COMMIT_GUEST_PAUSED: u8 = 0x01;

/// A frame's payload, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Versions and VM identity.
    Hello(Hello),
    /// Guest pages.
    MemoryPages(PageBatch),
    /// Opaque device and platform state (irqchip, clocks, devices).
    DeviceState(Vec<u8>),
    /// Opaque state of one vCPU.
    VcpuState {
        /// vCPU index.
        index: u32,
        /// The vCPU's saved state.
        data: Vec<u8>,
    },
    /// End of a pre-copy round; `pages` lets the receiver check that none went missing.
    EndOfRound {
        /// Pages sent in the round, zero runs counted page by page.
        pages: u64,
    },
    /// All memory and state of this epoch has been sent.
    Commit {
        /// vCPU states sent for this commit.
        vcpus: u32,
        /// Pages sent since the last EndOfRound.
        pages: u64,
        /// FT checkpoints from protocol version 3 on: the pause and the guest's run state; a
        /// migration's Commit (and a version-2 one) has none.
        info: Option<CommitInfo>,
    },
    /// Acknowledges the peer's frame with this sequence number.
    Ack {
        /// The acknowledged sequence number.
        seq: u64,
    },
    /// The sender gives up.
    Abort {
        /// Human-readable cause.
        reason: String,
    },
    /// Liveness, with the sender's clock in milliseconds since the Unix epoch.
    Heartbeat {
        /// Sender's wall clock.
        timestamp_ms: u64,
    },
    /// Bytes `offset..offset + data.len()` of a checkpoint's `total`-byte extras blob; chunked
    /// because the blob (a disk write log) may exceed one frame, and self-describing so that the
    /// receiver can tell a complete blob from a cut one.
    Extras {
        /// Where this chunk starts in the blob.
        offset: u64,
        /// Length of the whole blob.
        total: u64,
        /// The chunk.
        data: Vec<u8>,
    },
    /// The answer to an Abort that ends a pair on purpose: this side will never go live from
    /// its copy. Empty.
    EndConfirmed,
    /// Blocks of a replicated disk (FT initial sync, protocol version 5).
    DiskBlocks(DiskBatch),
    /// Migration, source → destination, right after the Hello (ack requested): the VM runs
    /// wherever `generation` is won at the arbiter both were given; `token` names this
    /// migration in the claims, so that the source can recognise the destination's win.
    Handover {
        /// The generation both sides claim when the outcome is in question.
        generation: u64,
        /// Random, per migration.
        token: u64,
        /// The source's arbiter store's identity: the destination's must be the same.
        identity: Identity,
    },
    /// FT, backup → primary on `ft.promote`: "I am taking over in `generation`: stop writing
    /// the shared disk". Primary → backup, the answer: "no write of mine is in flight and none
    /// will start", so the promoted backup need not wait for the primary's lease to run out.
    Fence {
        /// The generation the backup is about to claim.
        generation: u64,
    },
    /// The primary's scrub hashes of the checkpoint named by the header's epoch, and repairs.
    ScrubDigest(ScrubDigest),
    /// The backup's answer to a ScrubDigest (same epoch).
    ScrubResult(ScrubResult),
}

impl Frame {
    /// The wire type of this payload.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::MemoryPages(_) => FrameType::MemoryPages,
            Frame::DeviceState(_) => FrameType::DeviceState,
            Frame::VcpuState { .. } => FrameType::VcpuState,
            Frame::EndOfRound { .. } => FrameType::EndOfRound,
            Frame::Commit { .. } => FrameType::Commit,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Abort { .. } => FrameType::Abort,
            Frame::Heartbeat { .. } => FrameType::Heartbeat,
            Frame::Extras { .. } => FrameType::Extras,
            Frame::EndConfirmed => FrameType::EndConfirmed,
            Frame::DiskBlocks(_) => FrameType::DiskBlocks,
            Frame::Handover { .. } => FrameType::Handover,
            Frame::Fence { .. } => FrameType::Fence,
            Frame::ScrubDigest(_) => FrameType::ScrubDigest,
            Frame::ScrubResult(_) => FrameType::ScrubResult,
        }
    }

    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello(h) => {
                out.extend_from_slice(&h.min_version.to_le_bytes());
                out.extend_from_slice(&h.max_version.to_le_bytes());
                out.push(h.purpose as u8);
                out.extend_from_slice(&h.page_size.to_le_bytes());
                out.extend_from_slice(&h.identity.memory_size.to_le_bytes());
                out.extend_from_slice(&h.identity.vcpu_count.to_le_bytes());
                put_len_prefixed(out, h.identity.config.as_bytes());
                if let Some(pair) = &h.pair {
                    put_len_prefixed(out, pair.as_bytes());
                    // The disk list follows the settings, which every FT Hello carries (a Hello
                    // without them has no disks to copy).
                    if !h.identity.disks.is_empty() {
                        out.extend_from_slice(&(h.identity.disks.len() as u32).to_le_bytes());
                        for d in &h.identity.disks {
                            out.extend_from_slice(&d.index.to_le_bytes());
                            out.extend_from_slice(&d.size.to_le_bytes());
                        }
                    }
                }
            }
            Frame::MemoryPages(b) => b.encode(out),
            Frame::DeviceState(d) => out.extend_from_slice(d),
            Frame::VcpuState { index, data } => {
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(data);
            }
            Frame::EndOfRound { pages } => out.extend_from_slice(&pages.to_le_bytes()),
            Frame::Commit { vcpus, pages, info } => {
                out.extend_from_slice(&vcpus.to_le_bytes());
                out.extend_from_slice(&pages.to_le_bytes());
                if let Some(i) = info {
                    out.extend_from_slice(&i.pause_us.to_le_bytes());
                    out.push(if i.guest_paused {
                        COMMIT_GUEST_PAUSED
                    } else {
                        0
                    });
                }
            }
            Frame::Ack { seq } => out.extend_from_slice(&seq.to_le_bytes()),
            Frame::EndConfirmed => {}
            Frame::ScrubDigest(d) => d.encode(out),
            Frame::ScrubResult(r) => r.encode(out),
            Frame::Abort { reason } => out.extend_from_slice(reason.as_bytes()),
            Frame::Heartbeat { timestamp_ms } => out.extend_from_slice(&timestamp_ms.to_le_bytes()),
            Frame::Extras {
                offset,
                total,
                data,
            } => {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&total.to_le_bytes());
                out.extend_from_slice(data);
            }
            Frame::DiskBlocks(b) => b.encode(out),
            Frame::Handover {
                generation,
                token,
                identity,
            } => {
                out.extend_from_slice(&generation.to_le_bytes());
                out.extend_from_slice(&token.to_le_bytes());
                put_len_prefixed(out, identity.as_str().as_bytes());
            }
            Frame::Fence { generation } => out.extend_from_slice(&generation.to_le_bytes()),
        }
    }

    /// Parses a checksummed payload of type `t`; every field is bounds-checked and the whole
    /// payload must be consumed.
    pub(crate) fn decode_payload(t: FrameType, payload: &[u8]) -> Result<Frame, FrameError> {
        let malformed = |reason: &'static str| FrameError::Malformed {
            frame_type: t,
            reason,
        };
        let short = |e: WireError| match e {
            WireError::Short => malformed("payload ends early"),
            WireError::Trailing => malformed("trailing bytes after payload"),
        };
        let mut r = WireReader::new(payload);
        let frame = match t {
            FrameType::Hello => {
                let min_version = r.u16().map_err(short)?;
                let max_version = r.u16().map_err(short)?;
                let purpose = match r.u8().map_err(short)? {
                    1 => StreamPurpose::Migration,
                    2 => StreamPurpose::FaultTolerance,
                    _ => return Err(malformed("unknown stream purpose")),
                };
                let page_size = r.u32().map_err(short)?;
                let memory_size = r.u64().map_err(short)?;
                let vcpu_count = r.u32().map_err(short)?;
                let config = std::str::from_utf8(r.len_prefixed().map_err(short)?)
                    .map_err(|_| malformed("config is not UTF-8"))?
                    .to_owned();
                if min_version > max_version {
                    return Err(malformed("version range is empty"));
                }
                // Optional, so that an older peer's Hello still decodes and is refused by its
                // version range with a clear reason.
                let pair = if r.remaining() > 0 {
                    Some(
                        std::str::from_utf8(r.len_prefixed().map_err(short)?)
                            .map_err(|_| malformed("pair settings are not UTF-8"))?
                            .to_owned(),
                    )
                } else {
                    None
                };
                let disks = if r.remaining() == 0 {
                    Vec::new()
                } else {
                    decode_disks(&mut r).map_err(malformed)?
                };
                Frame::Hello(Hello {
                    min_version,
                    max_version,
                    purpose,
                    page_size,
                    identity: VmIdentity {
                        memory_size,
                        vcpu_count,
                        config,
                        disks,
                    },
                    pair,
                })
            }
            FrameType::MemoryPages => {
                Frame::MemoryPages(PageBatch::decode(&mut r).map_err(malformed)?)
            }
            FrameType::DeviceState => {
                Frame::DeviceState(r.bytes(r.remaining()).map_err(short)?.to_vec())
            }
            FrameType::VcpuState => {
                let index = r.u32().map_err(short)?;
                Frame::VcpuState {
                    index,
                    data: r.bytes(r.remaining()).map_err(short)?.to_vec(),
                }
            }
            FrameType::EndOfRound => Frame::EndOfRound {
                pages: r.u64().map_err(short)?,
            },
            FrameType::Commit => {
                let vcpus = r.u32().map_err(short)?;
                let pages = r.u64().map_err(short)?;
                let info = if r.remaining() == 0 {
                    None
                } else {
                    let pause_us = r.u64().map_err(short)?;
                    let flags = r.u8().map_err(short)?;
                    if flags & !COMMIT_GUEST_PAUSED != 0 {
                        return Err(malformed("unknown Commit flags"));
                    }
                    Some(CommitInfo {
                        pause_us,
                        guest_paused: flags & COMMIT_GUEST_PAUSED != 0,
                    })
                };
                Frame::Commit { vcpus, pages, info }
            }
            FrameType::Ack => Frame::Ack {
                seq: r.u64().map_err(short)?,
            },
            FrameType::EndConfirmed => Frame::EndConfirmed,
            FrameType::ScrubDigest => {
                Frame::ScrubDigest(ScrubDigest::decode(&mut r).map_err(malformed)?)
            }
            FrameType::ScrubResult => {
                Frame::ScrubResult(ScrubResult::decode(&mut r).map_err(malformed)?)
            }
            FrameType::Abort => Frame::Abort {
                // Lossy: a garbled reason should still reach the log rather than hide the abort.
                reason: String::from_utf8_lossy(r.bytes(r.remaining()).map_err(short)?)
                    .into_owned(),
            },
            FrameType::Heartbeat => Frame::Heartbeat {
                timestamp_ms: r.u64().map_err(short)?,
            },
            FrameType::DiskBlocks => {
                Frame::DiskBlocks(DiskBatch::decode(&mut r).map_err(malformed)?)
            }
            FrameType::Extras => {
                let offset = r.u64().map_err(short)?;
                let total = r.u64().map_err(short)?;
                let data = r.bytes(r.remaining()).map_err(short)?.to_vec();
                let end = offset
                    .checked_add(data.len() as u64)
                    .ok_or_else(|| malformed("chunk end overflows"))?;
                if end > total {
                    return Err(malformed("chunk runs past the blob's total length"));
                }
                Frame::Extras {
                    offset,
                    total,
                    data,
                }
            }
            FrameType::Handover => Frame::Handover {
                generation: r.u64().map_err(short)?,
                token: r.u64().map_err(short)?,
                identity: std::str::from_utf8(r.len_prefixed().map_err(short)?)
                    .ok()
                    .and_then(Identity::parse)
                    .ok_or_else(|| malformed("arbiter identity is not one"))?,
            },
            FrameType::Fence => Frame::Fence {
                generation: r.u64().map_err(short)?,
            },
        };
        r.finish().map_err(short)?;
        Ok(frame)
    }
}

/// Bytes of one disk in a Hello's list (index, size).
const HELLO_DISK_LEN: usize = 4 + 8;

/// A Hello's disk list: a u32 count (at least 1: an empty list is not sent) and the disks, in
/// strictly rising index order, each a whole number of sectors.
fn decode_disks(r: &mut WireReader<'_>) -> Result<Vec<DiskInfo>, &'static str> {
    let short = |_: WireError| "disk list ends early";
    let n = r.u32().map_err(short)? as usize;
    if n == 0 {
        return Err("empty disk list");
    }
    if n > r.remaining() / HELLO_DISK_LEN {
        return Err("disk count larger than the payload can hold");
    }
    let mut disks: Vec<DiskInfo> = Vec::with_capacity(n);
    for _ in 0..n {
        let index = r.u32().map_err(short)?;
        let size = r.u64().map_err(short)?;
        if disks.last().is_some_and(|d| d.index >= index) {
            return Err("disk indices not rising");
        }
        if size == 0 || size % crate::disk::SECTOR_SIZE != 0 {
            return Err("disk size not a whole, non-zero number of sectors");
        }
        disks.push(DiskInfo { index, size });
    }
    Ok(disks)
}

impl Hello {
    /// A Hello for this build's protocol version range from the oldest its purpose can use
    /// ([`StreamPurpose::min_protocol_version`]).
    pub fn new(purpose: StreamPurpose, identity: VmIdentity) -> Hello {
        Hello {
            min_version: purpose.min_protocol_version(),
            max_version: crate::PROTOCOL_VERSION,
            purpose,
            page_size: PAGE_SIZE as u32,
            identity,
            pair: None,
        }
    }

    /// An FT stream's Hello, with the pair's settings (JSON).
    pub fn fault_tolerance(identity: VmIdentity, pair: String) -> Hello {
        Hello {
            pair: Some(pair),
            ..Hello::new(StreamPurpose::FaultTolerance, identity)
        }
    }
}
