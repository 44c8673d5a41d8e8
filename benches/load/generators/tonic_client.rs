//! The generated tonic client, a tokio task per in-flight request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use predictd::proto::predictd::v1 as pb;

use pb::prediction_service_client::PredictionServiceClient;

use super::{Expect, Tally, gather};
use crate::servers::connect;
use crate::{CHECK_EVERY, PER_CONNECTION, WARMUP};

pub(crate) async fn tonic_load(
    addr: SocketAddr,
    request: Arc<pb::PredictRequest>,
    expect: Arc<Expect>,
    concurrency: usize,
    seconds: f64,
) -> Tally {
    let connections = concurrency.div_ceil(PER_CONNECTION);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(addr).await);
    }
    let t0 = Instant::now() + WARMUP;
    let t1 = t0 + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let mut client = PredictionServiceClient::new(channels[i % connections].clone());
            let request = Arc::clone(&request);
            let expect = Arc::clone(&expect);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut replies = 0u64;
                loop {
                    let begin = Instant::now();
                    if begin >= t1 {
                        break;
                    }
                    let result = client.predict((*request).clone()).await;
                    let end = Instant::now();
                    let problem = match result {
                        Ok(reply) => {
                            replies += 1;
                            let checked = if replies % CHECK_EVERY == 1 {
                                expect.check(reply.get_ref())
                            } else {
                                Ok(())
                            };
                            if checked.is_ok() && begin >= t0 && end <= t1 {
                                tally.latencies_us.push((end - begin).as_secs_f64() * 1e6);
                            }
                            checked.err()
                        }
                        Err(status) => Some(format!("{:?}: {}", status.code(), status.message())),
                    };
                    if let Some(problem) = problem {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(problem);
                    }
                }
                tally
            })
        })
        .collect();
    gather(tasks).await
}
