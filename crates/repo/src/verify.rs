//! Verification of a whole published repository, as a client sees it.
//!
//! The published metadata goes through [`TrustedSet`] in the client's order: `1.root.json` and every newer root,
//! `timestamp.json`, the snapshot and top-level targets it names, then every delegated role, each through the
//! delegator that names it. Every listed target is then looked up with the client's search (which must end at the
//! role that lists it), and each of its consistent-snapshot files is checked against the signed length and hashes.
//! A problem is recorded and verification goes on with whatever it can still check, so that one run reports every
//! problem. Expiry is checked separately against the repository's clock, so that an expired role does not hide
//! other problems.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use custody_catalog::UpdateEntry;
use custody_tuf::snapshot_merkle::{MerkleCommitment, SnapshotProof, TIMESTAMP_FIELD, proof_path};
use custody_tuf::{RoleLimits, SearchStep, Signed, TargetSearch, TrustedSet};
use serde::Serialize;

use crate::Repository;
use crate::layout::encode_role_name;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A client would refuse something, or a file is missing or wrong.
    Error,
    /// Nothing fails yet: metadata expires soon, or changes wait for signatures.
    Warning,
}

/// One problem found by [`Repository::verify`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// What it concerns: a metadata file, a role, or a target path.
    pub subject: String,
    pub message: String,
}

/// Everything [`Repository::verify`] found, and what it checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// Root versions walked through, from 1.
    pub root_version: u64,
    /// Targets roles loaded and verified (the top-level one included).
    pub roles_verified: usize,
    /// Targets whose files were checked.
    pub targets_checked: usize,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.severity == Severity::Error).count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.iter().filter(|p| p.severity == Severity::Warning).count()
    }

    fn error(&mut self, subject: impl Into<String>, message: impl std::fmt::Display) {
        self.problems.push(Problem {
            severity: Severity::Error,
            subject: subject.into(),
            message: message.to_string(),
        });
    }

    fn warning(&mut self, subject: impl Into<String>, message: impl std::fmt::Display) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            subject: subject.into(),
            message: message.to_string(),
        });
    }
}

/// Delegated roles beyond this many are not walked (the hashed bins of a huge catalog are far fewer).
const MAX_ROLES: usize = 1 << 20;

impl Repository {
    /// Loads the published repository as a client would, checks every target file, and reports every problem.
    pub fn verify(&self) -> Report {
        let mut report = Report::default();
        let layout = self.layout();
        let now = self.now();
        let metadata_dir = layout.metadata_dir();
        let read = |name: &str| std::fs::read(metadata_dir.join(name));

        // Expiry is checked below against `now`; the client workflow runs at the epoch so that it checks the rest.
        let first = match read("1.root.json") {
            Ok(bytes) => bytes,
            Err(e) => {
                report.error("1.root.json", format!("cannot be read: {e}"));
                return report;
            }
        };
        let mut trusted = match TrustedSet::new(&first, jiff::Timestamp::UNIX_EPOCH) {
            Ok(trusted) => trusted,
            Err(e) => {
                report.error("1.root.json", e);
                return report;
            }
        };
        let mut last_root = first;
        for version in 2.. {
            let name = format!("{version}.root.json");
            let Ok(bytes) = read(&name) else { break };
            if let Err(e) = trusted.update_root(&bytes) {
                report.error(name, format!("{e}; clients stop at root version {}", version - 1));
                break;
            }
            last_root = bytes;
        }
        report.root_version = trusted.root().version;
        match read("root.json") {
            Ok(copy) if copy == last_root => {}
            Ok(_) => report.error("root.json", format!("differs from {}.root.json", report.root_version)),
            Err(e) => report.error("root.json", format!("cannot be read: {e}")),
        }
        self.check_expiry(&mut report, "root", trusted.root().metadata().signed(), now);

        let timestamp = match read("timestamp.json") {
            Ok(bytes) => trusted.update_timestamp(&bytes).map(|()| bytes.len()),
            Err(e) => {
                report.error("timestamp.json", format!("cannot be read: {e}"));
                return report;
            }
        };
        if let Err(e) = timestamp {
            report.error("timestamp.json", e);
            return report;
        }
        let Some(timestamp) = trusted.timestamp().cloned() else { return report };
        self.check_expiry(&mut report, "timestamp", &*timestamp, now);
        let snapshot_version = timestamp.snapshot_meta().version;
        let snapshot_name = format!("{snapshot_version}.snapshot.json");
        match read(&snapshot_name).map(|bytes| trusted.update_snapshot(&bytes, false)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                report.error(snapshot_name, e);
                return report;
            }
            Err(e) => {
                report.error(snapshot_name, format!("cannot be read: {e}"));
                return report;
            }
        }
        let Some(snapshot) = trusted.snapshot().cloned() else { return report };
        self.check_expiry(&mut report, "snapshot", &*snapshot, now);
        check_merkle_proofs(
            &mut report,
            &metadata_dir,
            &timestamp.metadata().signed().unrecognized,
            &snapshot.meta,
            snapshot_version,
        );

        // Every targets role, depth first, each through the delegator that names it.
        let mut loaded: Vec<String> = Vec::new();
        let mut stack: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut seen: HashSet<String> = HashSet::new();
        while let Some((role, delegator)) = stack.pop() {
            if loaded.len() >= MAX_ROLES {
                report.warning(role, format!("not verified: more than {MAX_ROLES} roles"));
                break;
            }
            if !seen.insert(role.clone()) {
                if let Err(e) = trusted.is_trusted_via(&role, &delegator) {
                    report.error(role, format!("as delegated by {delegator}: {e}"));
                }
                continue;
            }
            let file = format!("{role}.json");
            let Some(version) = snapshot.meta.get(&file).map(|m| m.version) else {
                report.error(role, format!("delegated by {delegator}, but snapshot does not list {file}"));
                continue;
            };
            let name = format!("{version}.{}.json", encode_role_name(&role));
            let bytes = match read(&name) {
                Ok(bytes) => bytes,
                Err(e) => {
                    report.error(name, format!("cannot be read: {e}"));
                    continue;
                }
            };
            let targets = match trusted.update_delegated_targets(&bytes, &role, &delegator) {
                Ok(targets) => targets.clone(),
                Err(e) => {
                    report.error(name, e);
                    continue;
                }
            };
            self.check_expiry(&mut report, &role, &*targets, now);
            let mut children = Vec::new();
            if let Some(delegations) = &targets.delegations {
                if let Some(roles) = &delegations.roles {
                    children.extend(roles.iter().map(|r| r.name.clone()));
                } else if let Some(succinct) = &delegations.succinct_roles {
                    let width = succinct.bit_length.div_ceil(4) as usize;
                    let count = 1u64 << succinct.bit_length;
                    if count > MAX_ROLES as u64 {
                        report.warning(role.clone(), format!("its {count} succinct bins are not verified"));
                    } else {
                        children.extend((0..count).map(|bin| format!("{}-{bin:0width$x}", succinct.name_prefix)));
                    }
                }
            }
            stack.extend(children.into_iter().rev().map(|child| (child, role.clone())));
            loaded.push(role);
        }
        report.roles_verified = loaded.len();

        // Every target: found by a client's search in the role that lists it, and its files intact.
        let limits = RoleLimits::default();
        for role in &loaded {
            let Some(targets) = trusted.targets(role).cloned() else { continue };
            for (path, file) in &targets.targets {
                let mut search = TargetSearch::new(path, limits.max_delegations);
                match search.step(&mut trusted) {
                    Ok(SearchStep::Found(found)) if found.role() == role => {}
                    Ok(SearchStep::Found(found)) => {
                        report.error(
                            path.clone(),
                            format!("listed by {role}, but clients find {}'s entry first", found.role()),
                        );
                    }
                    Ok(SearchStep::Load { role: missing, .. }) => {
                        report.error(path.clone(), format!("a client's search needs role {missing}, which failed"));
                    }
                    Ok(SearchStep::NotFound) => report.error(
                        path.clone(),
                        format!("listed by {role}, but a client's search never reaches {role} for this path"),
                    ),
                    Ok(SearchStep::TooManyRoles(n)) => {
                        report.error(path.clone(), format!("a client's search gives up after {n} roles"));
                    }
                    Err(e) => report.error(path.clone(), e),
                }
                for consistent in file.consistent_paths(path) {
                    let on_disk = layout.targets_dir().join(&consistent);
                    match std::fs::read(&on_disk) {
                        Ok(data) => {
                            if let Err(e) = file.check(path, &data) {
                                report.error(format!("targets/{consistent}"), e);
                            }
                        }
                        Err(e) => report.error(format!("targets/{consistent}"), format!("cannot be read: {e}")),
                    }
                }
                if let Some(custom) = file.custom.as_ref().filter(|c| c.get(custody_catalog::NAMESPACE).is_some()) {
                    match UpdateEntry::parse(custom) {
                        Ok(entry) => {
                            let content = entry.content();
                            if content.length.get() != file.length
                                || Some(content.sha256.to_string().as_str()) != file.sha256()
                            {
                                report.error(path.clone(), "custom.custody.content does not match the target");
                            }
                        }
                        Err(e) => report.error(path.clone(), format!("custom.custody: {e}")),
                    }
                }
                report.targets_checked += 1;
            }
        }

        self.check_staged(&mut report);
        report
    }

    /// An error if `signed` expired, a warning if less than a quarter of its validity period is left.
    fn check_expiry<T: Signed>(&self, report: &mut Report, role: &str, signed: &T, now: jiff::Timestamp) {
        let expires = signed.expires();
        let shown = custody_tuf::format_expires(expires);
        if signed.is_expired(now) {
            report.error(role, format!("expired at {shown}"));
            return;
        }
        let left = expires.as_second() - now.as_second();
        let period = i64::try_from(self.config().expiry_of(role).seconds()).unwrap_or(i64::MAX);
        if left < period / 4 {
            let hint = match role {
                "timestamp" | "snapshot" => "run `custody repo refresh`",
                _ => "sign a new version",
            };
            report.warning(role, format!("expires at {shown}, in {} hours: {hint}", left / 3_600));
        }
    }

    /// A warning for each role waiting in `staged/`.
    fn check_staged(&self, report: &mut Report) {
        match self.status() {
            Ok(status) => {
                for waiting in status.pending {
                    report.warning(
                        waiting.role.clone(),
                        format!(
                            "version {} waits in staged/: {} of {} signatures from {} keys",
                            waiting.version, waiting.signed, waiting.threshold, waiting.signers
                        ),
                    );
                }
            }
            Err(e) => report.error("staged/", e),
        }
    }
}

/// Checks the snapshot Merkle proofs that timestamp commits to: one per snapshot entry, each proving that entry.
fn check_merkle_proofs(
    report: &mut Report,
    metadata_dir: &Path,
    timestamp_fields: &BTreeMap<String, serde_json::Value>,
    meta: &BTreeMap<String, custody_tuf::MetaFile>,
    snapshot_version: u64,
) {
    let Some(value) = timestamp_fields.get(TIMESTAMP_FIELD) else {
        report.warning("timestamp.json", format!("has no {TIMESTAMP_FIELD}: no snapshot Merkle proofs to check"));
        return;
    };
    let commitment: MerkleCommitment = match serde_json::from_value(value.clone()) {
        Ok(c) => c,
        Err(e) => {
            report.error("timestamp.json", format!("{TIMESTAMP_FIELD} is malformed: {e}"));
            return;
        }
    };
    if commitment.leaves != meta.len() as u64 {
        report.error(
            "timestamp.json",
            format!("{TIMESTAMP_FIELD} has {} leaves, snapshot {}", commitment.leaves, meta.len()),
        );
    }
    for (name, entry) in meta {
        let relative = proof_path(snapshot_version, name);
        let verified = std::fs::read(metadata_dir.join(&relative))
            .map_err(|e| format!("cannot be read: {e}"))
            .and_then(|bytes| SnapshotProof::verify(&bytes, &commitment, snapshot_version).map_err(|e| e.to_string()));
        match verified {
            Ok(proof) if proof.name == *name && proof.meta == *entry => {}
            Ok(proof) => report.error(relative, format!("proves {} rather than snapshot's {name}", proof.name)),
            Err(e) => report.error(relative, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use custody_tuf::PrivateKeyKind;

    use crate::{AddTarget, DelegateOptions, DelegationKind, ExpiryConfig, InitOptions, KeySpec, Passphrase};

    use super::*;

    fn repository(dir: &Path) -> Repository {
        let one = KeySpec::single(PrivateKeyKind::Ed25519);
        let options =
            InitOptions { root: one, targets: one, snapshot: one, timestamp: one, expiry: ExpiryConfig::default() };
        let (mut repo, _) = Repository::init(dir, &options, Passphrase::none()).unwrap();
        repo.delegate(&DelegateOptions {
            name: "bins".into(),
            delegator: "targets".into(),
            kind: DelegationKind::Bins(4),
            terminating: true,
            keys: one,
            expiry: None,
            move_targets: false,
        })
        .unwrap();
        let targets = (0..8).map(|i| AddTarget {
            path: format!("p/{i}.bin"),
            content: format!("content {i}").into_bytes(),
            custom: None,
        });
        repo.add_targets(targets, None).unwrap();
        repo
    }

    fn subjects(report: &Report, severity: Severity) -> Vec<String> {
        report.problems.iter().filter(|p| p.severity == severity).map(|p| p.subject.clone()).collect()
    }

    #[test]
    fn reports_every_problem_in_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = repository(dir.path());
        assert_eq!(repo.verify().problems, []);
        let metadata = dir.path().join("metadata");

        // 1. a target file with other bytes; 2. a bin's metadata gone; 3. a Merkle proof altered;
        // 4. the unversioned root.json stale; 5. time moved past the timestamp's expiry.
        let bytes_changed = std::fs::read_dir(dir.path().join("targets/p")).unwrap().next().unwrap().unwrap().path();
        std::fs::remove_file(&bytes_changed).unwrap();
        std::fs::write(&bytes_changed, b"content X").unwrap();
        let bin = std::fs::read_dir(&metadata)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.starts_with("2.bins-"))
            .unwrap();
        std::fs::remove_file(metadata.join(&bin)).unwrap();
        let snapshot_version = 3;
        let proof = metadata.join(proof_path(snapshot_version, "targets.json"));
        let text = std::fs::read_to_string(&proof).unwrap().replace("\"version\":2", "\"version\":9");
        std::fs::write(&proof, text).unwrap();
        std::fs::write(metadata.join("root.json"), b"{}").unwrap();
        repo.set_time(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(25));

        let report = repo.verify();
        let errors = subjects(&report, Severity::Error);
        let changed = bytes_changed.strip_prefix(dir.path()).unwrap().display().to_string();
        assert!(errors.contains(&changed), "{errors:?}");
        assert!(errors.contains(&bin), "{errors:?}");
        assert!(errors.iter().any(|s| s.starts_with("merkle/3/targets")), "{errors:?}");
        assert!(errors.contains(&"root.json".to_owned()), "{errors:?}");
        assert!(errors.contains(&"timestamp".to_owned()), "{errors:?}");
        assert_eq!(report.roles_verified, 4, "the other bins and targets were still verified");
        // Six of the snapshot's seven days remain: no expiry warning for it.
        assert!(!subjects(&report, Severity::Warning).contains(&"snapshot".to_owned()));
    }

    #[test]
    fn warns_when_little_validity_is_left_and_about_staged_roles() {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = repository(dir.path());
        repo.set_time(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(20));
        let report = repo.verify();
        assert_eq!(report.errors(), 0, "{:?}", report.problems);
        assert_eq!(subjects(&report, Severity::Warning), ["timestamp"]);
    }
}
