//! Target search over the delegation graph: pre-order, depth first, in listed order, loading roles lazily.

use std::collections::HashSet;

use crate::{Error, TrustedSet, TrustedTarget};

/// What a [`TargetSearch`] needs next.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchStep {
    /// Load `role` (local copy first, else download), passing it to
    /// [`TrustedSet::update_delegated_targets`] with this `delegator`; then call [`TargetSearch::step`] again.
    Load { role: String, delegator: String },
    /// A trusted role lists the target.
    Found(TrustedTarget),
    /// No role that may sign this path lists it.
    NotFound,
    /// The search visited this many roles without an answer and gave up (a bound against hostile delegation graphs).
    TooManyRoles(usize),
}

/// A lazy walk of the delegation graph for one target path.
#[derive(Debug)]
pub struct TargetSearch {
    path: String,
    /// Stack of (role, delegator) still to visit; the top is visited next.
    to_visit: Vec<(String, String)>,
    visited: HashSet<(String, String)>,
    max_roles: usize,
}

impl TargetSearch {
    /// Starts at the top-level targets role; at most `max_roles` roles are visited.
    pub fn new(path: &str, max_roles: usize) -> Self {
        Self {
            path: path.to_owned(),
            to_visit: vec![("targets".to_owned(), "root".to_owned())],
            visited: HashSet::new(),
            max_roles,
        }
    }

    /// Advances the search as far as the trusted set allows.
    pub fn step(&mut self, trusted: &mut TrustedSet) -> Result<SearchStep, Error> {
        while let Some((role, delegator)) = self.to_visit.last().cloned() {
            if self.visited.len() >= self.max_roles {
                return Ok(SearchStep::TooManyRoles(self.max_roles));
            }
            if self.visited.contains(&(role.clone(), delegator.clone())) {
                self.to_visit.pop();
                continue;
            }
            if !trusted.is_trusted_via(&role, &delegator)? {
                return Ok(SearchStep::Load { role, delegator });
            }
            self.to_visit.pop();
            // Invariant: `is_trusted_via` returned true, so the role is loaded.
            let targets = trusted.targets(&role).expect("role is loaded");
            if let Some(file) = targets.targets.get(&self.path) {
                return Ok(SearchStep::Found(TrustedTarget::new(self.path.clone(), role, file.clone())));
            }
            let children = targets.delegations.as_ref().map(|d| d.roles_for_target(&self.path)).unwrap_or_default();
            self.visited.insert((role.clone(), delegator));
            let mut next = Vec::new();
            for (child, terminating) in children {
                next.push((child, role.clone()));
                if terminating {
                    self.to_visit.clear();
                    break;
                }
            }
            self.to_visit.extend(next.into_iter().rev());
        }
        Ok(SearchStep::NotFound)
    }
}

/// What a [`TargetListing`] needs next.
#[derive(Debug, Clone, PartialEq)]
pub enum ListingStep {
    /// Load this role as for [`SearchStep::Load`], then call [`TargetListing::step`] again.
    Load { role: String, delegator: String },
    /// Every target under the directory, each as the delegation search resolves it.
    Done(Vec<TrustedTarget>),
    /// More roles than allowed would have to be visited.
    TooManyRoles(usize),
}

/// Lists every target under a top-level directory (`<dir>/...`, e.g. one product of the catalog), loading only
/// the roles whose delegations can hold such paths.
///
/// Each candidate path is then resolved by an ordinary [`TargetSearch`], so a listed target is exactly what a
/// lookup of that path would return: a role that lists paths outside its delegation cannot inject them.
#[derive(Debug)]
pub struct TargetListing {
    dir: String,
    to_visit: Vec<(String, String)>,
    visited: HashSet<(String, String)>,
    candidates: std::collections::BTreeSet<String>,
    max_roles: usize,
}

impl TargetListing {
    pub fn new(dir: &str, max_roles: usize) -> Self {
        Self {
            dir: dir.trim_end_matches('/').to_owned(),
            to_visit: vec![("targets".to_owned(), "root".to_owned())],
            visited: HashSet::new(),
            candidates: Default::default(),
            max_roles,
        }
    }

    pub fn step(&mut self, trusted: &mut TrustedSet) -> Result<ListingStep, Error> {
        while let Some((role, delegator)) = self.to_visit.last().cloned() {
            if self.visited.contains(&(role.clone(), delegator.clone())) {
                self.to_visit.pop();
                continue;
            }
            if self.visited.len() >= self.max_roles {
                return Ok(ListingStep::TooManyRoles(self.max_roles));
            }
            if !trusted.is_trusted_via(&role, &delegator)? {
                return Ok(ListingStep::Load { role, delegator });
            }
            self.to_visit.pop();
            // Invariant: `is_trusted_via` returned true, so the role is loaded.
            let targets = trusted.targets(&role).expect("role is loaded");
            let prefix = format!("{}/", self.dir);
            self.candidates.extend(targets.targets.keys().filter(|p| p.starts_with(&prefix)).cloned());
            // A role with more children than may be visited in all ends the listing here: it would run out of
            // visits anyway, as a listing visits every child.
            let children = match targets.delegations.as_ref().map(|d| d.roles_for_dir(&self.dir, self.max_roles)) {
                None => Vec::new(),
                Some(Some(children)) => children,
                Some(None) => return Ok(ListingStep::TooManyRoles(self.max_roles)),
            };
            self.visited.insert((role.clone(), delegator));
            self.to_visit.extend(children.into_iter().rev().map(|child| (child, role.clone())));
        }
        let mut found = Vec::with_capacity(self.candidates.len());
        for path in &self.candidates {
            let mut search = TargetSearch::new(path, usize::MAX);
            // Every role a search can need was loaded above, unless a delegation path pattern only matches deeper
            // paths than the listing considered; such a candidate is left out rather than fetched.
            if let SearchStep::Found(target) = search.step(trusted)? {
                found.push(target);
            }
        }
        Ok(ListingStep::Done(found))
    }
}
