//! One vCPU's architectural state: registers, XSAVE (x87/SSE/AVX included, so no separate FPU
//! blob), XCRs, every MSR KVM can save, LAPIC, MP state, pending events, debug registers, TSC.
//!
//! The ioctls need the vCPU out of `KVM_RUN`, not any particular thread; the VM runs them on each
//! parked vCPU thread (which owns the fd), so that vCPUs are captured in parallel.

use super::raw;
use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, kvm_xsave2, Msrs, Xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::fam::FamStruct;

/// KVM takes at most this many MSRs per `KVM_GET_MSRS`/`KVM_SET_MSRS`.
const MSR_CHUNK: usize = 256;
/// u32 words in the legacy 4 KiB `kvm_xsave` region.
const XSAVE_LEGACY_WORDS: usize = size_of::<kvm_xsave>() / 4;
/// Largest XSAVE area we accept from a snapshot (AMX makes it ~11 KiB; leave room).
const XSAVE_MAX_WORDS: usize = 64 << 10;

/// vCPU state errors.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM ioctl on a vCPU fd failed while capturing or restoring its state.
    #[error("cannot {what} of vCPU {id}")]
    Kvm {
        /// What the VMM was doing (`read the LAPIC`, `write MP state`, ...).
        what: &'static str,
        /// The vCPU's index.
        id: u8,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_GET_MSRS` or `KVM_SET_MSRS` handled fewer MSRs than asked.
    #[error("vCPU {id}: KVM took {done} of {want} MSRs (first refused: {index:#x})")]
    MsrCount {
        /// The vCPU's index.
        id: u8,
        /// MSRs KVM handled before it stopped.
        done: usize,
        /// MSRs asked for in that call.
        want: usize,
        /// The first MSR KVM refused.
        index: u32,
    },
    /// A saved XSAVE area is smaller than the legacy 4 KiB or larger than this host's.
    #[error("vCPU {id}: saved XSAVE area has {words} words; this host takes {min}..={max}")]
    XsaveSize {
        /// The vCPU's index.
        id: u8,
        /// The saved area's size in u32 words.
        words: usize,
        /// The fewest words taken (1024, the legacy `KVM_GET_XSAVE` area).
        min: usize,
        /// The most words this host's `KVM_CAP_XSAVE2` size allows.
        max: usize,
    },
    /// Allocating a `kvm_msrs` or XSAVE2 buffer failed.
    #[error("cannot allocate an MSR or XSAVE buffer")]
    Fam(#[source] vmm_sys_util::fam::Error),
}

/// Architectural state of one vCPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index, which is also its APIC ID.
    pub id: u8,
    /// Runnable, halted, waiting for INIT/SIPI (`KVM_GET_MP_STATE`).
    #[serde(with = "raw")]
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP and RFLAGS (`KVM_GET_REGS`).
    #[serde(with = "raw")]
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base (`KVM_GET_SREGS`).
    #[serde(with = "raw")]
    pub sregs: kvm_sregs,
    /// The XSAVE area as u32 words: 1024 for `KVM_GET_XSAVE`, more with `KVM_GET_XSAVE2`.
    #[serde(with = "super::words")]
    pub xsave: Vec<u32>,
    /// Extended control registers, XCR0 (`KVM_GET_XCRS`).
    #[serde(with = "raw")]
    pub xcrs: kvm_xcrs,
    /// Debug registers DR0-DR3, DR6, DR7 (`KVM_GET_DEBUGREGS`).
    #[serde(with = "raw")]
    pub debugregs: kvm_debugregs,
    /// The local APIC's register page (`KVM_GET_LAPIC`).
    #[serde(with = "raw")]
    pub lapic: kvm_lapic_state,
    /// TSC frequency, when KVM reports one; MSR_IA32_TSC is among `msrs`.
    pub tsc_khz: Option<u32>,
    /// (index, value) of every saveable MSR.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts, NMIs and SMM state (`KVM_GET_VCPU_EVENTS`).
    #[serde(with = "raw")]
    pub events: kvm_vcpu_events,
}

/// What capture needs to know about the host, found once per VM.
#[derive(Clone, Debug, Default)]
pub struct VcpuStateInfo {
    /// MSRs KVM lists as saveable and this vCPU actually lets us read.
    pub msrs: Vec<u32>,
    /// Size of the XSAVE area in bytes per `KVM_CAP_XSAVE2` (0: legacy 4 KiB only).
    pub xsave2_size: usize,
}

fn kvm_err(what: &'static str, id: u8) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { what, id, source }
}

fn msrs_buffer(entries: impl Iterator<Item = (u32, u64)>) -> Result<Msrs, VcpuStateError> {
    let v: Vec<kvm_msr_entry> = entries
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&v).map_err(VcpuStateError::Fam)
}

/// The MSRs of `Kvm::get_msr_index_list` that `fd` can read: KVM stops a `KVM_GET_MSRS` at the
/// first one it refuses, so drop that one and go on.
pub fn saveable_msrs(kvm: &Kvm, fd: &VcpuFd, id: u8) -> Result<Vec<u32>, VcpuStateError> {
    let list = kvm.get_msr_index_list().map_err(kvm_err("list MSRs", id))?;
    let mut todo: Vec<u32> = list.as_slice().to_vec();
    let mut ok = Vec::with_capacity(todo.len());
    while !todo.is_empty() {
        let n = todo.len().min(MSR_CHUNK);
        let mut buf = msrs_buffer(todo[..n].iter().map(|&i| (i, 0)))?;
        let done = fd.get_msrs(&mut buf).map_err(kvm_err("read MSRs", id))?;
        ok.extend_from_slice(&todo[..done.min(n)]);
        // Skip what was read plus the refused one, if any.
        let skip = if done < n { done + 1 } else { n };
        todo.drain(..skip);
    }
    Ok(ok)
}

/// Host facts for capture: the saveable MSRs (read on `fd`) and the XSAVE area size.
pub fn state_info(
    kvm: &Kvm,
    vm: &kvm_ioctls::VmFd,
    fd: &VcpuFd,
) -> Result<VcpuStateInfo, VcpuStateError> {
    let xsave2 = vm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    Ok(VcpuStateInfo {
        msrs: saveable_msrs(kvm, fd, 0)?,
        xsave2_size: usize::try_from(xsave2).unwrap_or(0),
    })
}

fn get_xsave(fd: &VcpuFd, id: u8, xsave2_size: usize) -> Result<Vec<u32>, VcpuStateError> {
    if xsave2_size <= size_of::<kvm_xsave>() {
        let x = fd.get_xsave().map_err(kvm_err("read XSAVE", id))?;
        return Ok(x.region.to_vec());
    }
    let extra = (xsave2_size - size_of::<kvm_xsave>())
        .div_ceil(size_of::<<kvm_xsave2 as FamStruct>::Entry>());
    let mut x = Xsave::new(extra).map_err(VcpuStateError::Fam)?;
    // SAFETY: the buffer holds the 4 KiB header plus `extra` words, which covers the
    // KVM_CAP_XSAVE2 size KVM reported for this VM.
    unsafe { fd.get_xsave2(&mut x) }.map_err(kvm_err("read XSAVE2", id))?;
    let mut words = x.as_fam_struct_ref().xsave.region.to_vec();
    words.extend_from_slice(x.as_slice());
    Ok(words)
}

fn set_xsave(fd: &VcpuFd, id: u8, words: &[u32], xsave2_size: usize) -> Result<(), VcpuStateError> {
    let max = (xsave2_size / 4).clamp(XSAVE_LEGACY_WORDS, XSAVE_MAX_WORDS);
    if words.len() < XSAVE_LEGACY_WORDS || words.len() > max {
        return Err(VcpuStateError::XsaveSize {
            id,
            words: words.len(),
            min: XSAVE_LEGACY_WORDS,
            max,
        });
    }
    let (head, tail) = words.split_at(XSAVE_LEGACY_WORDS);
    let mut x = Xsave::new(tail.len()).map_err(VcpuStateError::Fam)?;
    // SAFETY: `x` is a freshly allocated wrapper; we only write plain integers into it.
    unsafe { x.as_mut_fam_struct() }
        .xsave
        .region
        .copy_from_slice(head);
    x.as_mut_slice().copy_from_slice(tail);
    // SAFETY: the buffer holds exactly the words saved from a vCPU of this size, which is no
    // more than KVM_CAP_XSAVE2 says KVM reads (checked above).
    unsafe { fd.set_xsave2(&x) }.map_err(kvm_err("write XSAVE", id))
}

/// The part of a vCPU's state that only the vCPU itself changes once it is out of `KVM_RUN`
/// (registers, XSAVE, XCRs, debug registers, MSRs), with the MP state it was read at. A vCPU
/// reads it on its own thread as it parks, while the others are still stopping;
/// [`finish_capture`] adds the part other vCPUs and devices can still change.
#[derive(Clone, Debug)]
pub struct OwnState {
    id: u8,
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: Vec<u32>,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    tsc_khz: Option<u32>,
    msrs: Vec<(u32, u64)>,
}

impl OwnState {
    /// The vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }
}

/// Reads the state of vCPU `id`, which must not be in `KVM_RUN`. The order follows KVM's
/// constraints: MP state first (reading it may deliver pending INIT/SIPI into the LAPIC),
/// events last.
pub fn capture(fd: &VcpuFd, id: u8, info: &VcpuStateInfo) -> Result<VcpuState, VcpuStateError> {
    let own = capture_own(fd, id, info)?;
    capture_rest(fd, own)
}

/// Reads vCPU `id`'s [`OwnState`]; it must not be in `KVM_RUN`.
pub fn capture_own(fd: &VcpuFd, id: u8, info: &VcpuStateInfo) -> Result<OwnState, VcpuStateError> {
    let mp_state = fd.get_mp_state().map_err(kvm_err("read MP state", id))?;
    let regs = fd.get_regs().map_err(kvm_err("read registers", id))?;
    let sregs = fd
        .get_sregs()
        .map_err(kvm_err("read segment registers", id))?;
    let xsave = get_xsave(fd, id, info.xsave2_size)?;
    let xcrs = fd.get_xcrs().map_err(kvm_err("read XCRs", id))?;
    let debugregs = fd
        .get_debug_regs()
        .map_err(kvm_err("read debug registers", id))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let mut msrs = Vec::with_capacity(info.msrs.len());
    for chunk in info.msrs.chunks(MSR_CHUNK) {
        let mut buf = msrs_buffer(chunk.iter().map(|&i| (i, 0)))?;
        let done = fd.get_msrs(&mut buf).map_err(kvm_err("read MSRs", id))?;
        if done != chunk.len() {
            return Err(VcpuStateError::MsrCount {
                id,
                done,
                want: chunk.len(),
                index: chunk.get(done).copied().unwrap_or(0),
            });
        }
        msrs.extend(buf.as_slice().iter().map(|e| (e.index, e.data)));
    }
    Ok(OwnState {
        id,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        tsc_khz,
        msrs,
    })
}

/// Completes `own`, read as its vCPU parked, once every vCPU and device has stopped: the LAPIC
/// and pending events (IPIs, NMIs and device interrupts may have reached them since). An INIT
/// or SIPI from another vCPU in between changes the MP state when it is delivered (reading it
/// delivers them) and resets registers, so a different MP state means reading `own` again.
pub fn finish_capture(
    fd: &VcpuFd,
    own: OwnState,
    info: &VcpuStateInfo,
) -> Result<VcpuState, VcpuStateError> {
    let mp_state = fd
        .get_mp_state()
        .map_err(kvm_err("read MP state", own.id))?;
    let own = if mp_state.mp_state == own.mp_state.mp_state {
        own
    } else {
        capture_own(fd, own.id, info)?
    };
    capture_rest(fd, own)
}

/// Adds the LAPIC and the pending events to `own` (events last).
fn capture_rest(fd: &VcpuFd, own: OwnState) -> Result<VcpuState, VcpuStateError> {
    let id = own.id;
    let lapic = fd.get_lapic().map_err(kvm_err("read the LAPIC", id))?;
    let events = fd
        .get_vcpu_events()
        .map_err(kvm_err("read vCPU events", id))?;
    Ok(VcpuState {
        id,
        mp_state: own.mp_state,
        regs: own.regs,
        sregs: own.sregs,
        xsave: own.xsave,
        xcrs: own.xcrs,
        debugregs: own.debugregs,
        lapic,
        tsc_khz: own.tsc_khz,
        msrs: own.msrs,
        events,
    })
}

/// Writes `s` into vCPU `s.id` (CPUID must be set already), in the order Firecracker and Cloud
/// Hypervisor use: TSC rate, MP state, registers, XSAVE, XCRs, debug registers, LAPIC (after
/// sregs, whose APIC base it depends on), MSRs, then pending events.
pub fn restore(fd: &VcpuFd, s: &VcpuState, info: &VcpuStateInfo) -> Result<(), VcpuStateError> {
    let id = s.id;
    if let Some(khz) = s.tsc_khz {
        // Only when it differs: hosts without TSC scaling refuse any change, even a no-op one.
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz)
                .map_err(kvm_err("set the TSC rate", id))?;
        }
    }
    fd.set_mp_state(s.mp_state)
        .map_err(kvm_err("write MP state", id))?;
    fd.set_regs(&s.regs)
        .map_err(kvm_err("write registers", id))?;
    fd.set_sregs(&s.sregs)
        .map_err(kvm_err("write segment registers", id))?;
    set_xsave(fd, id, &s.xsave, info.xsave2_size)?;
    fd.set_xcrs(&s.xcrs).map_err(kvm_err("write XCRs", id))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(kvm_err("write debug registers", id))?;
    fd.set_lapic(&s.lapic)
        .map_err(kvm_err("write the LAPIC", id))?;
    for chunk in s.msrs.chunks(MSR_CHUNK) {
        let buf = msrs_buffer(chunk.iter().copied())?;
        let done = fd.set_msrs(&buf).map_err(kvm_err("write MSRs", id))?;
        if done != chunk.len() {
            return Err(VcpuStateError::MsrCount {
                id,
                done,
                want: chunk.len(),
                index: chunk.get(done).map_or(0, |m| m.0),
            });
        }
    }
    fd.set_vcpu_events(&s.events)
        .map_err(kvm_err("write vCPU events", id))
}
