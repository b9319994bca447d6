//! Builds the built-in guest (resources/guest, a separate no_std cargo workspace) and hands its ELF
//! to the VMM through `TANDEM_GUEST_ELF`, so that the `tandem` binary carries it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let guest_dir = manifest_dir.join("../resources/guest");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let target_dir = out_dir.join("guest-target");
    println!("cargo:rerun-if-changed={}", guest_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        guest_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guest_dir.join("build.rs").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guest_dir.join("link.ld").display()
    );

    if !guest_dir.join("Cargo.toml").exists() {
        // TEMPORARY while the guest is written: an empty image (boots fail with "not a kernel").
        let empty = out_dir.join("empty-guest");
        std::fs::write(&empty, b"").expect("write");
        println!("cargo:rustc-env=TANDEM_GUEST_ELF={}", empty.display());
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers (clippy, coverage) are for host code, not the guest.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the built-in guest");
    if !status.success() {
        panic!("building the built-in guest (resources/guest) failed");
    }
    let elf = target_dir.join("release/tandem-guest");
    println!("cargo:rustc-env=TANDEM_GUEST_ELF={}", elf.display());
}
