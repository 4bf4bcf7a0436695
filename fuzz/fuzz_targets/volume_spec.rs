#![no_main]
//! `-v HOST:CTR[:ro|:rw]`, image-name and `--change` parsing: errors only, never a panic; an
//! accepted volume always has an absolute container path, and accepted changes leave an absolute
//! working directory and one `ENV` entry per key.

use libfuzzer_sys::fuzz_target;
use nook::spec::Volume;
use nook::storage::image::{apply_changes, validate_image_name, ImageConfig};

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
    let changes: Vec<String> = text.lines().map(str::to_string).collect();
    let mut config = ImageConfig::default();
    if apply_changes(&mut config, &changes).is_ok() {
        if let Some(dir) = &config.working_dir {
            assert!(dir.starts_with('/'), "relative WORKDIR accepted: {dir:?}");
        }
        let mut keys: Vec<&str> = config
            .env
            .iter()
            .flatten()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
            .collect();
        let count = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), count, "ENV kept two entries for one key");
    }
});
