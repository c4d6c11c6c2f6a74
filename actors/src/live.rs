//! Values a reload swaps while the bot runs: readers take the one in force at the moment
//! they look (a turn, a search), never a half-updated mix.

use std::sync::Arc;

use arc_swap::ArcSwap;

/// A shared, swappable value. Clones share it.
pub struct Live<T>(Arc<ArcSwap<T>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(value)))
    }

    /// The value in force now.
    pub fn get(&self) -> Arc<T> {
        self.0.load_full()
    }

    pub fn set(&self, value: T) {
        self.0.store(Arc::new(value));
    }
}

impl<T> From<T> for Live<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}
