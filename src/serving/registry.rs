//! What the server serves right now: an immutable catalog of model schedulers, swapped whole
//! when it changes (models finish loading, later a reload), so readers never wait on a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::engine::repository::{Catalog, ModelEntry, Slot};
use crate::serving::scheduler::Scheduler;

/// The current catalog.
#[derive(Debug)]
pub struct Registry {
    current: ArcSwap<Catalog<Scheduler>>,
    /// Whether the server takes traffic: false while models load and once draining begins.
    serving: AtomicBool,
}

impl Registry {
    /// A registry serving `catalog`.
    pub fn new(catalog: Catalog<Scheduler>) -> Registry {
        Registry {
            current: ArcSwap::from_pointee(catalog),
            serving: AtomicBool::new(false),
        }
    }

    /// Whether the server takes traffic, as readiness probes of every protocol report it.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Marks the server ready for traffic, or not.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// The catalog as it is now; later changes do not affect it.
    pub fn snapshot(&self) -> Arc<Catalog<Scheduler>> {
        self.current.load_full()
    }

    /// Stops serving every model: the catalog is emptied, and the worker threads of the models
    /// it held are returned, to be joined. They end once the last request holding the old
    /// catalog is done with it.
    pub fn close(&self) -> Vec<std::thread::JoinHandle<()>> {
        let old = self.current.swap(Arc::new(Catalog::default()));
        old.models
            .values()
            .flat_map(|entry| entry.versions.values())
            .filter_map(|slot| match slot {
                Slot::Ready(scheduler) => Some(scheduler.take_threads()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Replaces the catalog. Requests already holding the old one finish with it.
    pub fn publish(&self, catalog: Catalog<Scheduler>) {
        self.current.store(Arc::new(catalog));
    }

    /// Replaces one model's entry (`None` removes it), leaving the others as they are.
    /// Requests already holding the old catalog finish with it.
    pub fn replace(&self, name: &str, entry: Option<ModelEntry<Scheduler>>) {
        self.current.rcu(|catalog| {
            let mut next = Catalog::clone(catalog);
            match entry.clone() {
                Some(entry) => next.models.insert(name.to_string(), entry),
                None => next.models.remove(name),
            };
            next
        });
    }
}
