//! The demo's live progress: an `indicatif` bar redrawn ten times a second when stderr is a
//! terminal, else one plain line a second (no escape codes, so logs and CI output stay clean).
//! Logs written while the bar is shown go through [`LogWriter`], which lifts the bar first.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

use crate::metrics::{CircuitState, Metrics, Outcome, OutcomeLabels, QueueLabels, QueueState};

/// The bar being shown, if any, so that log lines can be printed above it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A `tracing_subscriber` writer for stderr that suspends the progress bar while it writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let bar = ACTIVE.lock().clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Counters at one moment, relative to the start of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Messages answered 202 so far (by the demo's own count).
    pub sent: usize,
    /// `wxpush_messages_accepted_total` since the start.
    pub accepted: u64,
    /// Delivered since the start.
    pub delivered: u64,
    /// Failed, expired or dead-lettered since the start.
    pub not_delivered: u64,
    /// Messages waiting for a retry time (`wxpush_queue_messages{state="delayed"}`).
    pub retrying: i64,
    /// The breaker's state.
    pub breaker: &'static str,
}

/// Reads [`Counts`] from the pusher's metrics.
#[derive(Debug, Clone)]
pub struct Probe {
    metrics: Arc<Metrics>,
    sent: Arc<AtomicUsize>,
    accepted0: u64,
    delivered0: u64,
    other0: u64,
    /// `GET /metrics` refreshes the queue gauges (the pusher computes them on scrape).
    scrape: Option<(reqwest::Client, String)>,
}

fn outcome(m: &Metrics, outcome: Outcome) -> u64 {
    m.completed.get_or_create(&OutcomeLabels { outcome }).get()
}

fn ended_otherwise(m: &Metrics) -> u64 {
    outcome(m, Outcome::failed) + outcome(m, Outcome::expired) + outcome(m, Outcome::dead_lettered)
}

impl Probe {
    /// A probe whose counts start at zero now.
    pub fn new(metrics: Arc<Metrics>, sent: Arc<AtomicUsize>) -> Self {
        Self {
            accepted0: metrics.accepted.get(),
            delivered0: outcome(&metrics, Outcome::delivered),
            other0: ended_otherwise(&metrics),
            metrics,
            sent,
            scrape: None,
        }
    }

    /// Scrapes `url` (the pusher's `/metrics`) before each display, so that the queue gauges
    /// (`retrying`) are current.
    pub fn with_scrape(mut self, client: reqwest::Client, url: String) -> Self {
        self.scrape = Some((client, url));
        self
    }

    async fn refresh(&self) {
        if let Some((client, url)) = &self.scrape {
            let _ = client
                .get(url)
                .timeout(Duration::from_millis(500))
                .send()
                .await;
        }
    }

    /// The counts now.
    pub fn read(&self) -> Counts {
        let m = &self.metrics;
        let breaker = match m.circuit_state.get() {
            x if x == CircuitState::Open as i64 => "open",
            x if x == CircuitState::HalfOpen as i64 => "half-open",
            _ => "closed",
        };
        Counts {
            sent: self.sent.load(Ordering::Relaxed),
            accepted: m.accepted.get() - self.accepted0,
            delivered: outcome(m, Outcome::delivered) - self.delivered0,
            not_delivered: ended_otherwise(m) - self.other0,
            retrying: m
                .queue_messages
                .get_or_create(&QueueLabels {
                    state: QueueState::delayed,
                })
                .get(),
            breaker,
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// An `indicatif` bar (stderr is a terminal).
    Bar,
    /// A plain line every second.
    Lines,
    /// Nothing.
    Quiet,
}

impl Style {
    /// `Bar` when stderr is a terminal, else `Lines`.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Lines
        }
    }
}

fn line(c: &Counts, total: usize, rate: f64) -> String {
    let mut s = format!(
        "sent {}/{total} · accepted {} · delivered {} · queued {} · retrying {} · {:.0} msg/s",
        c.sent,
        c.accepted,
        c.delivered,
        c.accepted.saturating_sub(c.delivered + c.not_delivered),
        c.retrying,
        rate
    );
    if c.not_delivered > 0 {
        s.push_str(&format!(" · not delivered {}", c.not_delivered));
    }
    if c.breaker != "closed" {
        s.push_str(&format!(" · breaker {}", c.breaker));
    }
    s
}

/// A running progress display; [`Progress::finish`] stops it.
#[derive(Debug)]
pub struct Progress {
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts showing progress towards `total` messages.
    pub fn start(style: Style, probe: Probe, total: usize) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        if style == Style::Quiet {
            return Self { stop, task: None };
        }
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let bar = (style == Style::Bar).then(|| {
                let bar = ProgressBar::with_draw_target(
                    Some(total as u64),
                    ProgressDrawTarget::stderr_with_hz(10),
                );
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner:.green} {elapsed:>4} [{bar:24.cyan/blue}] {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.enable_steady_tick(Duration::from_millis(100));
                *ACTIVE.lock() = Some(bar.clone());
                bar
            });
            let tick = if bar.is_some() {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            };
            // The rate over the last second or so, from a short history of samples.
            let mut history: std::collections::VecDeque<(Instant, u64)> =
                std::collections::VecDeque::from([(start, 0)]);
            loop {
                let stopped = tokio::select! {
                    () = token.cancelled() => true,
                    () = tokio::time::sleep(tick) => false,
                };
                probe.refresh().await;
                let now = Instant::now();
                let c = probe.read();
                history.push_back((now, c.delivered));
                while history.len() > 2
                    && history
                        .front()
                        .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(1))
                {
                    history.pop_front();
                }
                let rate = match history.front() {
                    Some((t, d)) if now.duration_since(*t) > Duration::from_millis(100) => {
                        (c.delivered - d) as f64 / now.duration_since(*t).as_secs_f64()
                    }
                    _ => 0.0,
                };
                match &bar {
                    Some(bar) => {
                        bar.set_position(c.delivered);
                        bar.set_message(line(&c, total, rate));
                    }
                    None if !stopped => {
                        eprintln!(
                            "[{:>5.1}s] {}",
                            start.elapsed().as_secs_f64(),
                            line(&c, total, rate)
                        );
                    }
                    None => {}
                }
                if stopped {
                    break;
                }
            }
            if let Some(bar) = bar {
                ACTIVE.lock().take();
                bar.finish();
            }
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops the display (the bar stays on screen with its last counts).
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
