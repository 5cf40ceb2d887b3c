//! A node's image cache: the images its agent pulled, kept within a disk
//! budget by removing the least recently used ones that no container uses.
//! The decision is here; the agent keeps the ledger and removes.

/// One image the agent pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    pub image: String,
    /// Its size on disk, as the engine reports it.
    pub bytes: u64,
    /// When an attempt last used it (pulled or started with it).
    pub last_used_ms: i64,
    /// A container uses it (or an attempt is about to): never removed.
    pub in_use: bool,
}

/// The images to remove so that the cache holds at most `limit` bytes:
/// unused ones, least recently used first (ties by name, so the choice is
/// the same every time), and no more than needed. When the images in use
/// alone exceed the limit, every unused one goes.
pub fn evictions(images: &[CachedImage], limit: u64) -> Vec<String> {
    let mut total: u64 = images.iter().map(|i| i.bytes).sum();
    if total <= limit {
        return Vec::new();
    }
    let mut candidates: Vec<&CachedImage> = images.iter().filter(|i| !i.in_use).collect();
    candidates.sort_by(|a, b| {
        a.last_used_ms
            .cmp(&b.last_used_ms)
            .then_with(|| a.image.cmp(&b.image))
    });
    let mut out = Vec::new();
    for image in candidates {
        if total <= limit {
            break;
        }
        total = total.saturating_sub(image.bytes);
        out.push(image.image.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn image(name: &str, bytes: u64, last_used_ms: i64, in_use: bool) -> CachedImage {
        CachedImage {
            image: name.into(),
            bytes,
            last_used_ms,
            in_use,
        }
    }

    #[test]
    fn the_least_recently_used_unused_images_go_first_and_no_more() {
        let images = [
            image("old", 40, 1, false),
            image("busy", 50, 0, true),
            image("mid", 30, 5, false),
            image("new", 20, 9, false),
        ];
        assert_eq!(evictions(&images, 140), Vec::<String>::new(), "within");
        assert_eq!(evictions(&images, 100), ["old"]);
        assert_eq!(evictions(&images, 70), ["old", "mid"]);
        assert_eq!(evictions(&images, 10), ["old", "mid", "new"], "busy stays");
    }

    proptest! {
        #[test]
        fn evictions_respect_use_order_and_the_limit(
            entries in prop::collection::vec((1u64..1_000, 0i64..100, any::<bool>()), 0..12),
            limit in 0u64..6_000,
        ) {
            let images: Vec<CachedImage> = entries
                .iter()
                .enumerate()
                .map(|(i, (bytes, used, busy))| image(&format!("i{i}"), *bytes, *used, *busy))
                .collect();
            let gone = evictions(&images, limit);
            let kept: Vec<&CachedImage> = images.iter().filter(|i| !gone.contains(&i.image)).collect();
            // Never an image in use.
            prop_assert!(images.iter().filter(|i| i.in_use).all(|i| !gone.contains(&i.image)));
            // Within the limit, or nothing unused is left to remove.
            let kept_bytes: u64 = kept.iter().map(|i| i.bytes).sum();
            prop_assert!(kept_bytes <= limit || kept.iter().all(|i| i.in_use));
            // Every removed image was used no later than every kept unused one.
            for g in images.iter().filter(|i| gone.contains(&i.image)) {
                for k in kept.iter().filter(|i| !i.in_use) {
                    prop_assert!(g.last_used_ms <= k.last_used_ms);
                }
            }
            // No more than needed: putting back the last one removed breaks the limit.
            if let Some(last) = gone.last() {
                let back = images.iter().find(|i| &i.image == last).map_or(0, |i| i.bytes);
                prop_assert!(kept_bytes + back > limit);
            }
        }
    }
}
