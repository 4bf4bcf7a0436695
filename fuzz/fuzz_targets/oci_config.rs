#![no_main]
//! OCI `config.json` parsing and id-map validation: errors only, never a panic; accepted maps
//! never overlap.

use libfuzzer_sys::fuzz_target;
use nook::idmap::{Caller, IdMapping, IdRange, Standing, SubRange};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(data) else {
        return;
    };
    let Some(linux) = spec.linux() else {
        return;
    };
    let ranges = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdRange> {
        maps.iter()
            .flatten()
            .map(|m| IdRange {
                container: m.container_id(),
                host: m.host_id(),
                size: m.size(),
            })
            .collect()
    };
    let caller = Caller {
        uid: 1000,
        gid: 1000,
        name: Some("fuzz".into()),
        home: None,
        subuids: vec![SubRange {
            start: 100000,
            count: 65536,
        }],
        subgids: vec![SubRange {
            start: 100000,
            count: 65536,
        }],
        helpers_unusable: None,
        standing: Standing::User,
        privileged: false,
        ranges_origin: "/etc/subuid and /etc/subgid",
    };
    let uids = ranges(linux.uid_mappings());
    if let Ok(mapping) = IdMapping::from_oci(uids, ranges(linux.gid_mappings()), &caller) {
        for (i, a) in mapping.uids.iter().enumerate() {
            for b in &mapping.uids[i + 1..] {
                let (a0, a1) = (a.container as u64, a.container as u64 + a.size as u64);
                let (b0, b1) = (b.container as u64, b.container as u64 + b.size as u64);
                assert!(a1 <= b0 || b1 <= a0, "overlapping ranges accepted");
            }
        }
    }
});
