//! A VM with two disks and (where this host lets us create taps) two NICs, under KVM, booting a
//! tiny ELF "kernel" built here with gcc. The guest reads the virtio-mmio registers (so MMIO exits
//! reach the bus) and writes QueueNotify of disk 0 (so KVM's ioeventfd wakes the block worker
//! without an exit); the test plays the driver's set-up part through the bus beforehand and checks
//! the sector that lands in guest memory. It then rebuilds the VM, as a reboot does, and checks
//! that no thread or fd is left behind, and that a tap that cannot be opened is a 400.
//!
//! One test function on purpose: fd and thread counts are per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm::config::{
    DiskConfig, MemoryConfig, NetConfig, PayloadConfig, SerialConfig, SerialMode, VmConfig,
};
use vmm::vm::handlers::VmHandlers;
use vmm::vm::Vm;
use vmm_sys_util::tempdir::TempDir;

/// Guest: prints the magic of window 0, the device ID low byte of windows 0..4, then notifies
/// queue 0 of device 0 and prints '!', then halts.
const GUEST_ASM: &str = r#"
    .globl _start
    .text
_start:
    mov $0x3f8, %dx
    mov $0xd0000000, %ebx
    mov (%rbx), %eax
    out %al, %dx
    shr $8, %eax
    out %al, %dx
    shr $8, %eax
    out %al, %dx
    shr $8, %eax
    out %al, %dx
    mov $5, %ecx
1:  mov 8(%rbx), %eax
    out %al, %dx
    add $0x1000, %rbx
    dec %ecx
    jnz 1b
    mov $0xd0000050, %ebx
    movl $0, (%rbx)
    mov $0x21, %al
    out %al, %dx
2:  hlt
    jmp 2b
"#;

const QUEUE: u64 = 0x100_0000;
const AVAIL: u64 = 0x100_1000;
const USED: u64 = 0x100_2000;
const HDR: u64 = 0x110_0000;
const DATA: u64 = 0x110_1000;
const STATUS: u64 = 0x110_2000;

/// Builds the test kernel with gcc (the caller has required `gcc`).
fn build_guest(dir: &Path) -> PathBuf {
    let src = dir.join("k.S");
    let elf = dir.join("k.elf");
    std::fs::write(&src, GUEST_ASM).unwrap();
    let out = Command::new("gcc")
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,-Ttext=0x200000",
            "-Wl,--build-id=none",
            "-o",
        ])
        .arg(&elf)
        .arg(&src)
        .output();
    match out {
        Ok(o) if o.status.success() => elf,
        Ok(o) => panic!("gcc failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run gcc: {e}"),
    }
}

/// Whether this host lets us create taps the way the NICs open them (else the NIC part is
/// skipped, and reported as such).
fn can_make_taps() -> bool {
    let name = format!("tndp{}", std::process::id() % 100_000);
    tandem_require::named("tap", || {
        devices::virtio::net::tap::Tap::open(&name)
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn device_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("tandem_blk") || c.starts_with("tandem_net"))
        .collect()
}

fn reg_read(vm: &Vm, dev: u64, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(vm.mmio_bus().read(0xd000_0000 + dev * 0x1000 + off, &mut b));
    u32::from_le_bytes(b)
}

fn reg_write(vm: &Vm, dev: u64, off: u64, v: u32) {
    assert!(vm
        .mmio_bus()
        .write(0xd000_0000 + dev * 0x1000 + off, &v.to_le_bytes()));
}

/// Plays a virtio-blk driver's set-up of disk 0 (queue of 16 at QUEUE/AVAIL/USED), then puts one
/// IN request for sector 1 in the available ring, without notifying.
fn set_up_disk0(vm: &Vm) {
    reg_write(vm, 0, 0x70, 1);
    reg_write(vm, 0, 0x70, 3);
    reg_write(vm, 0, 0x24, 1);
    reg_write(vm, 0, 0x20, 1); // VIRTIO_F_VERSION_1
    reg_write(vm, 0, 0x70, 0xb);
    assert_eq!(reg_read(vm, 0, 0x70), 0xb, "FEATURES_OK taken");
    reg_write(vm, 0, 0x30, 0);
    assert_eq!(reg_read(vm, 0, 0x34), 256);
    reg_write(vm, 0, 0x38, 16);
    for (off, a) in [(0x80, QUEUE), (0x90, AVAIL), (0xa0, USED)] {
        reg_write(vm, 0, off, a as u32);
        reg_write(vm, 0, off + 4, 0);
    }
    reg_write(vm, 0, 0x44, 1);
    reg_write(vm, 0, 0x70, 0xf);
    assert_eq!(reg_read(vm, 0, 0x70), 0xf, "DRIVER_OK, no NEEDS_RESET");

    let m = vm.memory();
    m.write_obj(0u32, GuestAddress(HDR)).unwrap(); // VIRTIO_BLK_T_IN
    m.write_obj(1u64, GuestAddress(HDR + 8)).unwrap();
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let descs: [(u64, u32, u16, u16); 3] = [(HDR, 16, 1, 1), (DATA, 512, 3, 2), (STATUS, 1, 2, 0)];
    for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
        let d = GuestAddress(QUEUE + 16 * i as u64);
        m.write_obj(addr, d).unwrap();
        m.write_obj(len, d.unchecked_add(8)).unwrap();
        m.write_obj(flags, d.unchecked_add(12)).unwrap();
        m.write_obj(next, d.unchecked_add(14)).unwrap();
    }
    m.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    m.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

use vm_memory::Address;

#[test]
fn vm_with_disks_and_nics_boots_and_leaves_nothing_behind() {
    tandem_require::require!(kvm, gcc);
    let dir = TempDir::new().unwrap();
    let kernel = build_guest(dir.as_path());
    vmm::vm::vcpu::install_kick_handler().unwrap();

    let d0 = dir.as_path().join("d0.img");
    let mut img = vec![0u8; 4096];
    img[512..1024].fill(0x5a);
    std::fs::write(&d0, &img).unwrap();
    let d1 = dir.as_path().join("d1.img");
    std::fs::write(&d1, vec![0u8; 1 << 20]).unwrap();
    let taps = can_make_taps();
    let serial = dir.as_path().join("serial.out");
    let pid = std::process::id() % 100_000;
    let mut cfg = VmConfig {
        memory: MemoryConfig { size: 64 << 20 },
        payload: PayloadConfig {
            kernel: Some(kernel),
            ..Default::default()
        },
        serial: SerialConfig {
            mode: SerialMode::File,
            file: Some(serial.clone()),
        },
        disks: vec![
            DiskConfig {
                id: "d0".into(),
                path: d0,
                readonly: false,
            },
            DiskConfig {
                id: "d1".into(),
                path: d1,
                readonly: true,
            },
        ],
        net: if taps {
            vec![
                NetConfig {
                    id: "n0".into(),
                    tap: format!("tndv{pid}a"),
                    mac: None,
                },
                NetConfig {
                    id: "n1".into(),
                    tap: format!("tndv{pid}b"),
                    mac: Some("52:54:00:00:00:02".into()),
                },
            ]
        } else {
            vec![]
        },
        ..Default::default()
    };
    cfg.validate(u64::MAX).unwrap();
    cfg.fill_defaults();
    let ndev = 2 + cfg.net.len() as u64;

    let fds_before = open_fds();
    for boot in 0..2 {
        let _ = std::fs::remove_file(&serial);
        // Device activations come here, as they go to the VMM thread in the real VMM.
        let (activations_tx, activations) = std::sync::mpsc::channel();
        let handlers = VmHandlers {
            guest_events: Arc::new(|_| {}),
            on_failure: Arc::new(|id, e| panic!("vCPU {id}: {e}")),
            activate: Arc::new(move |a| activations_tx.send(a).unwrap()),
        };
        let mut vm = Vm::new(&cfg, handlers).unwrap();
        // Discovery through the bus, as a driver does it.
        let infos = vm.virtio_devices().to_vec();
        assert_eq!(infos.len() as u64, ndev);
        for (i, info) in infos.iter().enumerate() {
            assert_eq!(info.addr, 0xd000_0000 + i as u64 * 0x1000);
            assert_eq!(info.irq, 5 + i as u32);
            assert_eq!(reg_read(&vm, i as u64, 0), 0x7472_6976);
            assert_eq!(reg_read(&vm, i as u64, 4), 2);
            let want = if i < 2 { 2 } else { 1 };
            assert_eq!(reg_read(&vm, i as u64, 8), want);
        }
        // Disk capacities (config space) and read-only feature bit.
        assert_eq!(reg_read(&vm, 0, 0x100), 8);
        assert_eq!(reg_read(&vm, 1, 0x100), 2048);
        reg_write(&vm, 1, 0x14, 0);
        assert_ne!(reg_read(&vm, 1, 0x10) & (1 << 5), 0, "VIRTIO_BLK_F_RO");
        if taps {
            let mac = |dev: u64| {
                let mut m = [0u8; 6];
                assert!(vm.mmio_bus().read(0xd000_0100 + dev * 0x1000, &mut m));
                m
            };
            assert_eq!(mac(3), [0x52, 0x54, 0, 0, 0, 2]);
            assert_eq!(mac(2)[..2], [0x52, 0x54]);
        }

        set_up_disk0(&vm);
        // DRIVER_OK (written here as a vCPU would) only asked for the activation: the worker
        // starts on whichever thread runs it, never on the vCPU's.
        assert!(
            device_threads().is_empty(),
            "no worker before the activation runs"
        );
        activations
            .try_recv()
            .expect("DRIVER_OK asks for an activation")
            .run();
        assert!(activations.try_recv().is_err(), "one request per DRIVER_OK");
        // The new thread names itself, so wait for it.
        wait_for("the block worker", || device_threads() == ["tandem_blk_d0"]);
        vm.start().unwrap();
        let mut expect = b"virt".to_vec();
        for i in 0..5 {
            expect.push(match i {
                0 | 1 => 2,
                2 | 3 if taps => 1,
                _ => 0xff,
            });
        }
        expect.push(b'!');
        wait_for("the guest's serial output", || {
            std::fs::read(&serial)
                .map(|s| s.len() >= expect.len())
                .unwrap_or(false)
        });
        assert_eq!(std::fs::read(&serial).unwrap(), expect, "boot {boot}");
        wait_for("the block request to complete", || {
            vm.memory().read_obj::<u16>(GuestAddress(USED + 2)).unwrap() == 1
        });
        let mut sector = [0u8; 512];
        vm.memory()
            .read_slice(&mut sector, GuestAddress(DATA))
            .unwrap();
        assert!(sector.iter().all(|&b| b == 0x5a));
        assert_eq!(vm.memory().read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
        assert_eq!(
            reg_read(&vm, 0, 0x60) & 1,
            1,
            "used-buffer interrupt pending"
        );
        // 1 magic + 5 device ID reads exit; the QueueNotify write went to the ioeventfd.
        let counters = vm.counters();
        assert_eq!(counters["vcpu0"]["mmio_exits"], 6, "{counters:?}");
        assert_eq!(
            counters["vcpu0"]["unhandled_mmio"],
            if taps { 1 } else { 3 }
        );
        assert!(!device_threads().is_empty());

        vm.stop().unwrap();
        // Joined by then; the kernel may list an exited thread in /proc a moment longer (a
        // join returns when the thread clears its tid, before it is reaped), so poll.
        wait_for("stop to join the device workers", || {
            device_threads().is_empty()
        });
        drop(vm);
        assert_eq!(open_fds(), fds_before, "boot {boot}: fds leaked");
    }

    // A tap that cannot be opened ("lo" is no tap) is the caller's error: 400.
    if taps {
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut vmm = vmm::controller::Vmm::new(tx, false);
        let mut bad = cfg.clone();
        bad.net[0].tap = "lo".into();
        vmm.handle_api(vmm::api::ApiRequest::VmCreate(Box::new(bad)))
            .unwrap();
        let err = vmm.handle_api(vmm::api::ApiRequest::VmBoot).unwrap_err();
        assert_eq!(err.status, 400, "{err:?}");
        assert_eq!(open_fds(), fds_before, "failed boot leaked fds");
    }
}
