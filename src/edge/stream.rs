//! What every bidirectional inference stream shares: each message takes a concurrency permit of
//! its own (so one stream cannot starve unary callers), a bounded window of messages runs at
//! once, replies leave in request order, and the stream ends at the client's deadline with
//! `DEADLINE_EXCEEDED`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::OwnedSemaphorePermit;
use tonic::{Request, Status, Streaming};

use crate::edge::layers::{Admission, Deadlines, deadline_exceeded, overloaded};
use crate::traces::Sampled;

/// How many messages of one stream may be in flight at once. The window lets a stream keep the
/// model's workers busy instead of waiting on each round trip.
const STREAM_WINDOW: usize = 64;

/// A stream of replies, as tonic wants it.
pub type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The deadlines the deadline layer attached to a call (none when called without the stack).
pub fn deadlines<T>(request: &Request<T>) -> Deadlines {
    request
        .extensions()
        .get::<Deadlines>()
        .copied()
        .unwrap_or(Deadlines {
            client: None,
            request_timeout: Duration::MAX,
        })
}

/// The span of a traced call, which its inference work goes under (none when not sampled).
pub fn trace<T>(request: &Request<T>) -> Option<Sampled> {
    request.extensions().get::<Sampled>().cloned()
}

/// Answers every message of `request`'s stream with `answer(message, deadline)`, or with
/// `refuse(message, status)` when no concurrency permit is free. A message that cannot be read
/// ends the stream: the transport is broken. The stream holds one of the server's stream slots
/// while it is open, and is refused RESOURCE_EXHAUSTED when none is free.
pub fn answer_in_order<M, R, F, Fut>(
    request: Request<Streaming<M>>,
    admission: Admission,
    answer: F,
    refuse: fn(M, Status) -> R,
) -> Result<ReplyStream<R>, Status>
where
    M: Send + 'static,
    R: Send + 'static,
    F: Fn(M, Instant) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send,
{
    let slot = admission.try_open_stream()?;
    let deadlines = deadlines(&request);
    let replies = request
        .into_inner()
        .map(move |message| {
            let admission = admission.clone();
            let answer = answer.clone();
            async move {
                let message = message?;
                // Each message answers by the stream's deadline or --request-timeout.
                let deadline = deadlines.for_work_starting(Instant::now());
                Ok(match admission.try_admit() {
                    Some(_permit) => answer(message, deadline).await,
                    None => refuse(message, overloaded().into()),
                })
            }
        })
        .buffered(STREAM_WINDOW);
    let replies: ReplyStream<R> = match deadlines.client {
        None => Box::pin(replies),
        Some(at) => Box::pin(
            replies
                .take_until(tokio::time::sleep_until(at.into()))
                .chain(
                    stream::once(async move { Instant::now() >= at }).filter_map(
                        move |expired| async move {
                            expired.then(|| Err(deadline_exceeded(&deadlines).into()))
                        },
                    ),
                ),
        ),
    };
    Ok(Box::pin(Holding {
        replies,
        _slot: slot,
    }))
}

/// A stream of replies that holds its stream slot until it is dropped.
struct Holding<R> {
    replies: ReplyStream<R>,
    _slot: OwnedSemaphorePermit,
}

impl<R> Stream for Holding<R> {
    type Item = Result<R, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.replies.as_mut().poll_next(cx)
    }
}
