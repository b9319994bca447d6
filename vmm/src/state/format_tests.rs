use super::*;
use crate::state::vcpu::VcpuState;
use crate::state::vm::KvmVmState;
use crate::state::DevicesState;
use devices::serial::SerialSnapshot;
use devices::virtio::device::DeviceSnapshot;
use devices::virtio::mmio::state::{MmioSnapshot, QueueSnapshot};
use kvm_bindings::*;
use tandem_testkit::{mutation_loop, Edit, Rng, ALL_EDITS};

/// A snapshot with every part non-trivial, without KVM.
pub(crate) fn sample() -> VmSnapshot {
    let vcpu = |id: u8| VcpuState {
        id,
        mp_state: kvm_mp_state { mp_state: 1 },
        regs: kvm_regs {
            rip: 0x40_0000 + u64::from(id),
            rflags: 2,
            ..Default::default()
        },
        sregs: kvm_sregs {
            cr0: 0x8000_0011,
            ..Default::default()
        },
        xsave: (0..1024).collect(),
        xcrs: kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        },
        debugregs: Default::default(),
        lapic: kvm_lapic_state { regs: [3; 1024] },
        tsc_khz: Some(2_000_000),
        msrs: vec![(0x10, 12345), (0xc000_0080, 0xd01)],
        events: Default::default(),
    };
    let mut ioapic = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    // SAFETY: writing plain bytes into a union of plain-data members.
    unsafe { ioapic.chip.dummy[7] = 9 };
    VmSnapshot {
        memory_size: 128 << 20,
        vcpus: vec![vcpu(0), vcpu(1)],
        kvm: KvmVmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic,
            pit: Default::default(),
            clock: kvm_clock_data {
                clock: 987_654_321,
                ..Default::default()
            },
        },
        devices: DevicesState {
            serial: Some(SerialSnapshot {
                line_status: 0x60,
                in_buffer: vec![1, 2, 3],
                ..Default::default()
            }),
            virtio: vec![MmioSnapshot {
                device_type: 1,
                status: 15,
                acked_features: 1 << 32 | 1 << 5,
                acked_unoffered: false,
                queue_select: 1,
                device_features_select: 1,
                driver_features_select: 1,
                interrupt_status: 1,
                needs_reset: false,
                config_generation: 0,
                activated: true,
                queues: vec![QueueSnapshot {
                    max_size: 256,
                    size: 256,
                    ready: true,
                    desc_table: 0x1000,
                    avail_ring: 0x2000,
                    used_ring: 0x3000,
                    next_avail: 17,
                    next_used: 16,
                    event_idx_enabled: false,
                    bad_size: false,
                }],
                device: DeviceSnapshot::Net {
                    mac: [0x52, 0x54, 0, 0, 0, 1],
                    held_frame: Some(vec![0xab; 60]),
                },
            }],
        },
    }
}

fn same(a: &VmSnapshot, b: &VmSnapshot) -> bool {
    postcard::to_stdvec(a).unwrap() == postcard::to_stdvec(b).unwrap()
}

#[test]
fn round_trip() {
    let s = sample();
    let bytes = encode(&s).unwrap();
    let back = decode(&bytes).unwrap();
    assert!(same(&s, &back));
    assert_eq!(back.vcpus, s.vcpus);
    assert_eq!(back.devices, s.devices);
    assert_eq!(back.kvm.clock.clock, 987_654_321);
}

#[test]
fn wrong_version_is_named() {
    let mut bytes = encode(&sample()).unwrap();
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    let e = decode(&bytes).unwrap_err();
    assert!(matches!(e, FormatError::WrongVersion { found: 7 }), "{e}");
    assert!(e.to_string().contains("version 7"));
}

#[test]
fn a_version_1_state_file_still_restores_but_a_version_1_part_is_refused() {
    let s = sample();
    let payload = postcard::to_stdvec(&crate::state::legacy::v1_of(&s)).unwrap();
    let v1 = frame_version(&payload, 1);
    let back = decode(&v1).unwrap();
    assert!(same(&s, &back));
    assert_eq!(back.vcpus, s.vcpus);
    // The same snapshot now takes fewer bytes: the XSAVE words are no longer varints.
    assert!(encode(&s).unwrap().len() != v1.len());
    // A vCPU blob in a stream: the protocol version pins the format, so only this one.
    let part = frame_version(&postcard::to_stdvec(&s.vcpus[0]).unwrap(), 1);
    let e = decode_part::<VcpuState>(&part).unwrap_err();
    assert!(matches!(e, FormatError::WrongVersion { found: 1 }), "{e}");
}

#[test]
fn truncated_anywhere_is_truncated() {
    let bytes = encode(&sample()).unwrap();
    for cut in [
        1,
        5,
        8,
        11,
        12,
        20,
        HEADER_LEN,
        HEADER_LEN + 1,
        bytes.len() - 1,
    ] {
        let e = decode(&bytes[..cut]).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { .. }), "cut {cut}: {e}");
    }
    assert!(matches!(
        decode(&[]).unwrap_err(),
        FormatError::Truncated { .. }
    ));
}

#[test]
fn bad_checksum_and_bad_magic_and_trailing() {
    let mut bytes = encode(&sample()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let e = decode(&bytes).unwrap_err();
    assert!(matches!(e, FormatError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("checksum"));
    let mut bytes = encode(&sample()).unwrap();
    bytes[0] = b'X';
    assert!(matches!(decode(&bytes).unwrap_err(), FormatError::BadMagic));
    let mut bytes = encode(&sample()).unwrap();
    bytes.push(0);
    assert!(matches!(
        decode(&bytes).unwrap_err(),
        FormatError::Trailing(1)
    ));
}

/// What the cargo-fuzz target does, for a bounded number of inputs so stable CI runs it: random
/// bytes, truncations and bit flips of a real state, through the framed decoder and (with a
/// valid header, so the checksum does not stop them) through the payload decoder. None may panic.
#[test]
fn garbage_never_panics() {
    let good = encode(&sample()).unwrap();
    let payload = unframe(&good).unwrap().to_vec();
    let check = |_: usize, _: Edit, input: &[u8], _: &mut Rng| {
        let _ = decode(input);
        let _ = decode(&frame(input));
    };
    // The whole file (its header and checksum stop most edits early) and its payload alone
    // (which `frame` re-frames validly, so postcard sees every edit).
    mutation_loop(&good, 0x9e37_79b9_7f4a_7c15, 1500, &ALL_EDITS, check);
    mutation_loop(&payload, 0x2545_f491_4f6c_dd1d, 1500, &ALL_EDITS, check);
}
