//! Discovering a cluster from outside: which node leads and which are ready to serve reads.
//! Shared by the gateway and the Rust client.

use serde::{Deserialize, Serialize};

use crate::wire::ClusterStatus;

/// A member as seen from outside.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    /// Node id.
    pub id: u64,
    /// URL.
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Whether its `/readyz` answered 200 when probed.
    pub ready: bool,
}

/// One discovery round's result.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// The leader's URL, if some node knew it.
    pub leader: Option<String>,
    /// Every member, with its readiness.
    pub members: Vec<MemberView>,
}

impl Topology {
    /// Where reads should go: the ready members other than the leader (or including it with
    /// `with_leader`); the leader alone when no other member is ready.
    pub fn readers(&self, with_leader: bool) -> Vec<String> {
        let is_leader = |m: &MemberView| self.leader.as_deref() == Some(m.addr.as_str());
        let ready = || self.members.iter().filter(|m| m.ready);
        let mut out: Vec<String> = ready()
            .filter(|m| with_leader || !is_leader(m))
            .map(|m| m.addr.clone())
            .collect();
        if out.is_empty() {
            out = ready()
                .filter(|m| is_leader(m))
                .map(|m| m.addr.clone())
                .collect();
        }
        out
    }
}

/// Asks every candidate for `GET /cluster` at once and believes the answer that names a leader in
/// the highest term (a leader cut off from its quorum keeps naming itself in an older term, and
/// says it is not `writable`), then probes every member's `/readyz`. `probe` should have a short
/// timeout. `None` when no candidate answered.
pub async fn discover(
    probe: &reqwest::Client,
    candidates: &[String],
    api_key: Option<&str>,
) -> Option<Topology> {
    let asks = candidates.iter().map(|url| ask(probe, url, api_key));
    let answers = futures_util::future::join_all(asks).await;
    let view = best_view(answers.into_iter().flatten());
    let view = view?;
    let probes = view.members.iter().map(|m| {
        let url = format!("{}/readyz", m.addr.trim_end_matches('/'));
        async move { matches!(probe.get(url).send().await, Ok(r) if r.status().is_success()) }
    });
    let ready = futures_util::future::join_all(probes).await;
    let members = view
        .members
        .iter()
        .zip(ready)
        .map(|(m, ready)| MemberView {
            id: m.id,
            addr: m.addr.trim_end_matches('/').to_string(),
            role: m.role.clone(),
            ready,
        })
        .collect();
    Some(Topology {
        leader: view
            .leader_addr
            .map(|l| l.trim_end_matches('/').to_string()),
        members,
    })
}

/// One node's `GET /cluster`, or `None` when it does not answer with one.
pub async fn ask(
    http: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
) -> Option<ClusterStatus> {
    let mut req = http.get(format!("{}/cluster", url.trim_end_matches('/')));
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    req.send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json::<ClusterStatus>()
        .await
        .ok()
}

/// The most trustworthy of several nodes' views: one naming a leader, in the highest term, and
/// among those one whose leader says it takes writes.
pub fn best_view(views: impl IntoIterator<Item = ClusterStatus>) -> Option<ClusterStatus> {
    views.into_iter().max_by_key(|v| {
        let self_led_without_quorum = v.leader_id == Some(v.id) && !v.writable;
        (v.leader_addr.is_some(), v.term, !self_led_without_quorum)
    })
}

/// Adds the members' URLs to `known` and drops those that are neither members nor `seeds`, so
/// that losing the seed nodes does not blind a long-lived discoverer.
pub fn merge_known(known: &mut Vec<String>, seeds: &[String], topology: &Topology) {
    for m in &topology.members {
        if !known.contains(&m.addr) {
            known.push(m.addr.clone());
        }
    }
    known.retain(|u| seeds.contains(u) || topology.members.iter().any(|m| &m.addr == u));
}

/// Trims trailing slashes.
pub fn normalise(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(addr: &str, ready: bool) -> MemberView {
        MemberView {
            id: 0,
            addr: addr.into(),
            role: "learner".into(),
            ready,
        }
    }

    #[test]
    fn readers_skip_the_leader_unless_alone() {
        let mut t = Topology {
            leader: Some("http://a".into()),
            members: vec![
                member("http://a", true),
                member("http://b", true),
                member("http://c", false),
            ],
        };
        assert_eq!(t.readers(false), ["http://b"]);
        assert_eq!(t.readers(true), ["http://a", "http://b"]);
        t.members[1].ready = false;
        assert_eq!(t.readers(false), ["http://a"]);
    }

    fn view(id: u64, term: u64, leader: Option<u64>, writable: bool) -> ClusterStatus {
        ClusterStatus {
            id,
            role: if leader == Some(id) {
                "leader"
            } else {
                "follower"
            }
            .into(),
            term,
            leader_id: leader,
            leader_addr: leader.map(|l| format!("http://n{l}")),
            applied_index: 0,
            committed_index: 0,
            last_log_index: 0,
            members: Vec::new(),
            writable,
            quorum_ack_ms: None,
            fatal: None,
        }
    }

    #[test]
    fn the_highest_term_wins_over_a_cut_off_leader() {
        // The old leader (term 3) still names itself; a follower of the new one knows term 4.
        let old = view(1, 3, Some(1), false);
        let new = view(2, 4, Some(3), false);
        let unknown = view(3, 5, None, false);
        let best = best_view([old.clone(), new, unknown]).unwrap();
        assert_eq!(best.leader_addr.as_deref(), Some("http://n3"));
        // Same term: the leader that says it takes writes wins over one that lost its quorum.
        let a = view(1, 4, Some(1), false);
        let b = view(2, 4, Some(2), true);
        assert_eq!(best_view([a, b]).unwrap().leader_id, Some(2));
        assert_eq!(best_view([old]).unwrap().leader_id, Some(1));
        assert!(best_view([]).is_none());
    }

    #[test]
    fn known_keeps_seeds_and_members_only() {
        let t = Topology {
            leader: None,
            members: vec![member("http://b", true)],
        };
        let mut known = vec!["http://seed".to_string(), "http://gone".to_string()];
        merge_known(&mut known, &["http://seed".to_string()], &t);
        assert_eq!(known, ["http://seed", "http://b"]);
    }
}
