//! Compiles the kernel programs (bpf/fastpath.c, the fast path; bpf/bypass.c, the fail-open
//! bypass) into BPF objects embedded in the binary.
//! Needs clang (Debian: `clang`, and `libbpf-dev` for the helper headers); scripts/install-deps
//! installs both.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/fastpath.c");
    println!("cargo:rerun-if-changed=bpf/bypass.c");
    println!("cargo:rerun-if-env-changed=SLUICE_CLANG");
    for name in ["fastpath", "bypass"] {
        compile(name);
    }
}

/// Compiles `bpf/NAME.c` into `OUT_DIR/NAME.o`.
fn compile(name: &str) {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join(format!("{name}.o"));
    let src = format!("bpf/{name}.c");
    let clang = std::env::var("SLUICE_CLANG").unwrap_or_else(|_| "clang".into());
    // The kernel headers include <asm/types.h>, which Debian keeps under the multiarch
    // directory of the build host.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-idirafter"])
        .arg(&multiarch)
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed on {src} ({s})"),
        Err(e) => panic!(
            "cannot run {clang} to build the kernel programs ({src}): {e}; \
             install clang and libbpf-dev (scripts/install-deps), or set SLUICE_CLANG"
        ),
    }
}
