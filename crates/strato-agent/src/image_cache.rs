//! The node's image cache: images this agent pulled, kept within
//! `--image-cache-bytes` by removing the least recently used ones no
//! container uses (`strato_core::image_cache::evictions`) after each pull.
//! Only images the agent pulled itself are ever removed: what was on the
//! machine before, or loaded by hand, is not the cache's. When each was
//! last used is kept in `WORK_DIR/image-cache.json`, so a restarted agent
//! remembers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use strato_core::image_cache::{CachedImage, evictions};
use strato_runtime::ContainerRuntime;

/// The default budget: 100 GB (training images often weigh 10 to 20 GB).
pub const DEFAULT_IMAGE_CACHE_BYTES: u64 = 100_000_000_000;
/// The most images the ledger remembers; the least recently used go past it.
pub const MAX_LEDGER_ENTRIES: usize = 10_000;

pub struct ImageCache {
    ledger: PathBuf,
    limit: u64,
    /// Image reference → when an attempt last used it (ms).
    used: Mutex<BTreeMap<String, i64>>,
    /// Images attempts hold between getting them and starting their
    /// container (which then holds them): never removed meanwhile.
    held: Mutex<HashMap<String, usize>>,
}

/// An attempt's hold on its image, released when dropped.
pub struct Held<'a> {
    cache: &'a ImageCache,
    image: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.cache.held.lock()
            && let Some(n) = held.get_mut(&self.image)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.image);
            }
        }
    }
}

impl ImageCache {
    /// The cache of `work_dir`, within `limit` bytes.
    pub fn open(work_dir: &std::path::Path, limit: u64) -> Self {
        let ledger = work_dir.join("image-cache.json");
        let used = std::fs::read(&ledger)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        ImageCache {
            ledger,
            limit,
            used: Mutex::new(used),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Holds `image` until the returned guard is dropped: no trim removes
    /// it meanwhile.
    pub fn hold(&self, image: &str) -> Held<'_> {
        if let Ok(mut held) = self.held.lock() {
            *held.entry(image.to_owned()).or_default() += 1;
        }
        Held {
            cache: self,
            image: image.to_owned(),
        }
    }

    fn is_held(&self, image: &str) -> bool {
        self.held.lock().is_ok_and(|h| h.contains_key(image))
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Records that the agent pulled `image` (it is now the cache's).
    pub fn pulled(&self, image: &str, now_ms: i64) {
        self.update(|used| {
            used.insert(image.to_owned(), now_ms);
        });
    }

    /// Records that an attempt uses `image`, if the cache holds it.
    pub fn used(&self, image: &str, now_ms: i64) {
        self.update(|used| {
            if let Some(at) = used.get_mut(image) {
                *at = now_ms;
            }
        });
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<String, i64>)) {
        let Ok(mut used) = self.used.lock() else {
            return;
        };
        change(&mut used);
        while used.len() > MAX_LEDGER_ENTRIES {
            let oldest = used
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(image, _)| image.clone());
            match oldest {
                Some(image) => used.remove(&image),
                None => break,
            };
        }
        if let Ok(text) = serde_json::to_vec(&*used)
            && let Err(e) = strato_runtime::write_private(&self.ledger, &text)
        {
            tracing::warn!(path = %self.ledger.display(), error = %e, "cannot keep the image cache's ledger");
        }
    }

    /// Removes what the budget cannot hold, never `keep` (the image an
    /// attempt is about to use) nor an image a container uses. Returns
    /// what it removed.
    pub async fn trim<R: ContainerRuntime>(&self, runtime: &R, keep: &str) -> Vec<String> {
        let ledger: Vec<(String, i64)> = match self.used.lock() {
            Ok(used) => used.iter().map(|(i, at)| (i.clone(), *at)).collect(),
            Err(_) => return Vec::new(),
        };
        let mut images = Vec::with_capacity(ledger.len());
        let mut gone = Vec::new();
        for (image, last_used_ms) in ledger {
            match runtime.image_bytes(&image).await {
                Ok(Some(bytes)) => images.push(CachedImage {
                    in_use: image == keep || self.is_held(&image),
                    image,
                    bytes,
                    last_used_ms,
                }),
                // Removed by someone else: forgotten.
                Ok(None) => gone.push(image),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot size the image cache");
                    return Vec::new();
                }
            }
        }
        let mut removed = Vec::new();
        for image in evictions(&images, self.limit) {
            match runtime.remove_image(&image).await {
                Ok(true) => {
                    tracing::info!(%image, limit = self.limit, "image removed from the cache");
                    removed.push(image.clone());
                    gone.push(image);
                }
                // A container uses it: kept until the next trim.
                Ok(false) => {}
                Err(e) => tracing::warn!(%image, error = %e, "cannot remove a cached image"),
            }
        }
        if !gone.is_empty() {
            self.update(|used| {
                for image in &gone {
                    used.remove(image);
                }
            });
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use strato_runtime::ContainerRuntime as _;
    use strato_runtime::fake::FakeRuntime;

    use super::*;

    #[tokio::test]
    async fn past_its_budget_the_cache_removes_the_least_recently_used_pull() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = FakeRuntime::new();
        // Three pulled images of a megabyte each, in a cache of two.
        let cache = ImageCache::open(dir.path(), 2 << 20);
        for (image, at) in [("a", 1), ("b", 2), ("c", 3)] {
            runtime
                .pull(image, None, Box::new(|_| {}))
                .await
                .expect("pull");
            cache.pulled(image, at);
        }
        cache.used("a", 4);
        {
            // Held by an attempt about to start its container: kept.
            let _held = cache.hold("b");
            let _also = cache.hold("a");
            assert!(cache.trim(&runtime, "c").await.is_empty());
        }
        assert_eq!(cache.trim(&runtime, "c").await, ["b"]);
        assert_eq!(runtime.image_bytes("b").await.expect("size"), None);
        assert!(runtime.image_bytes("a").await.expect("size").is_some());
        // The ledger survives a restart, without what was removed.
        let again = ImageCache::open(dir.path(), 1 << 20);
        assert_eq!(again.trim(&runtime, "c").await, ["a"]);
        // An image the agent did not pull is never the cache's.
        assert!(cache.trim(&runtime, "x").await.is_empty());
    }
}
