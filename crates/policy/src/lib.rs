//! The device's decisions, sans I/O: when to scan, and for each needed update whether to download it, install it,
//! only tell the user, or wait. Inputs are the policy (from the agent's configuration), the device's holds, what is
//! already done for the update, the current time and the device's time zone; the output is a [`Decision`] with its
//! reason. The agent carries decisions out; nothing here reads a clock, a file or the network.
//!
//! The policy is per kind of update (`os`, `app`, `driver`, `definitions`, `store-app`): `auto` (download and
//! install), `download-only` (download, install when the user says so), or `notify`. Holds stop an update or a whole
//! product. Installs happen only inside a maintenance window when one is configured. Deferrals, deadlines and rings
//! (a later issue) are additional inputs to [`Policy::decide`]; they fit between the hold check and the action.

use std::collections::BTreeSet;

use custody_catalog::{Kind, UpdateId};
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Why a policy is not valid.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("schedule.interval must be between 1 minute and 31 days, not {0}")]
    Interval(String),
    #[error("schedule.jitter must be a fraction between 0 and 0.5, not {0}")]
    Jitter(f64),
    #[error("maintenance window {index}: duration must be between 1 minute and 7 days, not {duration}")]
    WindowDuration { index: usize, duration: String },
    #[error("maintenance window {index}: days must not be empty")]
    WindowDays { index: usize },
}

/// What the device does with updates of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Download and install (inside the maintenance window, if any).
    Auto,
    /// Download; install only when asked (`custody agent install`, or an application through the local API).
    DownloadOnly,
    /// Only report that the update is needed.
    Notify,
}

/// The agent's `[policy]` and `[schedule]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Mode of every kind not listed in `kinds`.
    #[serde(default = "Policy::default_mode")]
    pub default: Mode,
    /// Mode per kind.
    #[serde(default)]
    pub kinds: Kinds,
    /// Installs happen only inside one of these windows; none means any time.
    #[serde(default)]
    pub maintenance_windows: Vec<Window>,
    #[serde(default)]
    pub schedule: Schedule,
}

/// Mode per kind of update; `None` falls back to [`Policy::default`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kinds {
    pub os: Option<Mode>,
    pub app: Option<Mode>,
    pub driver: Option<Mode>,
    pub definitions: Option<Mode>,
    pub store_app: Option<Mode>,
}

/// A weekly maintenance window in the device's local time: it opens at `start` on each of `days` and lasts
/// `duration` (it may run past midnight).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub days: Vec<Day>,
    /// Local wall-clock time, `HH:MM`.
    pub start: Time,
    /// A jiff friendly duration such as `3h` or `90m`.
    pub duration: SignedDuration,
}

/// A day of the week, as written in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// When the daemon scans by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Time between scans (default 22 hours, as Windows Update).
    #[serde(default = "Schedule::default_interval")]
    pub interval: SignedDuration,
    /// Random extra delay, as a fraction of `interval` (default 0.2), so that a fleet does not scan in step.
    #[serde(default = "Schedule::default_jitter")]
    pub jitter: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self { interval: Self::default_interval(), jitter: Self::default_jitter() }
    }
}

impl Schedule {
    fn default_interval() -> SignedDuration {
        SignedDuration::from_hours(22)
    }

    fn default_jitter() -> f64 {
        0.2
    }

    /// The next scheduled scan after one at `last`: `interval` plus `jitter × interval × random`, where `random` is a
    /// uniform draw from [0, 1) that the caller supplies.
    pub fn next_scan(&self, last: Timestamp, random: f64) -> Timestamp {
        let random = random.clamp(0.0, 1.0);
        let extra = self.interval.as_secs_f64() * self.jitter * random;
        last + self.interval + SignedDuration::from_secs_f64(extra)
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default: Self::default_mode(),
            kinds: Kinds::default(),
            maintenance_windows: Vec::new(),
            schedule: Schedule::default(),
        }
    }
}

/// The device's holds: updates or whole products it must not download or install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    pub updates: BTreeSet<UpdateId>,
    pub products: BTreeSet<String>,
}

/// How far the device got with one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Needed, nothing done yet.
    Needed,
    /// Downloaded and verified, not installed.
    Downloaded,
}

/// Who asked for the decision: the daemon's own schedule, or a person or application asking to install now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Scheduled,
    /// An explicit request to install (CLI or local API). It overrides `download-only` and `notify`, and the
    /// maintenance window, but never a hold.
    InstallNow,
}

/// What to do now with one needed update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Held(HoldReason),
    /// Report it as needed and do nothing else.
    Notify,
    Download,
    Install,
    /// Downloaded; waits for someone to ask for the install.
    AwaitApproval,
    /// Downloaded; the install waits until the next maintenance window opens.
    WaitForWindow {
        opens: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldReason {
    Update,
    Product(String),
}

/// The facts of one update that decisions depend on.
#[derive(Debug, Clone, Copy)]
pub struct UpdateFacts<'a> {
    pub id: UpdateId,
    pub product: &'a str,
    pub kind: Kind,
}

impl Policy {
    fn default_mode() -> Mode {
        Mode::Auto
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let interval = self.schedule.interval;
        if interval < SignedDuration::from_mins(1) || interval > SignedDuration::from_hours(24 * 31) {
            return Err(Error::Interval(format!("{interval:#}")));
        }
        if !(0.0..=0.5).contains(&self.schedule.jitter) {
            return Err(Error::Jitter(self.schedule.jitter));
        }
        for (index, window) in self.maintenance_windows.iter().enumerate() {
            if window.duration < SignedDuration::from_mins(1) || window.duration > SignedDuration::from_hours(24 * 7) {
                return Err(Error::WindowDuration { index, duration: format!("{:#}", window.duration) });
            }
            if window.days.is_empty() {
                return Err(Error::WindowDays { index });
            }
        }
        Ok(())
    }

    /// The mode for updates of `kind`.
    pub fn mode(&self, kind: Kind) -> Mode {
        let specific = match kind {
            Kind::Os => self.kinds.os,
            Kind::App => self.kinds.app,
            Kind::Driver => self.kinds.driver,
            Kind::Definitions => self.kinds.definitions,
            Kind::StoreApp => self.kinds.store_app,
        };
        specific.unwrap_or(self.default)
    }

    /// Decides what to do now with a needed update.
    pub fn decide(
        &self,
        update: UpdateFacts<'_>,
        holds: &Holds,
        progress: Progress,
        trigger: Trigger,
        now: Timestamp,
        tz: &TimeZone,
    ) -> Decision {
        if holds.updates.contains(&update.id) {
            return Decision::Held(HoldReason::Update);
        }
        if holds.products.contains(update.product) {
            return Decision::Held(HoldReason::Product(update.product.to_owned()));
        }
        let mode = match trigger {
            Trigger::InstallNow => Mode::Auto,
            Trigger::Scheduled => self.mode(update.kind),
        };
        match (mode, progress) {
            (Mode::Notify, _) => Decision::Notify,
            (_, Progress::Needed) => Decision::Download,
            (Mode::DownloadOnly, Progress::Downloaded) => Decision::AwaitApproval,
            (Mode::Auto, Progress::Downloaded) if trigger == Trigger::InstallNow => Decision::Install,
            (Mode::Auto, Progress::Downloaded) => match self.next_window(now, tz) {
                None => Decision::Install,
                Some(opens) if opens <= now => Decision::Install,
                Some(opens) => Decision::WaitForWindow { opens },
            },
        }
    }

    /// `None` without windows (any time is fine); otherwise `now` if a window is open, else when the next one opens.
    pub fn next_window(&self, now: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        if self.maintenance_windows.is_empty() {
            return None;
        }
        let local = now.to_zoned_datetime(tz.clone());
        let mut earliest: Option<Timestamp> = None;
        // A window that opened up to 7 days ago may still be open; one opening within the next 7 days is the next.
        for offset in -7i64..=7 {
            let Ok(day) = local.date().checked_add(jiff::Span::new().days(offset)) else { continue };
            for window in &self.maintenance_windows {
                if !window.days.iter().any(|d| d.weekday() == day.weekday()) {
                    continue;
                }
                let Ok(start) = day.to_datetime(window.start).to_zoned_datetime(tz.clone()) else { continue };
                let start = start.timestamp();
                let end = start + window.duration;
                if start <= now && now < end {
                    return Some(now);
                }
                if start > now && earliest.is_none_or(|e| start < e) {
                    earliest = Some(start);
                }
            }
        }
        earliest
    }
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: Kind) -> UpdateFacts<'static> {
        UpdateFacts { id: "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90".parse().unwrap(), product: "acme", kind }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy(toml_text: &str) -> Policy {
        let policy: Policy = toml::from_str(toml_text).unwrap();
        policy.validate().unwrap();
        policy
    }

    const UTC: TimeZone = TimeZone::UTC;

    #[test]
    fn defaults_download_and_install_at_any_time() {
        let p = Policy::default();
        let now = at("2026-11-28T12:00:00Z");
        let d = |progress| p.decide(facts(Kind::App), &Holds::default(), progress, Trigger::Scheduled, now, &UTC);
        assert_eq!(d(Progress::Needed), Decision::Download);
        assert_eq!(d(Progress::Downloaded), Decision::Install);
    }

    #[test]
    fn mode_per_kind() {
        let p = policy("default = \"notify\"\n[kinds]\nos = \"download-only\"\ndefinitions = \"auto\"\n");
        let now = at("2026-11-28T12:00:00Z");
        let d = |kind, progress| p.decide(facts(kind), &Holds::default(), progress, Trigger::Scheduled, now, &UTC);
        assert_eq!(d(Kind::App, Progress::Needed), Decision::Notify);
        assert_eq!(d(Kind::Os, Progress::Needed), Decision::Download);
        assert_eq!(d(Kind::Os, Progress::Downloaded), Decision::AwaitApproval);
        assert_eq!(d(Kind::Definitions, Progress::Downloaded), Decision::Install);
    }

    #[test]
    fn install_now_overrides_mode_and_window_but_not_holds() {
        let p = policy(
            "default = \"notify\"\n[[maintenance_windows]]\ndays = [\"sun\"]\nstart = \"02:00\"\nduration = \"2h\"\n",
        );
        let now = at("2026-11-25T12:00:00Z"); // a Wednesday
        let mut holds = Holds::default();
        let d = |holds: &Holds| p.decide(facts(Kind::App), holds, Progress::Downloaded, Trigger::InstallNow, now, &UTC);
        assert_eq!(d(&holds), Decision::Install);
        holds.products.insert("acme".into());
        assert_eq!(d(&holds), Decision::Held(HoldReason::Product("acme".into())));
        holds.products.clear();
        holds.updates.insert(facts(Kind::App).id);
        assert_eq!(d(&holds), Decision::Held(HoldReason::Update));
    }

    #[test]
    fn maintenance_window_defers_installs_not_downloads() {
        let p = policy("[[maintenance_windows]]\ndays = [\"sat\", \"sun\"]\nstart = \"23:00\"\nduration = \"3h\"\n");
        let d = |now: &str, progress| {
            p.decide(facts(Kind::App), &Holds::default(), progress, Trigger::Scheduled, at(now), &UTC)
        };
        // Wednesday noon: download now, install at Saturday 23:00.
        assert_eq!(d("2026-11-25T12:00:00Z", Progress::Needed), Decision::Download);
        assert_eq!(
            d("2026-11-25T12:00:00Z", Progress::Downloaded),
            Decision::WaitForWindow { opens: at("2026-11-28T23:00:00Z") }
        );
        // Sunday 01:00 is inside Saturday's window, which runs past midnight.
        assert_eq!(d("2026-11-29T01:00:00Z", Progress::Downloaded), Decision::Install);
        // Monday 01:30 is inside Sunday's window; Monday 02:00 is not.
        assert_eq!(d("2026-11-30T01:30:00Z", Progress::Downloaded), Decision::Install);
        assert_eq!(
            d("2026-11-30T02:00:00Z", Progress::Downloaded),
            Decision::WaitForWindow { opens: at("2026-12-05T23:00:00Z") }
        );
    }

    #[test]
    fn windows_are_in_local_time() {
        let p = policy("[[maintenance_windows]]\ndays = [\"mon\"]\nstart = \"02:00\"\nduration = \"1h\"\n");
        let tz = TimeZone::fixed(jiff::tz::offset(-5));
        // 07:30 UTC on a Monday is 02:30 at UTC-5: open.
        assert_eq!(p.next_window(at("2026-11-30T07:30:00Z"), &tz), Some(at("2026-11-30T07:30:00Z")));
        // 02:30 UTC on that Monday is Sunday 21:30 at UTC-5: opens at 07:00 UTC.
        assert_eq!(p.next_window(at("2026-11-30T02:30:00Z"), &tz), Some(at("2026-11-30T07:00:00Z")));
    }

    #[test]
    fn schedule_jitter_stays_within_its_fraction() {
        let s = Schedule::default();
        let last = at("2026-11-28T00:00:00Z");
        assert_eq!(s.next_scan(last, 0.0), at("2026-11-28T22:00:00Z"));
        let latest = s.next_scan(last, 0.999_999);
        assert!(latest > at("2026-11-29T02:23:00Z") && latest <= at("2026-11-29T02:24:00Z"), "{latest}");
    }

    #[test]
    fn invalid_policies_are_refused_with_the_field_named() {
        let p: Policy = toml::from_str("[schedule]\ninterval = \"10s\"\n").unwrap();
        assert!(matches!(p.validate(), Err(Error::Interval(_))));
        let p: Policy = toml::from_str("[schedule]\njitter = 0.9\n").unwrap();
        assert_eq!(p.validate(), Err(Error::Jitter(0.9)));
        let p: Policy =
            toml::from_str("[[maintenance_windows]]\ndays = []\nstart = \"01:00\"\nduration = \"1h\"\n").unwrap();
        assert_eq!(p.validate(), Err(Error::WindowDays { index: 0 }));
        let err = toml::from_str::<Policy>("default = \"sometimes\"\n").unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
        let err = toml::from_str::<Policy>("[kinds]\nfirmware = \"auto\"\n").unwrap_err();
        assert!(err.to_string().contains("firmware"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn next_window_is_open_or_in_the_future(secs in 1_700_000_000i64..1_900_000_000, start_min in 0u32..1440, dur_min in 1i64..3000) {
            let p = Policy {
                maintenance_windows: vec![Window {
                    days: vec![Day::Tue, Day::Fri],
                    start: Time::new((start_min / 60) as i8, (start_min % 60) as i8, 0, 0).unwrap(),
                    duration: SignedDuration::from_mins(dur_min),
                }],
                ..Policy::default()
            };
            let now = Timestamp::from_second(secs).unwrap();
            let next = p.next_window(now, &UTC).unwrap();
            proptest::prop_assert!(next >= now);
            proptest::prop_assert!(next - now <= SignedDuration::from_hours(24 * 7));
        }
    }
}
