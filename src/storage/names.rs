//! Default container names, as podman gives them: `adjective_noun`, picked at random.

use anyhow::{Context, Result};

// Our own short lists: 48 × 48 = 2304 names, enough that a user's few dozen containers rarely
// meet a taken one (the store then draws again).
const ADJECTIVES: [&str; 48] = [
    "agile", "amber", "ample", "bold", "brave", "brisk", "calm", "clever", "cosy", "crisp",
    "curious", "dapper", "eager", "early", "fancy", "fair", "fond", "gentle", "glad", "golden",
    "happy", "hardy", "honest", "jolly", "keen", "kind", "lively", "lucid", "lucky", "mellow",
    "merry", "modest", "nimble", "noble", "patient", "plucky", "polite", "proud", "quick", "quiet",
    "rapid", "serene", "shiny", "steady", "sunny", "swift", "tidy", "witty",
];

const NOUNS: [&str; 48] = [
    "acorn", "badger", "beacon", "birch", "bison", "brook", "cedar", "comet", "coral", "crane",
    "delta", "dune", "falcon", "fern", "finch", "fjord", "glacier", "harbor", "hazel", "heron",
    "island", "juniper", "kestrel", "lagoon", "lantern", "larch", "lynx", "maple", "meadow",
    "marten", "nebula", "otter", "pebble", "pine", "plover", "quartz", "raven", "reef", "river",
    "sparrow", "spruce", "summit", "thistle", "tundra", "valley", "walnut", "willow", "wren",
];

/// A random `adjective_noun`.
pub fn random_name() -> Result<String> {
    let mut bytes = [0u8; 2];
    crate::sys::random_bytes(&mut bytes).context("reading random bytes for a container name")?;
    Ok(format!(
        "{}_{}",
        ADJECTIVES[bytes[0] as usize % ADJECTIVES.len()],
        NOUNS[bytes[1] as usize % NOUNS.len()]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_are_valid_container_names_and_vary() {
        let names: std::collections::HashSet<String> =
            (0..64).map(|_| random_name().unwrap()).collect();
        for name in &names {
            crate::storage::container::validate_name(name).unwrap();
            let (adjective, noun) = name.split_once('_').unwrap();
            assert!(
                ADJECTIVES.contains(&adjective) && NOUNS.contains(&noun),
                "{name}"
            );
        }
        assert!(names.len() > 16, "{names:?}");
    }
}
