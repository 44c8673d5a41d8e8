//! What the server serves right now: an immutable catalog of model schedulers, swapped whole
//! when it changes (models finish loading, later a reload), so readers never wait on a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::model::Model;
use crate::repository::Catalog;
use crate::scheduler::{Scheduler, SchedulerConfig};

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

    /// Replaces the catalog. Requests already holding the old one finish with it.
    pub fn publish(&self, catalog: Catalog<Scheduler>) {
        self.current.store(Arc::new(catalog));
    }
}

/// Starts a scheduler for every loaded model, with its config's settings over `defaults`.
pub fn start_schedulers(
    models: &Catalog<Arc<Model>>,
    defaults: SchedulerConfig,
) -> Catalog<Scheduler> {
    models.try_map(|name, version, config, model| {
        let settings = SchedulerConfig {
            workers: config.workers.unwrap_or(defaults.workers),
            queue_capacity: config.queue_capacity.unwrap_or(defaults.queue_capacity),
            max_batch_size: config.max_batch_size.unwrap_or(defaults.max_batch_size),
            max_queue_delay: config
                .max_queue_delay_us
                .map_or(defaults.max_queue_delay, std::time::Duration::from_micros),
        };
        Scheduler::start(Arc::clone(model), settings).map_err(|e| {
            tracing::error!(model = name, version, error = %e, "cannot start worker threads");
            format!("cannot start worker threads: {e}")
        })
    })
}
