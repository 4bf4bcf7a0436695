//! `nook tag`, and the image names other verbs show for containers.

use anyhow::Result;

use crate::cli::TagArgs;
use crate::storage::container::Container;
use crate::storage::image::ImageStore;

pub fn tag(args: &TagArgs) -> Result<i32> {
    let store = ImageStore::open()?;
    let image = store.get(&args.image)?;
    for name in &args.names {
        store.tag(&image, name)?;
    }
    Ok(0)
}

/// What `ps` shows as each container's image: the name it was run with while that name still
/// names the image, else another of the image's names, else the directory (a directory run, or
/// an image removed since).
pub(super) fn image_labels(containers: &[Container]) -> Vec<String> {
    let images = ImageStore::open_read()
        .and_then(|store| store.list())
        .unwrap_or_default();
    containers
        .iter()
        .map(|c| {
            let names: Vec<&str> = images
                .iter()
                .filter(|i| i.rootfs() == c.meta.image)
                .map(|i| i.meta.name.as_str())
                .collect();
            match &c.meta.image_name {
                Some(name) if names.contains(&name.as_str()) => name.clone(),
                _ => names
                    .first()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| c.meta.image.display().to_string()),
            }
        })
        .collect()
}
