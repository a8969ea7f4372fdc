//! Which backups a keep policy keeps (`repo prune`), as restic's `forget`
//! and Proxmox's prune reckon it: within each group (a domain's backups),
//! newest first, `--keep-last N` keeps the N newest, and `--keep-hourly N`
//! (daily, weekly, monthly) keeps the newest backup of each of the N
//! latest hours (UTC days, ISO weeks, months) that have one. A backup is
//! kept when any rule keeps it; the others are removed. Every backup
//! restores on its own, so removing any of them takes nothing from the
//! rest.

use std::collections::BTreeMap;

use crate::manifest::Manifest;
use crate::repo::utc;

/// A keep policy: how many of each kind (`None`: the rule is not used).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    /// The newest N.
    pub last: Option<u32>,
    /// The newest of each of the latest N hours.
    pub hourly: Option<u32>,
    /// The newest of each of the latest N days.
    pub daily: Option<u32>,
    /// The newest of each of the latest N ISO weeks (from Monday).
    pub weekly: Option<u32>,
    /// The newest of each of the latest N months.
    pub monthly: Option<u32>,
}

impl Keep {
    /// Whether any rule is set (a policy without one would remove
    /// everything, and is refused by the caller).
    pub fn any(&self) -> bool {
        self.rules().iter().any(|(_, n)| n.is_some())
    }

    fn rules(&self) -> [(&'static str, Option<u32>); 5] {
        [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
        ]
    }
}

/// One backup's fate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The backup's id.
    pub id: String,
    /// Its group (the domain).
    pub group: String,
    /// Its time, seconds since the epoch.
    pub time: u64,
    /// The rules that keep it (`last`, `hourly`, …); none: it goes.
    pub kept_by: Vec<&'static str>,
}

impl Decision {
    /// Whether it is kept.
    pub fn kept(&self) -> bool {
        !self.kept_by.is_empty()
    }
}

/// The bucket of `rule` that time `secs` falls in.
fn bucket(rule: &str, secs: u64) -> String {
    let t = utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    match rule {
        "hourly" => t[..11].to_string(),
        "daily" => t[..8].to_string(),
        // Day 0 (1970-01-01) was a Thursday: weeks from Monday.
        "weekly" => ((secs / 86400 + 3) / 7).to_string(),
        "monthly" => t[..6].to_string(),
        // `last`: every backup is a bucket of its own.
        _ => format!("{secs}.{t}"),
    }
}

/// The fate of each of `backups` under `keep`, newest first within each
/// group, groups by name.
pub fn plan(backups: &[Manifest], keep: &Keep) -> Vec<Decision> {
    let mut groups: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in backups {
        groups.entry(m.label.as_str()).or_default().push(m);
    }
    let mut out = Vec::new();
    for (group, mut ms) in groups {
        ms.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
        let mut decisions: Vec<Decision> = ms
            .iter()
            .map(|m| Decision {
                id: m.id.clone(),
                group: group.to_string(),
                time: m.time,
                kept_by: Vec::new(),
            })
            .collect();
        for (rule, n) in keep.rules() {
            let Some(n) = n else { continue };
            let mut seen: Option<String> = None;
            let mut kept = 0;
            for d in decisions.iter_mut() {
                if kept == n {
                    break;
                }
                let b = match rule {
                    "last" => d.id.clone(),
                    _ => bucket(rule, d.time),
                };
                if seen.as_ref() != Some(&b) {
                    d.kept_by.push(rule);
                    kept += 1;
                    seen = Some(b);
                }
            }
        }
        out.extend(decisions);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(label: &str, time: u64, k: usize) -> Manifest {
        Manifest {
            id: format!("{:012}-{k:04}", time),
            time,
            host: String::new(),
            label: label.into(),
            parent: None,
            disks: Vec::new(),
            meta: serde_json::Value::Null,
        }
    }

    const HOUR: u64 = 3600;
    const DAY: u64 = 86400;

    #[test]
    fn each_rule_keeps_the_newest_of_its_latest_buckets() {
        // 2026-12-07 (a Monday) 00:00 UTC, then four backups a day for
        // 20 days, six hours apart.
        let t0 = 1_796_601_600;
        assert_eq!(
            &utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t0))[..8],
            "20261207"
        );
        let all: Vec<Manifest> = (0..80)
            .map(|k| at("vm", t0 + k as u64 * 6 * HOUR, k))
            .collect();
        let kept = |keep: Keep| -> Vec<u64> {
            plan(&all, &keep)
                .into_iter()
                .filter(|d| d.kept())
                .map(|d| (d.time - t0) / HOUR)
                .collect()
        };
        let newest = 79 * 6;
        assert_eq!(
            kept(Keep {
                last: Some(3),
                ..Keep::default()
            }),
            vec![newest, newest - 6, newest - 12]
        );
        // The newest of each day: its 18:00 backup.
        assert_eq!(
            kept(Keep {
                daily: Some(3),
                ..Keep::default()
            }),
            vec![19 * 24 + 18, 18 * 24 + 18, 17 * 24 + 18]
        );
        // ISO weeks from Monday: days 14-19, 7-13, 0-6.
        assert_eq!(
            kept(Keep {
                weekly: Some(5),
                ..Keep::default()
            }),
            vec![19 * 24 + 18, 13 * 24 + 18, 6 * 24 + 18]
        );
        // Twenty days from the 7th end on the 26th: one month.
        assert_eq!(
            kept(Keep {
                monthly: Some(2),
                ..Keep::default()
            }),
            vec![newest]
        );
        // Rules add up.
        let both = kept(Keep {
            last: Some(2),
            daily: Some(2),
            ..Keep::default()
        });
        assert_eq!(both, vec![newest, newest - 6, 18 * 24 + 18]);
        // Groups are reckoned apart.
        let mut two = all.clone();
        two.push(at("other", t0, 999));
        let d = plan(
            &two,
            &Keep {
                last: Some(1),
                ..Keep::default()
            },
        );
        assert_eq!(d.iter().filter(|d| d.kept()).count(), 2);
    }

    proptest! {
        /// Against a model: for each rule alone, the kept backups are the
        /// newest of each of the rule's latest n buckets; with several,
        /// the union; the newest backup of a group is always kept.
        #[test]
        fn the_plan_is_the_union_of_each_rules_newest_per_bucket(
            times in proptest::collection::vec(0u64..200 * DAY, 1..40),
            last in proptest::option::of(0u32..5),
            hourly in proptest::option::of(0u32..5),
            daily in proptest::option::of(0u32..5),
            weekly in proptest::option::of(0u32..5),
            monthly in proptest::option::of(0u32..5),
        ) {
            let all: Vec<Manifest> = times.iter().enumerate().map(|(k, &t)| at("vm", t, k)).collect();
            let keep = Keep { last, hourly, daily, weekly, monthly };
            let got: std::collections::BTreeSet<String> =
                plan(&all, &keep).into_iter().filter(|d| d.kept()).map(|d| d.id).collect();
            let mut sorted = all.clone();
            sorted.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
            let mut want = std::collections::BTreeSet::new();
            for (rule, n) in keep.rules() {
                let Some(n) = n else { continue };
                // The model: the newest of each bucket, buckets newest first.
                let mut firsts: Vec<(String, String)> = Vec::new();
                for m in &sorted {
                    let b = if rule == "last" { m.id.clone() } else { bucket(rule, m.time) };
                    if !firsts.iter().any(|(x, _)| *x == b) {
                        firsts.push((b, m.id.clone()));
                    }
                }
                want.extend(firsts.into_iter().take(n as usize).map(|(_, id)| id));
            }
            prop_assert_eq!(&got, &want);
            if keep.rules().iter().any(|(_, n)| n.unwrap_or(0) > 0) {
                prop_assert!(got.contains(&sorted[0].id));
            }
        }
    }
}
