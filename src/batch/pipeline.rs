//! Read → score → write on threads, in input order, stoppable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arrow::array::RecordBatch;
use crossbeam_channel::{Receiver, Sender, bounded};

use super::sink::Sink;
use super::{BatchError, Job, Summary, source};

/// A batch read, with where it came from.
struct Read {
    seq: u64,
    path: PathBuf,
    first_row: u64,
    batch: RecordBatch,
}

type Scored = (u64, Result<RecordBatch, BatchError>);

/// Runs `job` to completion: the output exists under its final name only if every row was
/// scored and written. `stop` (set by a signal handler) ends the run early with
/// [`BatchError::Interrupted`]; `on_rows` hears the running count of rows written.
pub fn run(
    job: Job,
    stop: &AtomicBool,
    on_rows: &(dyn Fn(u64) + Sync),
) -> Result<Summary, BatchError> {
    let started = Instant::now();
    let schema = job.binding.output_schema().clone();
    let sink = Sink::create(&job.output, &schema)?;
    let in_flight = job.threads;
    let (read_tx, read_rx) = bounded::<Result<Read, (u64, BatchError)>>(in_flight);
    let (done_tx, done_rx) = bounded::<Scored>(in_flight);
    let job = &job;
    let (sink, rows, _batches) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_all(job, read_tx, stop));
        for _ in 0..job.threads {
            let read_rx = read_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || score_all(job, read_rx, done_tx));
        }
        drop((read_rx, done_tx));
        let written = write_in_order(sink, done_rx, stop, on_rows)?;
        // The output is complete only if the reader got to the end of every input and each
        // batch it read was written: a stop, or a scorer that died, leaves a shortfall.
        match reader.join() {
            Ok(Some(read)) if read == written.2 => Ok(written),
            _ => Err(BatchError::Interrupted),
        }
    })?;
    sink.finish()?;
    Ok(Summary {
        rows,
        seconds: started.elapsed().as_secs_f64(),
        output: job.output.clone(),
    })
}

/// Sends every batch of every unit, in order. Returns how many batches it sent if it reached
/// the end of the input; `None` if it stopped early.
fn read_all(
    job: &Job,
    out: Sender<Result<Read, (u64, BatchError)>>,
    stop: &AtomicBool,
) -> Option<u64> {
    let mut seq = 0;
    for unit in &job.units {
        let batches = match source::read(unit, &job.schema, &job.projection, job.batch_rows) {
            Ok(batches) => batches,
            Err(e) => {
                let _ = out.send(Err((seq, e)));
                return None;
            }
        };
        let mut first_row = unit.first_row;
        for batch in batches {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let item = match batch {
                Ok(batch) if batch.num_rows() == 0 => continue,
                Ok(batch) => {
                    let rows = batch.num_rows() as u64;
                    let read = Read {
                        seq,
                        path: unit.path.clone(),
                        first_row,
                        batch,
                    };
                    first_row += rows;
                    Ok(read)
                }
                Err(e) => Err((seq, with_row(e, first_row))),
            };
            let failed = item.is_err();
            // A closed channel means the writer has stopped; so do we.
            if out.send(item).is_err() || failed {
                return None;
            }
            seq += 1;
        }
    }
    Some(seq)
}

/// A read error inside a file, placed after the rows read so far.
fn with_row(e: BatchError, row: u64) -> BatchError {
    match e {
        BatchError::Read {
            path,
            row: None,
            reason,
        } => BatchError::Read {
            path,
            row: Some(row),
            reason,
        },
        other => other,
    }
}

fn score_all(job: &Job, input: Receiver<Result<Read, (u64, BatchError)>>, output: Sender<Scored>) {
    for item in input {
        let scored = match item {
            Ok(read) => {
                let rows = read.batch.num_rows();
                let result = job
                    .binding
                    .score(&job.model, &read.batch)
                    .map_err(|e| BatchError::score(&read.path, read.first_row, rows, e));
                (read.seq, result)
            }
            Err((seq, e)) => (seq, Err(e)),
        };
        if output.send(scored).is_err() {
            return;
        }
    }
}

/// Writes scored batches in sequence order until the scorers are done; the first error, in
/// sequence order, ends the run. Returns the sink (not yet finished), the rows and the batches
/// written. Returning drops `input`, which stops the scorers and then the reader.
fn write_in_order(
    mut sink: Sink,
    input: Receiver<Scored>,
    stop: &AtomicBool,
    on_rows: &(dyn Fn(u64) + Sync),
) -> Result<(Sink, u64, u64), BatchError> {
    let mut waiting: BTreeMap<u64, Result<RecordBatch, BatchError>> = BTreeMap::new();
    let mut next = 0;
    let mut rows = 0;
    for (seq, result) in input {
        waiting.insert(seq, result);
        while let Some(result) = waiting.remove(&next) {
            let batch = result?;
            sink.write(&batch)?;
            rows += batch.num_rows() as u64;
            next += 1;
            on_rows(rows);
        }
        if stop.load(Ordering::Relaxed) {
            return Err(BatchError::Interrupted);
        }
    }
    if stop.load(Ordering::Relaxed) {
        return Err(BatchError::Interrupted);
    }
    // Anything still waiting sits behind a batch that never came: report the first error.
    if let Some((_, Err(e))) = waiting.into_iter().find(|(_, r)| r.is_err()) {
        return Err(e);
    }
    Ok((sink, rows, next))
}
