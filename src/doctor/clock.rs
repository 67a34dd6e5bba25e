//! Is the system clock plausible? TURN credentials expire by it, TLS certificates are judged by
//! it. Without the internet there is no reference to ask, so doctor checks what it can: the
//! clock is after this source was written and after this binary file was written (a clock reset
//! to 1970 or to a stale RTC fails both), and over a short sleep the realtime clock advances
//! like the monotonic one (it is not being stepped or slewed hard right now).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};

use super::report::Finding;

/// 2026-01-01 00:00 UTC: this code did not exist before; a clock earlier than that is wrong.
const WRITTEN_AFTER_UNIX: u64 = 1_767_225_600;
/// Realtime and monotonic may disagree by this much over the probe before it is a problem.
const DRIFT_TOLERANCE: Duration = Duration::from_millis(100);
const PROBE: Duration = Duration::from_millis(300);

pub fn check() -> Finding {
    let binary_written = std::env::current_exe().and_then(std::fs::metadata).and_then(|m| m.modified()).ok();
    let (wall_start, mono_start) = (SystemTime::now(), Instant::now());
    std::thread::sleep(PROBE);
    let (wall_end, mono_end) = (SystemTime::now(), Instant::now());
    judge(wall_start, binary_written, wall_end.duration_since(wall_start).ok(), mono_end - mono_start)
}

fn when(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The verdict from the readings (separate from the sleeping, so it can be unit-tested).
fn judge(
    now: SystemTime,
    binary_written: Option<SystemTime>,
    wall: Option<Duration>,
    mono: Duration,
) -> Finding {
    let check = "clock";
    let floor = UNIX_EPOCH + Duration::from_secs(WRITTEN_AFTER_UNIX);
    if now < floor {
        return Finding::fail(check, format!("the system clock says {}, before this software was written: set the time (enable NTP: timedatectl set-ntp true)", when(now)));
    }
    if let Some(written) = binary_written.filter(|w| now + Duration::from_secs(60) < *w) {
        return Finding::fail(
            check,
            format!(
                "the system clock says {}, before this binary was built ({}): set the time (enable NTP)",
                when(now),
                when(written)
            ),
        );
    }
    let Some(wall) = wall else {
        return Finding::fail(
            check,
            "the system clock went backwards during the check: is something stepping it?",
        );
    };
    let drift = wall.abs_diff(mono);
    if drift > DRIFT_TOLERANCE {
        return Finding::warn(
            check,
            format!(
                "the system clock moved {} ms while {} ms passed: it is being adjusted right now; check NTP",
                wall.as_millis(),
                mono.as_millis()
            ),
        );
    }
    Finding::ok(check, format!("{} (after the build date; advances steadily); keep NTP on, credentials and certificates are judged by it", when(now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Level;

    #[test]
    fn verdicts() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let ms = Duration::from_millis;
        let now = at(WRITTEN_AFTER_UNIX + 86_400);
        assert_eq!(judge(now, Some(at(WRITTEN_AFTER_UNIX)), Some(ms(300)), ms(301)).level, Level::Ok);
        assert_eq!(judge(at(86_400), None, Some(ms(300)), ms(300)).level, Level::Fail);
        assert_eq!(
            judge(now, Some(now + Duration::from_secs(3600)), Some(ms(300)), ms(300)).level,
            Level::Fail
        );
        assert_eq!(judge(now, None, None, ms(300)).level, Level::Fail);
        assert_eq!(judge(now, None, Some(ms(2300)), ms(300)).level, Level::Warn);
    }
}
