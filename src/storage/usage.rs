//! Disk use of trees in the store, measured together: a file hard linked into several images
//! (a commit shares its base's unchanged files, a build step its parent's) is counted once.
//! Sizes are apparent sizes (`st_size`), directories and links included, as `du -b` counts.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

type Inode = (u64, u64);

/// One tree's part of a [`Measured`].
#[derive(Default)]
struct TreeUse {
    /// Bytes in entries with a single link (and directories): this tree's alone.
    own: u64,
    /// Files with more than one link, counted once per tree.
    linked: HashSet<Inode>,
}

/// The trees given to [`measure`], in the same order.
pub struct Measured {
    trees: Vec<TreeUse>,
    linked_size: HashMap<Inode, u64>,
    /// How many of the trees hold each linked file.
    holders: HashMap<Inode, u32>,
}

/// Walks each tree once. Entries nook cannot read (directories of other ids in a container's
/// layer) are left out, as `du` leaves them.
pub fn measure(trees: &[PathBuf]) -> Measured {
    let mut measured = Measured {
        trees: Vec::with_capacity(trees.len()),
        linked_size: HashMap::new(),
        holders: HashMap::new(),
    };
    for root in trees {
        let mut tree = TreeUse::default();
        let mut stack = vec![root.clone()];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                tree.own += meta.len();
                if let Ok(entries) = std::fs::read_dir(&path) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            } else if meta.nlink() > 1 {
                let inode = (meta.dev(), meta.ino());
                if tree.linked.insert(inode) {
                    measured.linked_size.insert(inode, meta.len());
                    *measured.holders.entry(inode).or_default() += 1;
                }
            } else {
                tree.own += meta.len();
            }
        }
        measured.trees.push(tree);
    }
    measured
}

impl Measured {
    /// Everything tree `i` holds.
    pub fn size(&self, i: usize) -> u64 {
        let tree = &self.trees[i];
        tree.own + tree.linked.iter().map(|n| self.linked_size[n]).sum::<u64>()
    }

    /// The part of tree `i`'s size in files another of the trees also holds.
    pub fn shared(&self, i: usize) -> u64 {
        self.trees[i]
            .linked
            .iter()
            .filter(|n| self.holders[*n] > 1)
            .map(|n| self.linked_size[n])
            .sum()
    }

    /// What the trees `which` take together, each file once.
    pub fn union(&self, which: impl IntoIterator<Item = usize>) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0;
        for i in which {
            let tree = &self.trees[i];
            total += tree.own;
            for inode in &tree.linked {
                if seen.insert(*inode) {
                    total += self.linked_size[inode];
                }
            }
        }
        total
    }

    /// What all the trees take together.
    pub fn total(&self) -> u64 {
        self.union(0..self.trees.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once_in_totals_and_show_as_shared() {
        let dir = std::env::temp_dir().join(format!("nook-usage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("big"), vec![0u8; 10_000]).unwrap();
        std::fs::hard_link(a.join("big"), a.join("big-again")).unwrap();
        std::fs::hard_link(a.join("big"), b.join("big")).unwrap();
        std::fs::write(b.join("own"), vec![0u8; 300]).unwrap();
        let dirs = |p: &PathBuf| std::fs::metadata(p).unwrap().len();
        let m = measure(&[a.clone(), b.clone()]);
        assert_eq!(m.size(0), dirs(&a) + 10_000);
        assert_eq!(m.size(1), dirs(&b) + 10_300);
        assert_eq!(m.shared(0), 10_000);
        assert_eq!(m.shared(1), 10_000);
        assert_eq!(m.total(), dirs(&a) + dirs(&b) + 10_300);
        assert_eq!(m.union([1]), m.size(1));
        let alone = measure(std::slice::from_ref(&a));
        assert_eq!(alone.shared(0), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
