//! Feature `alloc-count` (benchmarks only): a global allocator that counts, and its counts as
//! metrics, so that `bench/perf` can report allocations per delivered message.
//!
//! `wxpush_allocations_total` counts allocations (a reallocation counts as one more) and
//! `wxpush_allocated_bytes_total` the bytes they asked for, since the process started.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Reads the allocator's counts at every scrape.
#[derive(Debug)]
struct Allocations;

impl Collector for Allocations {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = GLOBAL.stats();
        let count = (stats.allocations + stats.reallocations) as u64;
        let bytes = stats.bytes_allocated as u64;
        for (name, help, value) in [
            (
                "allocations",
                "Heap allocations since start (feature alloc-count).",
                count,
            ),
            (
                "allocated_bytes",
                "Heap bytes allocated since start (feature alloc-count).",
                bytes,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Registers the allocation counters.
pub(super) fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(Allocations));
}
