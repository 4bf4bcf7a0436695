#![no_main]
//! `-v HOST:CTR[:ro|:rw]` and image-name parsing: errors only, never a panic; an accepted volume
//! always has an absolute container path.

use libfuzzer_sys::fuzz_target;
use nook::image::validate_image_name;
use nook::spec::Volume;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(volume) = Volume::parse(text) {
        assert!(volume.destination.is_absolute());
        assert!(volume.source.is_absolute());
    }
    if validate_image_name(text).is_ok() {
        assert!(!text.contains('/') && !text.starts_with('.'));
    }
});
