//! The load generators: raw HTTP/2 (`rust-h2`), the generated tonic client, and h2load; the
//! runtime the Rust ones run on, and what a good reply looks like.

mod h2load;
mod rust_h2;
mod tonic_client;

use std::collections::BTreeMap;

use predictd::proto::predictd::v1 as pb;
use prost::Message;

use crate::CLIENT_THREADS;
use crate::cpu::threads_cpu_ns;

pub(crate) use h2load::{h2load_load, h2load_version};
pub(crate) use rust_h2::rust_load;
pub(crate) use tonic_client::tonic_load;

/// Where the Rust load generators run: a fresh runtime per run on threads named `load-rt`, so
/// their CPU can be told from the servers'. One thread: a current-thread runtime (no
/// cross-thread wake-ups); more: a multi-thread runtime with that many workers.
pub(crate) struct ClientRuntime {
    pub(crate) threads: usize,
}

impl ClientRuntime {
    pub(crate) fn block_on<F: Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        self.measured(future).0
    }

    /// Also returns the CPU time of the client threads, in ns, read before they exit.
    pub(crate) fn measured<F: Future + Send>(&self, future: F) -> (F::Output, u64)
    where
        F::Output: Send,
    {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(CLIENT_THREADS.to_string())
                .spawn_scoped(s, || {
                    let mut builder = if self.threads == 1 {
                        tokio::runtime::Builder::new_current_thread()
                    } else {
                        let mut b = tokio::runtime::Builder::new_multi_thread();
                        b.worker_threads(self.threads).thread_name(CLIENT_THREADS);
                        b
                    };
                    let runtime = builder.enable_all().build().unwrap();
                    let output = runtime.block_on(future);
                    let ns = threads_cpu_ns(|_, comm| comm.starts_with(CLIENT_THREADS));
                    // Dropping the runtime closes the run's connections.
                    drop(runtime);
                    (output, ns)
                })
                .unwrap()
                .join()
                .unwrap()
        })
    }
}

/// Size and shapes of a good reply, taken from one real reply.
pub(crate) struct Expect {
    encoded_len: usize,
    outputs: BTreeMap<String, (i32, Vec<i64>, usize)>,
}

impl Expect {
    pub(crate) fn from(reply: &pb::PredictResponse) -> Expect {
        Expect {
            encoded_len: reply.encoded_len(),
            outputs: reply
                .outputs
                .iter()
                .map(|(name, t)| (name.clone(), (t.dtype, t.shape.clone(), t.raw.len())))
                .collect(),
        }
    }

    fn check(&self, reply: &pb::PredictResponse) -> Result<(), String> {
        let outputs: BTreeMap<String, (i32, Vec<i64>, usize)> = reply
            .outputs
            .iter()
            .map(|(name, t)| (name.clone(), (t.dtype, t.shape.clone(), t.raw.len())))
            .collect();
        if outputs != self.outputs || reply.encoded_len() != self.encoded_len {
            return Err(format!(
                "bad reply: outputs (dtype, shape, raw bytes) {outputs:?}, {} bytes; expected \
                 {:?}, {} bytes",
                reply.encoded_len(),
                self.outputs,
                self.encoded_len
            ));
        }
        Ok(())
    }

    /// The gRPC frame of a good reply: 5-byte prefix + message.
    fn frame_len(&self) -> usize {
        5 + self.encoded_len
    }
}

/// What one tonic client task saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) latencies_us: Vec<f64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await.unwrap();
        all.latencies_us.extend(tally.latencies_us);
        all.errors += tally.errors;
        if all.first_error.is_none() {
            all.first_error = tally.first_error;
        }
    }
    all
}
