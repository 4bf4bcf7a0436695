#![no_main]
//! Layer application (tar entries, whiteouts, links) on a scratch directory: errors only, never a
//! panic, and never a write outside the image directory.

use std::fs;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use nook::fsutil::remove_tree;
use nook::idmap::IdMapping;
use nook::storage::layer::Applier;

fuzz_target!(|data: &[u8]| {
    let scratch = PathBuf::from(format!("/tmp/nook-fuzz-layer-{}", std::process::id()));
    let _ = remove_tree(&scratch);
    fs::create_dir_all(scratch.join("canary")).expect("scratch directory");
    let root = scratch.join("root");
    let map = IdMapping::of_current_user();
    if let Ok(mut applier) = Applier::create(&root, &map) {
        if applier.apply(data, "fuzz input").is_ok() {
            let _ = applier.finish();
        }
    }
    let mut outside: Vec<String> = fs::read_dir(&scratch)
        .expect("read scratch")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    outside.sort();
    assert_eq!(
        outside,
        ["canary", "root"],
        "a layer wrote outside the image"
    );
    assert_eq!(fs::read_dir(scratch.join("canary")).unwrap().count(), 0);
    let _ = remove_tree(&scratch);
});
