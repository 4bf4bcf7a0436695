#![no_main]
//! `/etc/subuid` parsing: any text gives ranges that never overflow, and never panics.

use libfuzzer_sys::fuzz_target;
use nook::idmap::parse_subids;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let name = text.split(':').next().filter(|n| !n.is_empty());
    for range in parse_subids(text, name, 1000) {
        assert!(range.count > 0);
        assert!(range.start.checked_add(range.count - 1).is_some());
    }
});
