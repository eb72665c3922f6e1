use super::*;

/// A limiter with the default settings under the ceiling `max`.
fn limiter(max: u32) -> AdaptiveLimit {
    AdaptiveLimit::new(AdaptiveSettings {
        max_limit: max,
        ..AdaptiveSettings::default()
    })
}

/// Feeds `windows` windows of `latency` (with `failed` of every 16 samples failing), each
/// with the limit fully used, and returns the limit after each.
fn run(
    l: &mut AdaptiveLimit,
    now: &mut Instant,
    windows: usize,
    latency: Duration,
    failed: u32,
) -> Vec<u32> {
    let mut out = Vec::new();
    for _ in 0..windows {
        for i in 0..16 {
            let sample = if i < failed {
                Sample::Failed
            } else {
                Sample::Ok
            };
            l.record(*now, latency, sample, l.limit(), Duration::ZERO);
            *now += Duration::from_millis(4);
        }
        out.push(l.limit());
    }
    out
}

#[test]
fn the_limit_rises_and_falls_with_latency() {
    let mut l = limiter(256);
    let mut now = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(l.limit(), 64);
    // (phase, windows, latency, failed per 16, what the limit must do)
    let table: [(&str, usize, Duration, u32, &str); 6] = [
        ("latency at its floor: grow", 12, ms(2), 0, "up"),
        ("latency doubles: back off", 3, ms(4), 0, "down"),
        (
            "latency 1.3× the floor, not following the limit: probe up",
            3,
            Duration::from_micros(2600),
            0,
            "up",
        ),
        ("back at the floor: grow again", 6, ms(2), 0, "up"),
        ("a quarter of answers fail: cut", 3, ms(2), 8, "down"),
        ("healthy again: grow", 6, ms(2), 0, "up"),
    ];
    for (phase, windows, latency, failed, expect) in table {
        let before = l.limit();
        let limits = run(&mut l, &mut now, windows, latency, failed);
        let after = l.limit();
        match expect {
            "up" => assert!(after > before, "{phase}: {before} → {limits:?}"),
            "down" => assert!(after < before, "{phase}: {before} → {limits:?}"),
            _ => assert_eq!(after, before, "{phase}: {before} → {limits:?}"),
        }
    }
    assert_eq!(l.floor(), Some(ms(2)));
}

/// Grows a limit to `max` at a floor of 26 ms, then cuts it with one window at 45 ms (a
/// passing slowdown; slow start is over).
fn cut_once(max: u32, now: &mut Instant) -> AdaptiveLimit {
    let mut l = limiter(max);
    run(&mut l, now, 8, Duration::from_millis(26), 0);
    assert_eq!(l.limit(), max);
    run(&mut l, now, 1, Duration::from_millis(45), 0);
    assert!(l.limit() < max * 3 / 4, "cut: {}", l.limit());
    l
}

/// A slowdown that is not a queue of ours (the stand-in WeChat sharing the cores with a
/// pusher that accepts a burst): after a cut, the latency stays 1.3 × the floor whatever the
/// limit. The band's probes find that more requests cost nothing and bring the limit back
/// to the ceiling; before them it held at the cut for as long as the slowdown lasted.
#[test]
fn a_limit_cut_by_a_passing_slowdown_climbs_back_in_the_band() {
    let mut now = Instant::now();
    let mut l = cut_once(1024, &mut now);
    let limits = run(&mut l, &mut now, 12, Duration::from_millis(34), 0);
    assert_eq!(limits.last(), Some(&1024), "{limits:?}");
    // Each probe waited for the answers to requests sent after it: at most one growth a
    // window, by an eighth.
    for pair in limits.windows(2) {
        assert!(
            f64::from(pair[1]) <= f64::from(pair[0]) * 1.13 + 1.0,
            "{limits:?}"
        );
    }
}

/// In the band, a latency that follows the limit (an upstream that queues what it cannot
/// serve) undoes the probe's growth, and the next probe waits [`PROBE_REST`] band windows.
#[test]
fn a_probe_the_latency_follows_is_undone() {
    let mut now = Instant::now();
    let mut l = cut_once(1024, &mut now);
    let settled = l.limit();
    let mut limits = Vec::new();
    for _ in 0..(PROBE_REST as usize + 6) {
        // 1.3 × the floor at the settled limit, and in proportion above it.
        let scale = f64::from(l.limit()) / f64::from(settled);
        let latency = Duration::from_millis(34).mul_f64(scale.max(1.0));
        limits.extend(run(&mut l, &mut now, 1, latency, 0));
    }
    let grown = limits.iter().filter(|&&x| x > settled).count();
    assert!(grown >= 2, "probes made: {limits:?}");
    assert!(
        limits
            .iter()
            .all(|&x| f64::from(x) <= f64::from(settled) * 1.13 + 1.0),
        "a probe the latency followed was kept: {limits:?}"
    );
    // Between two probes, the rest: PROBE_REST windows at the settled limit in a row.
    let longest_rest = limits
        .split(|&x| x != settled)
        .map(<[u32]>::len)
        .max()
        .unwrap_or(0);
    assert!(longest_rest >= PROBE_REST as usize, "{limits:?}");
}

/// At an outage's edge some answers are connection refusals that come back in 100 µs; below
/// the error share that cuts the limit, they must not become the floor, or every healthy
/// window afterwards would look 20 times slower than it and shrink the limit (the backlog
/// then crawled for seconds after WeChat returned, until the floor windows rolled over).
#[test]
fn fast_failures_do_not_drag_the_floor_down() {
    // A ceiling the four slow-start windows stay below.
    let mut l = limiter(100_000);
    let mut now = Instant::now();
    run(&mut l, &mut now, 4, Duration::from_millis(2), 0);
    // One queueing window ends slow start (the limit then grows by eighths).
    run(&mut l, &mut now, 1, Duration::from_millis(4), 0);
    for _ in 0..5 {
        for i in 0..16 {
            let (latency, sample) = if i < 3 {
                (Duration::from_micros(100), Sample::Failed)
            } else {
                (Duration::from_millis(2), Sample::Ok)
            };
            l.record(now, latency, sample, l.limit(), Duration::ZERO);
            now += Duration::from_millis(4);
        }
    }
    assert_eq!(l.floor(), Some(Duration::from_millis(2)));
    let before = l.limit();
    let after = run(&mut l, &mut now, 4, Duration::from_millis(2), 0);
    assert!(
        after[0] > before && after.windows(2).all(|w| w[1] > w[0]),
        "healthy windows after the edge grow the limit: {before} then {after:?}"
    );
}

#[test]
fn slow_start_doubles_until_the_first_back_off() {
    let mut l = limiter(1000);
    let mut now = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(run(&mut l, &mut now, 3, ms(2), 0), [128, 256, 512]);
    // Queueing upstream: back off, and slow start is over.
    let down = run(&mut l, &mut now, 1, ms(4), 0)[0];
    assert!(down < 512, "{down}");
    let after = run(&mut l, &mut now, 2, ms(2), 0);
    let additive = |from: u32, to: u32| to > from && to <= from + from / 8 + 1;
    assert!(
        additive(down, after[0]) && additive(after[0], after[1]),
        "grows by an eighth after slow start: {down} → {after:?}"
    );
}

#[test]
fn the_limit_stays_within_its_bounds() {
    let mut l = limiter(40);
    let mut now = Instant::now();
    let limits = run(&mut l, &mut now, 50, Duration::from_millis(2), 0);
    assert_eq!(limits.last(), Some(&40));
    assert!(limits.windows(2).all(|w| w[0] <= w[1]), "{limits:?}");
    // Every answer fails: down to the floor of the range, never below.
    let limits = run(&mut l, &mut now, 50, Duration::from_millis(2), 16);
    assert_eq!(limits.last(), Some(&2));
}

/// Feeds one window of 16 healthy answers of `latency`, each read when the pusher's runtime
/// ran `lag` late (and `failed` of them failing), with the limit fully used.
fn window(
    l: &mut AdaptiveLimit,
    now: &mut Instant,
    latency: Duration,
    lag: Duration,
    failed: u32,
) -> u32 {
    for i in 0..16 {
        let sample = if i < failed {
            Sample::Failed
        } else {
            Sample::Ok
        };
        l.record(*now, latency, sample, l.limit(), lag);
        *now += Duration::from_millis(4);
    }
    l.limit()
}

/// The start of a run at 100 ms: the pusher accepts a burst on the same cores, and every
/// answer waits 60 ms for a worker. The rise is ours, not the upstream's: the limit holds
/// and slow start goes on.
#[test]
fn a_window_slowed_by_our_own_lag_neither_shrinks_nor_ends_slow_start() {
    let mut l = limiter(100_000);
    let mut now = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(window(&mut l, &mut now, ms(100), ms(0), 0), 128);
    assert_eq!(window(&mut l, &mut now, ms(100), ms(0), 0), 256);
    for _ in 0..3 {
        assert_eq!(window(&mut l, &mut now, ms(160), ms(60), 0), 256);
    }
    assert_eq!(l.excused(), 3);
    // The lagging windows did not raise or lower the floor's use: still 100 ms, and the
    // next healthy windows go on doubling.
    assert_eq!(l.floor(), Some(ms(100)));
    assert_eq!(window(&mut l, &mut now, ms(100), ms(0), 0), 512);
    assert_eq!(window(&mut l, &mut now, ms(100), ms(0), 0), 1024);
    // A lag larger than the answer's latency (a fast answer read very late) cannot drag
    // the floor down either: the floor takes the latency as measured.
    window(&mut l, &mut now, ms(120), ms(500), 0);
    assert_eq!(l.floor(), Some(ms(100)));
}

/// The same rise with the runtime on time is the upstream queueing: back off, and slow
/// start is over. A lag that explains only part of a rise cuts by the rest.
#[test]
fn a_window_slowed_by_the_upstream_backs_off() {
    let ms = Duration::from_millis;
    let mut l = limiter(100_000);
    let mut now = Instant::now();
    window(&mut l, &mut now, ms(100), ms(0), 0);
    assert_eq!(window(&mut l, &mut now, ms(100), ms(0), 0), 256);
    // 1.6 × the floor, nothing of it ours: cut by 1.2 / 1.6.
    assert_eq!(window(&mut l, &mut now, ms(160), ms(0), 0), 192);
    assert_eq!(l.excused(), 0);
    let next = window(&mut l, &mut now, ms(100), ms(0), 0);
    assert_eq!(next, 192 + 24, "grows by an eighth: slow start is over");

    let mut l = limiter(100_000);
    let mut now = Instant::now();
    window(&mut l, &mut now, ms(100), ms(0), 0);
    window(&mut l, &mut now, ms(100), ms(0), 0);
    // 4 × the floor with 100 ms of it ours: 3 × the floor is the upstream's, cut by half
    // (the most one window cuts).
    assert_eq!(window(&mut l, &mut now, ms(400), ms(100), 0), 128);
    // 2 × the floor with 20 ms ours: 1.8 × is the upstream's, cut by 1.2 / 1.8 (answers to
    // requests sent after the last cut).
    now += ms(250);
    let before = l.limit();
    let after = window(&mut l, &mut now, ms(200), ms(20), 0);
    assert_eq!(after, (f64::from(before) * 1.2 / 1.8).round() as u32);
}

/// A cut shows only in the answers to requests sent after it; those sent before queued
/// under the old limit. Windows of such answers hold the limit, so one queue is cut for
/// once per round trip, not once per window (at 100 ms that cut 1,024 to 56 in five
/// windows, and the climb back by eighths took over a second).
#[test]
fn a_cut_waits_for_the_answers_sent_after_it() {
    let ms = Duration::from_millis;
    let mut l = limiter(100_000);
    let mut now = Instant::now();
    window(&mut l, &mut now, ms(100), ms(0), 0);
    assert_eq!(window(&mut l, &mut now, ms(100), ms(0), 0), 256);
    // The upstream queues: 2 × the floor. One cut, by 1.2 / 2.
    let cut = window(&mut l, &mut now, ms(200), ms(0), 0);
    assert_eq!(cut, 154);
    // The next three windows (64 ms each) bring answers to requests sent before the cut
    // (200 ms earlier): held.
    for _ in 0..3 {
        assert_eq!(window(&mut l, &mut now, ms(200), ms(0), 0), cut);
    }
    // Answers sent after the cut that are still 2 × the floor: cut again.
    let again = window(&mut l, &mut now, ms(200), ms(0), 0);
    assert!(again < cut, "{cut} → {again}");
    // Answers sent after this cut at the floor: the cut was enough, growth by eighths.
    now += ms(300);
    let grown = window(&mut l, &mut now, ms(100), ms(0), 0);
    assert!(
        grown > again && grown <= again + again / 8 + 1,
        "{again} → {grown}"
    );
}

/// Too many failures cut the limit whatever the runtime's lag.
#[test]
fn failures_cut_the_limit_even_when_the_runtime_lags() {
    let ms = Duration::from_millis;
    let mut l = limiter(100_000);
    let mut now = Instant::now();
    window(&mut l, &mut now, ms(100), ms(0), 0);
    assert_eq!(window(&mut l, &mut now, ms(100), ms(0), 0), 256);
    let cut = window(&mut l, &mut now, ms(100), ms(80), 8);
    assert_eq!(cut, (256.0_f64 * 0.7).round() as u32);
    assert_eq!(l.excused(), 0);
}

#[test]
fn a_few_slow_answers_do_not_shrink_the_limit() {
    // A ceiling the four slow-start windows stay below.
    let mut l = limiter(100_000);
    let mut now = Instant::now();
    let before = run(&mut l, &mut now, 4, Duration::from_millis(2), 0);
    // Half of every window slowed down tenfold (a busy host), the other half at the floor.
    for _ in 0..8 {
        for i in 0..16 {
            let latency = Duration::from_millis(if i % 2 == 0 { 20 } else { 2 });
            l.record(now, latency, Sample::Ok, l.limit(), Duration::ZERO);
            now += Duration::from_millis(4);
        }
    }
    assert!(l.limit() > before[3], "{before:?} → {}", l.limit());
}

/// An upstream answering in `base` ± 50 % that serves `capacity` requests at once (beyond
/// that, every request waits in proportion), read by a pusher whose runtime runs `lag` late.
/// Runs `rounds` round trips with the limit fully used and returns the limit after each.
fn upstream(
    l: &mut AdaptiveLimit,
    base: Duration,
    capacity: u32,
    rounds: usize,
    lag: Duration,
) -> Vec<u32> {
    let mut now = Instant::now();
    let mut seed = 7_u64;
    let mut out = Vec::new();
    for _ in 0..rounds {
        let limit = l.limit();
        let queueing = (f64::from(limit) / f64::from(capacity)).max(1.0);
        for _ in 0..limit {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let jitter = 0.5 + (seed >> 11) as f64 / (1_u64 << 53) as f64;
            l.record(now, base.mul_f64(jitter * queueing), Sample::Ok, limit, lag);
            now += base / limit;
        }
        out.push(l.limit());
    }
    out
}

/// At WeChat's real latency the limit, not the ceiling, decides: it climbs to the ceiling
/// within a few dozen round trips while latency stays at its floor, and settles near the
/// upstream's capacity when requests start to queue.
#[test]
fn the_limit_climbs_at_real_latencies_and_stops_at_capacity() {
    for ms in [20, 50, 100] {
        let base = Duration::from_millis(ms);
        let mut l = AdaptiveLimit::new(AdaptiveSettings::default());
        let limits = upstream(&mut l, base, u32::MAX, 20, Duration::ZERO);
        assert_eq!(
            limits.last(),
            Some(&1024),
            "{ms} ms, no queueing: {limits:?}"
        );
        let mut l = AdaptiveLimit::new(AdaptiveSettings::default());
        // Within the floor's memory (FLOOR_WINDOWS windows; a queue that lasts longer
        // becomes the new floor, as in every Vegas-style limiter).
        let limits = upstream(&mut l, base, 200, 60, Duration::ZERO);
        let settled = &limits[20..];
        assert!(
            settled.iter().all(|&x| (100..=450).contains(&x)),
            "{ms} ms, capacity 200: {limits:?}"
        );
        // The same with the pusher's runtime running a tenth of the latency late on every
        // answer: the lag does not hide the upstream's queue.
        let mut l = AdaptiveLimit::new(AdaptiveSettings::default());
        let limits = upstream(&mut l, base, 200, 60, base / 10);
        let settled = &limits[20..];
        assert!(
            settled.iter().all(|&x| (100..=450).contains(&x)),
            "{ms} ms, capacity 200, lag {:?}: {limits:?}",
            base / 10
        );
    }
}

/// WeChat away for a while (every answer fails, the limit cut to its floor window after
/// window), then back: the limit doubles back up to one cut below where it was, then grows
/// by eighths.
#[test]
fn after_an_outage_the_limit_doubles_back() {
    let mut l = limiter(100_000);
    let mut now = Instant::now();
    let ms = Duration::from_millis;
    run(&mut l, &mut now, 2, ms(2), 0);
    // One queueing window ends slow start.
    run(&mut l, &mut now, 1, ms(4), 0);
    let before = l.limit();
    let cut = run(&mut l, &mut now, 30, ms(2), 16);
    assert_eq!(cut.last(), Some(&2), "cut to the floor: {cut:?}");
    let back = run(&mut l, &mut now, 12, ms(2), 0);
    let mark = (f64::from(before) * 0.7).round() as u32;
    let reached = back.iter().position(|&x| x >= mark);
    assert!(
        back.windows(2)
            .take_while(|w| w[1] < mark)
            .all(|w| w[1] == 2 * w[0]),
        "doubles below the mark {mark}: {back:?}"
    );
    assert!(
        matches!(reached, Some(i) if i <= 7),
        "back near {before} within 8 windows: {back:?}"
    );
    let i = reached.unwrap_or(0);
    assert!(
        back[i + 1..]
            .windows(2)
            .all(|w| w[1] > w[0] && w[1] <= w[0] + w[0] / 8 + 1),
        "then by eighths: {back:?}"
    );
}

/// One window of errors (an overloaded upstream) cuts once; the limit then grows by eighths
/// from there, not by doubling.
#[test]
fn a_single_cut_for_errors_grows_by_eighths_after() {
    let mut l = limiter(100_000);
    let mut now = Instant::now();
    let ms = Duration::from_millis;
    run(&mut l, &mut now, 2, ms(2), 0);
    run(&mut l, &mut now, 1, ms(4), 0);
    let cut = run(&mut l, &mut now, 1, ms(2), 8)[0];
    let after = run(&mut l, &mut now, 3, ms(2), 0);
    let mut from = cut;
    for x in after {
        assert!(x > from && x <= from + from / 8 + 1, "{cut} → {x}");
        from = x;
    }
}

#[test]
fn an_unused_limit_does_not_grow() {
    let mut l = AdaptiveLimit::new(AdaptiveSettings::default());
    let mut now = Instant::now();
    for _ in 0..200 {
        l.record(now, Duration::from_millis(2), Sample::Ok, 1, Duration::ZERO);
        now += Duration::from_millis(4);
    }
    assert_eq!(l.limit(), 64);
}

#[test]
fn a_window_needs_time_and_samples() {
    let mut l = AdaptiveLimit::new(AdaptiveSettings::default());
    let now = Instant::now();
    // Many samples at one instant: the window is not over.
    for _ in 0..100 {
        assert_eq!(
            l.record(
                now,
                Duration::from_millis(2),
                Sample::Ok,
                16,
                Duration::ZERO
            ),
            None
        );
    }
    assert_eq!(l.floor(), None);
    let later = now + Duration::from_millis(60);
    assert_eq!(
        l.record(
            later,
            Duration::from_millis(2),
            Sample::Ok,
            64,
            Duration::ZERO
        ),
        Some(128)
    );
}

/// A limit grown by two doublings (64 → 128 → 256), cut for one window at twice the floor
/// (slow start over), then grown by eighths for [`RECALL_WINDOWS`] windows: its highest yet.
fn grown(now: &mut Instant) -> AdaptiveLimit {
    let mut l = limiter(100_000);
    let ms = Duration::from_millis;
    run(&mut l, now, 2, ms(2), 0);
    run(&mut l, now, 1, ms(4), 0);
    run(&mut l, now, RECALL_WINDOWS, ms(2), 0);
    l
}

/// WeChat goes away: the answers in flight fail, window after window of error cuts, and then
/// the breaker opens. The outage says nothing about how many requests WeChat takes once it is
/// back: the opening puts the limit back where it was before the first error cut, and once the
/// answers are healthy again it grows from there by eighths.
#[test]
fn the_breaker_opening_restores_the_limit_from_before_the_errors() {
    let mut now = Instant::now();
    let mut l = grown(&mut now);
    let before = l.limit();
    let cut = run(&mut l, &mut now, 6, Duration::from_millis(2), 16);
    assert!(
        cut.windows(2).all(|w| w[1] < w[0]) && cut[5] < before / 4,
        "cut window after window: {before} → {cut:?}"
    );
    assert_eq!(l.breaker_opened(now), Some(before), "{cut:?}");
    assert_eq!(l.limit(), before);
    // The breaker stays open a while (no answers), then closes: healthy answers again.
    now += Duration::from_secs(1);
    let back = run(&mut l, &mut now, 4, Duration::from_millis(2), 0);
    let mut from = before;
    for x in back.iter().copied() {
        assert!(
            x > from && x <= from + from / 8 + 1,
            "by eighths from {before}: {back:?}"
        );
        from = x;
    }
}

/// Requests in flight when the breaker opened fail as they come back (timeouts, resets): they
/// belong to the outage already known and do not cut the restored limit. Failures of requests
/// sent after the opening (a probe, or WeChat failing again) still count.
#[test]
fn failures_sent_before_the_breaker_opened_do_not_cut() {
    let mut now = Instant::now();
    let mut l = grown(&mut now);
    let before = l.limit();
    run(&mut l, &mut now, 3, Duration::from_millis(2), 16);
    let opened = now;
    assert_eq!(l.breaker_opened(opened), Some(before));
    // Timeouts of requests sent 100 ms before the opening, for 200 ms after it.
    for _ in 0..50 {
        now += Duration::from_millis(4);
        let latency = now.duration_since(opened) + Duration::from_millis(100);
        assert_eq!(
            l.record(now, latency, Sample::Failed, before, Duration::ZERO),
            None
        );
    }
    assert_eq!(l.limit(), before);
    // Failures of requests sent after it: cut.
    let after = run(&mut l, &mut now, 2, Duration::from_millis(2), 16);
    assert!(after[1] < before, "{before} → {after:?}");
}

/// At an outage's start the answers may also slow down before they fail, and latency cuts the
/// limit too: the opening brings back the highest limit of the last [`RECALL_WINDOWS`]
/// windows, whatever cut it. A limit set longer ago is not brought back, and an opening with
/// nothing to recall (the breaker opened on refused connections alone, which the limit does
/// not count, with the limit steady) leaves the limit where it is.
#[test]
fn the_breaker_opening_recalls_the_last_windows_only() {
    let ms = Duration::from_millis;
    // Windows of answers at the floor with few requests in flight: the limit holds.
    let idle = |l: &mut AdaptiveLimit, now: &mut Instant, windows: usize| {
        for _ in 0..windows * 16 {
            l.record(*now, ms(2), Sample::Ok, 1, Duration::ZERO);
            *now += ms(4);
        }
    };
    let mut now = Instant::now();
    let mut l = grown(&mut now);
    let before = l.limit();
    idle(&mut l, &mut now, RECALL_WINDOWS);
    assert_eq!(l.breaker_opened(now), None, "a steady limit");
    assert_eq!(l.limit(), before);
    now += ms(10);
    // Two latency cuts just before the opening: brought back.
    run(&mut l, &mut now, 1, ms(8), 0);
    idle(&mut l, &mut now, 1);
    run(&mut l, &mut now, 1, ms(8), 0);
    assert!(l.limit() < before / 2, "{before} → {}", l.limit());
    assert_eq!(l.breaker_opened(now), Some(before));
    // The same cuts, longer ago than the windows recalled: the limit stays.
    now += ms(10);
    let mut l = grown(&mut now);
    run(&mut l, &mut now, 1, ms(8), 0);
    let cut = l.limit();
    assert!(cut < before, "{before} → {cut}");
    idle(&mut l, &mut now, RECALL_WINDOWS);
    assert_eq!(l.breaker_opened(now), None);
    assert_eq!(l.limit(), cut);
}

/// Errors that last without opening the breaker (between a quarter and half of the answers
/// failing) still cut the limit window after window, down to its floor.
#[test]
fn a_lasting_error_share_below_the_breakers_still_cuts() {
    for failed in [5, 6, 8] {
        let mut now = Instant::now();
        let mut l = grown(&mut now);
        let cut = run(&mut l, &mut now, 30, Duration::from_millis(2), failed);
        assert_eq!(cut.last(), Some(&2), "{failed} of 16 failing: {cut:?}");
    }
}

/// The first window after an outage often rises above the floor (new connections, the whole
/// backlog pulled in at once): its latency cut keeps the limit from before the outage as the
/// mark, and the next healthy windows double back to it. A second latency cut forgets it.
#[test]
fn the_first_latency_cut_after_an_opening_doubles_back() {
    let ms = Duration::from_millis;
    let mut now = Instant::now();
    let mut l = grown(&mut now);
    let before = l.limit();
    run(&mut l, &mut now, 3, ms(2), 16);
    assert_eq!(l.breaker_opened(now), Some(before));
    now += Duration::from_secs(1);
    run(&mut l, &mut now, 1, ms(8), 0);
    let cut = l.limit();
    assert!(cut <= before / 2 + 1, "{before} → {cut}");
    let back = run(&mut l, &mut now, 2, ms(2), 0);
    assert_eq!(back[0], before, "doubles back from {cut}: {back:?}");
    assert!(
        back[1] > before && back[1] <= before + before / 8 + 1,
        "then by eighths: {back:?}"
    );
    // Two latency cuts after an opening: the second forgets the mark.
    let before = l.limit();
    run(&mut l, &mut now, 1, ms(2), 16);
    l.breaker_opened(now);
    now += Duration::from_secs(1);
    run(&mut l, &mut now, 1, ms(8), 0);
    // Answers to requests sent after the first cut, still slow: cut again.
    run(&mut l, &mut now, 1, ms(9), 0);
    let cut = l.limit();
    assert!(cut < before / 2, "{before} → {cut}");
    let back = run(&mut l, &mut now, 2, ms(2), 0);
    assert!(
        back[0] <= cut + cut / 8 + 1,
        "by eighths from {cut}: {back:?}"
    );
}
