//! A scoring run's figures as a Prometheus textfile, for node_exporter's textfile collector:
//! what a cron job leaves behind for the dashboards. Written under a temporary name and renamed,
//! so the collector never reads half a file.

use std::path::Path;

use crate::metrics::text::{Kind, Page};

/// How a run ended, as the textfile reports it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Rows written (0 for a failed run).
    pub rows: u64,
    /// Wall time, in seconds.
    pub seconds: f64,
    /// Whether it failed.
    pub failed: bool,
    /// When it ended, in seconds since the Unix epoch.
    pub ended: f64,
}

/// The textfile's content for a run of `model`.
pub fn render(model: &str, outcome: &Outcome) -> String {
    let labels = [("model", model)];
    let mut page = Page::default();
    let rate = if outcome.failed || outcome.seconds <= 0.0 {
        0.0
    } else {
        outcome.rows as f64 / outcome.seconds
    };
    let figures: [(&str, Kind, &str, f64); 5] = [
        (
            "predictd_batch_rows",
            Kind::Gauge,
            "Rows the last run wrote.",
            outcome.rows as f64,
        ),
        (
            "predictd_batch_rows_per_second",
            Kind::Gauge,
            "Rows per second of the last run.",
            rate,
        ),
        (
            "predictd_batch_duration_seconds",
            Kind::Gauge,
            "Wall time of the last run, model loading excluded.",
            outcome.seconds,
        ),
        (
            "predictd_batch_errors",
            Kind::Gauge,
            "1 if the last run failed, else 0.",
            f64::from(u8::from(outcome.failed)),
        ),
        (
            "predictd_batch_last_run_timestamp_seconds",
            Kind::Gauge,
            "When the last run ended.",
            outcome.ended,
        ),
    ];
    for (name, kind, help, value) in figures {
        page.family(name, kind, help);
        page.sample(name, &labels, value);
    }
    page.finish()
}

/// Writes the textfile at `path`.
pub fn write(path: &Path, model: &str, outcome: &Outcome) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.partial"));
    std::fs::write(&partial, render(model, outcome))?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_becomes_gauges_labelled_by_model() {
        let text = render(
            "wine",
            &Outcome {
                rows: 1000,
                seconds: 2.0,
                failed: false,
                ended: 1.5e9,
            },
        );
        assert!(
            text.contains("predictd_batch_rows{model=\"wine\"} 1000\n"),
            "{text}"
        );
        assert!(
            text.contains("predictd_batch_rows_per_second{model=\"wine\"} 500\n"),
            "{text}"
        );
        assert!(
            text.contains("predictd_batch_errors{model=\"wine\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE predictd_batch_duration_seconds gauge\n"),
            "{text}"
        );
    }
}
