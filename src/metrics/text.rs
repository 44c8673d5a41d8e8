//! The Prometheus text exposition format (version 0.0.4), written by hand: families with their
//! HELP and TYPE, samples with escaped label values, histograms as cumulative buckets.

use std::fmt::Write as _;

use crate::serving::histogram::HistogramSnapshot;

/// A metrics page being written.
#[derive(Debug, Default)]
pub struct Page {
    text: String,
}

/// A metric's type.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, a count and a sum.
    Histogram,
}

impl Page {
    /// Starts the family `name`; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// A histogram's samples: `_bucket` per bound (`le`), `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (bound, count) in &h.buckets {
            let _ = write!(self.text, "{name}_bucket");
            write_labels(&mut self.text, labels, Some(&number(*bound)));
            let _ = writeln!(self.text, " {count}");
        }
        let _ = write!(self.text, "{name}_sum");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", number(h.sum));
        let _ = write!(self.text, "{name}_count");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", h.count);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.text
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
    for (i, (key, value)) in all.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{key}=\"{value}\"");
    }
    out.push('}');
}

/// A value as the format spells it: integers without a fraction, +Inf for infinity.
fn number(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if value.is_nan() {
        "NaN".to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_follow_the_format() {
        let mut page = Page::default();
        page.family("x_total", Kind::Counter, "Things.");
        page.sample("x_total", &[("model", "a\"b"), ("version", "1")], 3.0);
        page.family("d_seconds", Kind::Histogram, "Durations.");
        let h = HistogramSnapshot {
            buckets: vec![(0.5, 1), (f64::INFINITY, 2)],
            count: 2,
            sum: 1.25,
        };
        page.histogram("d_seconds", &[("model", "m")], &h);
        assert_eq!(
            page.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{model=\"a\\\"b\",version=\"1\"} 3\n\
             # HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{model=\"m\",le=\"0.5\"} 1\n\
             d_seconds_bucket{model=\"m\",le=\"+Inf\"} 2\n\
             d_seconds_sum{model=\"m\"} 1.25\nd_seconds_count{model=\"m\"} 2\n"
        );
    }
}
