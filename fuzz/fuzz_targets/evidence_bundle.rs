//! What `sluicectl evidence verify` reads from a bundle someone handed over: any tar archive
//! (names, sizes, manifest, chain and record lines). The check ends with findings or an
//! error, never a panic, and a bundle it calls clean has a manifest whose files it read.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = sluice_control::evidence_bundle::check_tar(data, None) {
        if c.clean {
            assert!(c.problems.is_empty());
        }
    }
    let _ = sluice_control::evidence_bundle::check(data, Some("00"));
});
