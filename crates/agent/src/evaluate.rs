//! The scan's decisions, sans I/O: from the trusted targets of the device's products and its inventory to the list
//! of updates it needs, with a reason for every update it does not need.
//!
//! Rules, in order:
//! 1. A target whose `custom` has no `custody` key is not an update (other files of a product) and is ignored. One
//!    whose entry does not parse, whose `content` disagrees with the signed TUF length or SHA-256, or whose product is
//!    not the first segment of its path is **rejected** and reported; it is never installed.
//! 2. Of several revisions of one update id, the highest counts; lower ones are skipped (`older-revision`).
//! 3. An update already installed (any revision) is skipped (`installed`).
//! 4. Applicability is evaluated against the inventory (`not-applicable`, with the catalog's sentence).
//! 5. An update superseded by another update that is installed or needed is skipped (`superseded`). (A superseding
//!    update that does not apply to the device does not hide the one it supersedes.)
//! 6. Prerequisites: each must be installed or be satisfied by an update needed in the same scan (which is then
//!    ordered first); otherwise the update is skipped (`prerequisites-missing`, naming the groups not met). This runs
//!    to a fixed point, since skipping one update can leave another without its prerequisite.
//!
//! The needed list is ordered so that prerequisites come before the updates that need them, then by product and id.

use std::collections::{BTreeMap, BTreeSet};

use custody_catalog::{DeviceInventory, Evaluation, UpdateEntry, UpdateId};
use custody_tuf::TrustedTarget;
use serde::{Deserialize, Serialize};

/// A needed update: its catalog entry and the signed target that carries it.
#[derive(Debug, Clone)]
pub struct Needed {
    pub entry: UpdateEntry,
    pub target: TrustedTarget,
    /// Needed updates that must be installed before this one (its prerequisites met within this scan).
    pub after: Vec<UpdateId>,
}

/// The outcome of a scan's evaluation.
#[derive(Debug, Clone, Default)]
pub struct Evaluated {
    pub needed: Vec<Needed>,
    pub skipped: Vec<Skipped>,
    pub rejected: Vec<Rejected>,
}

/// An update the device does not need, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub id: UpdateId,
    pub revision: u32,
    pub title: String,
    pub product: String,
    pub path: String,
    #[serde(flatten)]
    pub reason: SkipReason,
}

/// Why an update is not needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum SkipReason {
    Installed,
    OlderRevision {
        current: u32,
    },
    NotApplicable {
        detail: String,
    },
    Superseded {
        by: UpdateId,
    },
    /// Each inner list is one prerequisite (one of its ids must be installed) that is not met.
    PrerequisitesMissing {
        missing: Vec<Vec<UpdateId>>,
    },
}

/// A target that claims to be an update but cannot be trusted as one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub path: String,
    pub problem: String,
}

/// The summary of a needed update, as listed by `custody agent list` and the local API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSummary {
    pub id: UpdateId,
    pub revision: u32,
    pub title: String,
    pub product: String,
    /// `os`, `app`, `driver`, `definitions`, `store-app`.
    pub kind: String,
    pub classification: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    pub version: String,
    /// `never`, `required`, `may`.
    pub reboot: String,
    /// The TUF target path.
    pub path: String,
    pub length: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<UpdateId>,
}

impl Needed {
    pub fn summary(&self) -> UpdateSummary {
        let entry = &self.entry;
        UpdateSummary {
            id: entry.id(),
            revision: entry.revision(),
            title: entry.title().to_owned(),
            product: entry.product().to_string(),
            kind: entry.kind().as_str().to_owned(),
            classification: entry.classification().as_str().to_owned(),
            severity: entry.severity().map(|s| s.as_str().to_owned()),
            version: entry.version().to_string(),
            reboot: entry.reboot().as_str().to_owned(),
            path: self.target.path().to_owned(),
            length: self.target.file().length,
            after: self.after.clone(),
        }
    }
}

/// Parses the catalog entry of a target and checks it against the signed target. `Ok(None)`: not an update.
pub fn parse_entry(target: &TrustedTarget) -> Result<Option<UpdateEntry>, String> {
    let Some(custom) = &target.file().custom else { return Ok(None) };
    if custom.get(custody_catalog::NAMESPACE).is_none() {
        return Ok(None);
    }
    let entry = UpdateEntry::parse(custom).map_err(|e| e.to_string())?;
    let content = entry.content();
    if content.length.get() != target.file().length {
        return Err(format!(
            "custody.content.length {} disagrees with the signed target length {}",
            content.length,
            target.file().length
        ));
    }
    match target.file().hashes.get("sha256") {
        Some(signed) if *signed == content.sha256.to_string() => {}
        Some(signed) => {
            return Err(format!("custody.content.sha256 {} disagrees with the signed sha256 {signed}", content.sha256));
        }
        None => return Err("the signed target has no sha256 hash".into()),
    }
    let first_segment = target.path().split('/').next().unwrap_or_default();
    if first_segment != entry.product().as_str() {
        return Err(format!(
            "custody.product {} is not the path's product directory {first_segment:?}",
            entry.product()
        ));
    }
    Ok(Some(entry))
}

/// Evaluates `targets` (of the products scanned) against `device`.
pub fn evaluate(device: &DeviceInventory, targets: Vec<TrustedTarget>) -> Evaluated {
    let mut out = Evaluated::default();
    // Rule 1 and 2: parse, then keep the highest revision of each id.
    let mut latest: BTreeMap<UpdateId, (UpdateEntry, TrustedTarget)> = BTreeMap::new();
    let mut older = Vec::new();
    for target in targets {
        match parse_entry(&target) {
            Ok(None) => {}
            Err(problem) => out.rejected.push(Rejected { path: target.path().to_owned(), problem }),
            Ok(Some(entry)) => match latest.remove(&entry.id()) {
                Some((kept, kept_target)) if kept.revision() >= entry.revision() => {
                    older.push((entry, target));
                    latest.insert(kept.id(), (kept, kept_target));
                }
                Some(replaced) => {
                    older.push(replaced);
                    latest.insert(entry.id(), (entry, target));
                }
                None => {
                    latest.insert(entry.id(), (entry, target));
                }
            },
        }
    }
    for (entry, target) in older {
        let current = latest.get(&entry.id()).map(|(e, _)| e.revision()).unwrap_or_default();
        out.skipped.push(skipped(&entry, &target, SkipReason::OlderRevision { current }));
    }

    // Rules 3 and 4. An installed update supersedes too: the older updates it names are not needed.
    let mut superseded_by_installed: BTreeMap<UpdateId, UpdateId> = BTreeMap::new();
    for (id, (entry, _)) in latest.iter().filter(|(id, _)| device.installed_updates.contains(id)) {
        superseded_by_installed.extend(entry.supersedes().iter().map(|old| (*old, *id)));
    }
    let mut candidates: BTreeMap<UpdateId, (UpdateEntry, TrustedTarget)> = BTreeMap::new();
    for (id, (entry, target)) in latest {
        if device.installed_updates.contains(&id) {
            out.skipped.push(skipped(&entry, &target, SkipReason::Installed));
            continue;
        }
        if let Some(by) = superseded_by_installed.get(&id) {
            out.skipped.push(skipped(&entry, &target, SkipReason::Superseded { by: *by }));
            continue;
        }
        match entry.applicability().evaluate(device) {
            Evaluation::Applicable => {
                candidates.insert(id, (entry, target));
            }
            Evaluation::NotApplicable(why) => {
                out.skipped.push(skipped(&entry, &target, SkipReason::NotApplicable { detail: why.to_string() }))
            }
        }
    }

    // Rules 5 and 6, to a fixed point.
    loop {
        let superseding: BTreeMap<UpdateId, UpdateId> = candidates
            .values()
            .flat_map(|(entry, _)| entry.supersedes().iter().map(move |old| (*old, entry.id())))
            .collect();
        let mut removed = Vec::new();
        for (id, (entry, _)) in &candidates {
            if let Some(by) = superseding.get(id).filter(|by| *by != id) {
                removed.push((*id, SkipReason::Superseded { by: *by }));
                continue;
            }
            let missing: Vec<Vec<UpdateId>> = entry
                .unmet_prerequisites(device)
                .filter(|p| !p.ids().iter().any(|pid| candidates.contains_key(pid) && !superseding.contains_key(pid)))
                .map(|p| p.ids().to_vec())
                .collect();
            if !missing.is_empty() {
                removed.push((*id, SkipReason::PrerequisitesMissing { missing }));
            }
        }
        if removed.is_empty() {
            break;
        }
        for (id, reason) in removed {
            if let Some((entry, target)) = candidates.remove(&id) {
                out.skipped.push(skipped(&entry, &target, reason));
            }
        }
    }

    // Order: prerequisites first (depth-first over the needed ones), then product and id.
    let mut order: Vec<UpdateId> = candidates.keys().copied().collect();
    order.sort_by(|a, b| (candidates[a].0.product(), a).cmp(&(candidates[b].0.product(), b)));
    let mut placed = BTreeSet::new();
    for id in order {
        place(id, &candidates, device, &mut placed, &mut out.needed);
    }
    out.skipped.sort_by(|a, b| (&a.product, a.id).cmp(&(&b.product, b.id)));
    out
}

/// Appends `id` after the needed updates it depends on.
fn place(
    id: UpdateId,
    candidates: &BTreeMap<UpdateId, (UpdateEntry, TrustedTarget)>,
    device: &DeviceInventory,
    placed: &mut BTreeSet<UpdateId>,
    needed: &mut Vec<Needed>,
) {
    if !placed.insert(id) {
        return;
    }
    let (entry, target) = &candidates[&id];
    let mut after = Vec::new();
    for prerequisite in entry.unmet_prerequisites(device) {
        // The fixed point above guarantees one of the ids is a candidate.
        if let Some(first) = prerequisite.ids().iter().find(|pid| candidates.contains_key(pid)) {
            place(*first, candidates, device, placed, needed);
            after.push(*first);
        }
    }
    needed.push(Needed { entry: entry.clone(), target: target.clone(), after });
}

fn skipped(entry: &UpdateEntry, target: &TrustedTarget, reason: SkipReason) -> Skipped {
    Skipped {
        id: entry.id(),
        revision: entry.revision(),
        title: entry.title().to_owned(),
        product: entry.product().to_string(),
        path: target.path().to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const A: &str = "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90";
    const B: &str = "9b2d7c1e-0a4f-4f43-8d1a-6c3e5b7a9f12";
    const C: &str = "5e8a0d3b-7c21-4b9e-8f6a-1d2c3b4a5e6f";
    const D: &str = "c47e2a19-3b5d-4e8f-a1c2-9d8e7f6a5b4c";

    fn id(s: &str) -> UpdateId {
        s.parse().unwrap()
    }

    /// A signed-looking target for an `app` update of `acme` with `extra` fields merged into the entry.
    fn target(update: &str, revision: u32, extra: Value) -> TrustedTarget {
        let content = format!("{update} {revision}").into_bytes();
        let sha256 = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &content));
        let mut entry = json!({
            "schema": 1, "id": update, "revision": revision, "title": format!("update {update}"),
            "description": "", "kind": "app", "product": "acme", "classification": "security", "version": "2.0",
            "release_date": "2026-11-01", "applicability": {}, "reboot": "never",
            "installer": {"handler": "archive", "format": "tar", "destination": "/opt/acme"},
            "content": {"length": content.len(), "sha256": sha256},
        });
        for (k, v) in extra.as_object().unwrap() {
            entry[k] = v.clone();
        }
        let file = custody_tuf::TargetFile::describing(&content, Some(json!({ "custody": entry })));
        TrustedTarget::for_tests(format!("acme/{update}-{revision}.tar"), "acme".into(), file)
    }

    fn device(installed: &[&str]) -> DeviceInventory {
        DeviceInventory {
            os_family: "debian".parse().unwrap(),
            os_version: Some("12".parse().unwrap()),
            arch: "x86_64".parse().unwrap(),
            products: BTreeMap::new(),
            hardware_ids: BTreeSet::new(),
            installed_updates: installed.iter().map(|s| id(s)).collect(),
        }
    }

    fn reasons(evaluated: &Evaluated) -> Vec<(String, SkipReason)> {
        evaluated
            .skipped
            .iter()
            .map(|s| (format!("{}@{}", &s.id.to_string()[..4], s.revision), s.reason.clone()))
            .collect()
    }

    #[test]
    fn revisions_installed_and_applicability() {
        let targets = vec![
            target(A, 1, json!({})),
            target(A, 2, json!({})),
            target(B, 1, json!({})),
            target(C, 1, json!({"applicability": {"os": {"family": "fedora"}}})),
        ];
        let out = evaluate(&device(&[B]), targets);
        let needed: Vec<_> = out.needed.iter().map(|n| (n.entry.id(), n.entry.revision())).collect();
        assert_eq!(needed, [(id(A), 2)]);
        assert_eq!(
            reasons(&out),
            [
                ("3f0c@1".into(), SkipReason::OlderRevision { current: 2 }),
                (
                    "5e8a@1".into(),
                    SkipReason::NotApplicable { detail: "OS family is debian, the update is for fedora".into() }
                ),
                ("9b2d@1".into(), SkipReason::Installed),
            ]
        );
        assert!(out.rejected.is_empty());
    }

    #[test]
    fn supersedence_by_needed_and_by_installed() {
        let targets = vec![
            target(A, 1, json!({})),
            target(B, 1, json!({"supersedes": [A]})),
            target(C, 1, json!({})),
            target(D, 1, json!({"supersedes": [C]})),
        ];
        let out = evaluate(&device(&[D]), targets);
        let needed: Vec<_> = out.needed.iter().map(|n| n.entry.id()).collect();
        assert_eq!(needed, [id(B)]);
        let r = reasons(&out);
        assert!(r.contains(&("3f0c@1".into(), SkipReason::Superseded { by: id(B) })), "{r:?}");
        assert!(r.contains(&("5e8a@1".into(), SkipReason::Superseded { by: id(D) })), "{r:?}");
    }

    #[test]
    fn prerequisites_order_and_missing_ones_cascade() {
        let targets = vec![
            // B needs A, which is needed in the same scan: A is placed first.
            target(B, 1, json!({"prerequisites": [{"update": A}]})),
            target(A, 1, json!({})),
            // C needs D, which is in no catalog; then nothing needing C can be installed either.
            target(C, 1, json!({"prerequisites": [{"update": D}]})),
        ];
        let out = evaluate(&device(&[]), targets);
        let needed: Vec<_> = out.needed.iter().map(|n| (n.entry.id(), n.after.clone())).collect();
        assert_eq!(needed, [(id(A), vec![]), (id(B), vec![id(A)])]);
        assert_eq!(reasons(&out), [("5e8a@1".into(), SkipReason::PrerequisitesMissing { missing: vec![vec![id(D)]] })]);
        let summary = serde_json::to_value(out.needed[1].summary()).unwrap();
        assert_eq!(summary["after"], json!([A]));
        assert_eq!(summary["kind"], "app");
    }

    #[test]
    fn disagreeing_or_misplaced_entries_are_rejected() {
        let altered = |target: TrustedTarget, path: Option<&str>, alter: &dyn Fn(&mut custody_tuf::TargetFile)| {
            let mut file = target.file().clone();
            alter(&mut file);
            TrustedTarget::for_tests(path.unwrap_or(target.path()).to_owned(), target.role().to_owned(), file)
        };
        let wrong_length = altered(target(A, 1, json!({})), None, &|file| file.length += 1);
        let wrong_hash = altered(target(B, 1, json!({})), None, &|file| {
            file.hashes.insert("sha256".into(), "00".repeat(32));
        });
        let wrong_product = altered(target(C, 1, json!({})), Some("other/x.tar"), &|_| {});
        let bad_entry = TrustedTarget::for_tests(
            "acme/bad".into(),
            "acme".into(),
            custody_tuf::TargetFile::describing(b"x", Some(json!({"custody": {"schema": 1, "shell": "rm"}}))),
        );
        let not_an_update = TrustedTarget::for_tests(
            "acme/readme".into(),
            "acme".into(),
            custody_tuf::TargetFile::describing(b"x", None),
        );
        let out = evaluate(&device(&[]), vec![wrong_length, wrong_hash, wrong_product, bad_entry, not_an_update]);
        assert!(out.needed.is_empty() && out.skipped.is_empty());
        let problems: Vec<_> = out.rejected.iter().map(|r| r.problem.as_str()).collect();
        assert!(problems[0].contains("disagrees with the signed target length"), "{problems:?}");
        assert!(problems[1].contains("disagrees with the signed sha256"), "{problems:?}");
        assert!(problems[2].contains("not the path's product directory"), "{problems:?}");
        assert!(problems[3].starts_with("custody."), "{problems:?}");
        assert_eq!(problems.len(), 4);
    }
}
