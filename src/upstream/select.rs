//! Rendezvous (highest-random-weight) hashing of a user over LibreChat instances: the instance
//! a user gets when no pin says otherwise (SPEC section 9).
//!
//! Every replica must give the same answer for the same user and the same healthy set, with no
//! coordination, so the score is SHA-256 of (instance URL, user id) — fixed by the algorithm, not
//! by a per-process seed (`RandomState`) or a hasher whose output may change between Rust
//! releases (two replicas of different builds run side by side during a rollout). Removing an
//! instance moves only the users whose best score was on it; adding one moves only the users it
//! now wins.

use std::sync::Arc;

use aws_lc_rs::digest;

use super::Upstream;

/// The user's score on the instance at `url` (its normalized `librechat.upstreams` URL). The
/// zero byte keeps (`"ab"`, `"c"`) and (`"a"`, `"bc"`) apart.
pub fn score(url: &str, user_id: &str) -> u64 {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(url.as_bytes());
    context.update(&[0]);
    context.update(user_id.as_bytes());
    let digest = context.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// The candidate with the highest score for `user_id`; `None` when there is no candidate. Ties
/// (astronomically rare) go to the greater URL, so the answer never depends on the order.
pub fn rendezvous<'a>(
    user_id: &str,
    candidates: impl IntoIterator<Item = &'a Arc<Upstream>>,
) -> Option<&'a Arc<Upstream>> {
    candidates
        .into_iter()
        .map(|upstream| (score(upstream.url.as_str(), user_id), upstream))
        .max_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.url.as_str().cmp(y.url.as_str())))
        .map(|(_, upstream)| upstream)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::upstream::Pool;

    const URLS: [&str; 4] = [
        "http://10.0.0.1:3080",
        "http://10.0.0.2:3080",
        "http://10.0.0.3:3080",
        "http://10.0.0.4:3080",
    ];

    fn pool(urls: &[&str]) -> Pool {
        let urls: Vec<url::Url> = urls.iter().map(|u| u.parse().unwrap()).collect();
        Pool::new(&urls, &[]).unwrap()
    }

    fn users(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("5f0c3a1e-0000-4000-8000-{i:012}"))
    }

    fn pick(pool: &Pool, user: &str) -> String {
        rendezvous(user, pool.upstreams.iter().filter(|u| u.is_routable()))
            .unwrap()
            .url
            .to_string()
    }

    #[test]
    fn the_score_is_fixed_by_the_algorithm() {
        // Replicas of different builds must agree: this value may never change.
        assert_eq!(
            score("http://10.0.0.1:3080/", "user-1"),
            0x64df_f2bd_db4a_0b8b,
            "the rendezvous score changed: replicas of old and new builds would disagree"
        );
        assert_ne!(score("ab", "c"), score("a", "bc"));
    }

    #[tokio::test]
    async fn two_replicas_agree_whatever_their_order_of_upstreams() {
        let one = pool(&URLS);
        let mut reversed = URLS;
        reversed.reverse();
        let two = pool(&reversed);
        for user in users(1000) {
            assert_eq!(pick(&one, &user), pick(&two, &user), "{user}");
        }
    }

    #[tokio::test]
    async fn users_spread_over_every_instance() {
        let pool = pool(&URLS);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for user in users(4000) {
            *counts.entry(pick(&pool, &user)).or_default() += 1;
        }
        assert_eq!(counts.len(), 4);
        // 1000 expected each; the hash is fixed, so this is exact, not statistical.
        assert!(
            counts.values().all(|&n| (850..1150).contains(&n)),
            "{counts:?}"
        );
    }

    #[tokio::test]
    async fn losing_an_instance_moves_only_its_users() {
        let pool = pool(&URLS);
        let before: Vec<String> = users(2000).map(|u| pick(&pool, &u)).collect();
        pool.upstreams[1].record_failure(true);
        let lost = pool.upstreams[1].url.to_string();
        let mut moved = 0;
        for (user, was) in users(2000).zip(&before) {
            let now = pick(&pool, &user);
            if *was == lost {
                assert_ne!(now, lost);
                moved += 1;
            } else {
                assert_eq!(now, *was, "{user} moved though its instance is fine");
            }
        }
        assert!(moved > 0);
    }

    #[tokio::test]
    async fn adding_an_instance_moves_users_only_onto_it() {
        let three = pool(&URLS[..3]);
        let four = pool(&URLS);
        let added = four.upstreams[3].url.to_string();
        for user in users(2000) {
            let (was, now) = (pick(&three, &user), pick(&four, &user));
            assert!(now == was || now == added, "{user}: {was} -> {now}");
        }
    }

    #[test]
    fn no_candidate_is_no_answer() {
        assert!(rendezvous("user", std::iter::empty()).is_none());
    }
}
