//! Compiles the kernel fast path (bpf/fastpath.c) into a BPF object embedded in the binary.
//! Needs clang (Debian: `clang`, and `libbpf-dev` for the helper headers); scripts/install-deps
//! installs both.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/fastpath.c");
    println!("cargo:rerun-if-env-changed=SLUICE_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("fastpath.o");
    let clang = std::env::var("SLUICE_CLANG").unwrap_or_else(|_| "clang".into());
    // The kernel headers include <asm/types.h>, which Debian keeps under the multiarch
    // directory of the build host.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-idirafter"])
        .arg(&multiarch)
        .arg("-c")
        .arg("bpf/fastpath.c")
        .arg("-o")
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed on bpf/fastpath.c ({s})"),
        Err(e) => panic!(
            "cannot run {clang} to build the kernel fast path (bpf/fastpath.c): {e}; \
             install clang and libbpf-dev (scripts/install-deps), or set SLUICE_CLANG"
        ),
    }
}
