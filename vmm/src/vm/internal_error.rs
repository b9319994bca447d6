//! What KVM says when it cannot go on with a vCPU (`KVM_EXIT_INTERNAL_ERROR`): the suberror,
//! the bytes of the instruction it failed to emulate (when it says), and the raw data words, so
//! that the log and the vCPU's failure report carry more than "internal error".

use kvm_bindings::{
    kvm_run, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
};
use std::fmt;

/// The most instruction bytes KVM reports (x86's longest instruction).
const MAX_INSN: usize = 15;

/// A decoded KVM internal error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalError {
    /// `KVM_INTERNAL_ERROR_*`: what went wrong.
    pub suberror: u32,
    /// The instruction KVM failed to emulate, where it reports one (an emulation failure whose
    /// flags say the bytes are there).
    pub insn: Option<Vec<u8>>,
    /// The data words KVM filled in (at most 16; for an emulation failure, the flags and
    /// instruction bytes come first, then the exit reason and exit information).
    pub data: Vec<u64>,
}

impl InternalError {
    /// Reads the error from the vCPU's run structure; call it right after `KVM_RUN` returned
    /// `KVM_EXIT_INTERNAL_ERROR`.
    pub fn from_run(run: &kvm_run) -> Self {
        // SAFETY: after a KVM_EXIT_INTERNAL_ERROR exit KVM filled the `internal` member of the
        // exit union; it is plain integers, so any bit pattern (even another member's) is a
        // valid value and reading it cannot be undefined behaviour.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        Self::decode(internal.suberror, internal.ndata, &internal.data)
    }

    /// Decodes the `internal` exit fields; `ndata` is clamped to the array.
    pub fn decode(suberror: u32, ndata: u32, data: &[u64; 16]) -> Self {
        let n = usize::try_from(ndata).map_or(data.len(), |n| n.min(data.len()));
        let data = data[..n].to_vec();
        let insn = match data.as_slice() {
            [flags, lo, hi, ..]
                if suberror == KVM_INTERNAL_ERROR_EMULATION
                    && flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                        != 0 =>
            {
                // One byte of size, then up to 15 instruction bytes, over two words.
                let mut raw = [0u8; 16];
                raw[..8].copy_from_slice(&lo.to_le_bytes());
                raw[8..].copy_from_slice(&hi.to_le_bytes());
                let size = usize::from(raw[0]).min(MAX_INSN);
                Some(raw[1..=size].to_vec())
            }
            _ => None,
        };
        InternalError {
            suberror,
            insn,
            data,
        }
    }

    /// What the suberror means, in words.
    pub fn reason(&self) -> &'static str {
        match self.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
            KVM_INTERNAL_ERROR_SIMUL_EX => "an exception while delivering an exception",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
            _ => "unknown suberror",
        }
    }
}

impl fmt::Display for InternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KVM internal error: suberror {} ({})",
            self.suberror,
            self.reason()
        )?;
        if let Some(insn) = &self.insn {
            f.write_str(", instruction bytes [")?;
            for (i, b) in insn.iter().enumerate() {
                write!(f, "{}{b:02x}", if i == 0 { "" } else { " " })?;
            }
            f.write_str("]")?;
        }
        f.write_str(", data [")?;
        for (i, w) in self.data.iter().enumerate() {
            write!(f, "{}{w:#x}", if i == 0 { "" } else { ", " })?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emulation_failure_names_the_instruction() {
        // flags (bytes present), then size 2 and `0f 0b` (ud2), then exit reason and info.
        let mut data = [0u64; 16];
        data[0] = 1;
        data[1] = u64::from_le_bytes([2, 0x0f, 0x0b, 0x90, 0x90, 0x90, 0x90, 0x90]);
        data[2] = 0x9090_9090_9090_9090;
        data[3] = 0x30;
        let e = InternalError::decode(KVM_INTERNAL_ERROR_EMULATION, 8, &data);
        assert_eq!(e.insn.as_deref(), Some(&[0x0f, 0x0b][..]));
        assert_eq!(e.data.len(), 8);
        let text = e.to_string();
        assert!(
            text.starts_with(
                "KVM internal error: suberror 1 (instruction emulation failed), \
                 instruction bytes [0f 0b], data [0x1, "
            ),
            "{text}"
        );
        assert!(text.contains(", 0x30, 0x0, "), "{text}");
    }

    #[test]
    fn other_suberrors_and_odd_counts_keep_the_raw_words() {
        let mut data = [7u64; 16];
        data[0] = 0x8000_0b0e;
        let e = InternalError::decode(KVM_INTERNAL_ERROR_DELIVERY_EV, 2, &data);
        assert_eq!(e.insn, None);
        assert_eq!(
            e.to_string(),
            "KVM internal error: suberror 3 (event delivery failed), data [0x80000b0e, 0x7]"
        );
        // KVM never says more than 16 words; a bigger count is clamped, not trusted.
        let e = InternalError::decode(99, u32::MAX, &data);
        assert_eq!((e.data.len(), e.reason()), (16, "unknown suberror"));
        // Emulation failure without the instruction-bytes flag (older kernels): no bytes.
        let e = InternalError::decode(KVM_INTERNAL_ERROR_EMULATION, 0, &data);
        assert_eq!((e.insn, e.data.len()), (None, 0));
        // A size byte larger than 15 is clamped to the 15 bytes there are.
        let mut data = [0u64; 16];
        data[0] = 1;
        data[1] = 0xff;
        let e = InternalError::decode(KVM_INTERNAL_ERROR_EMULATION, 3, &data);
        assert_eq!(e.insn.map(|b| b.len()), Some(15));
    }
}
