//! The Redis key of every thing the node stores for a user, in one place, so that all keys of
//! one user share a hash tag and so one Redis Cluster slot: an append touches the user's stream
//! and meta hash in one script call, which a cluster only allows within one slot.
//!
//! Layout (`{ns}` is `{prefix}:{cluster}:`, the `{…}` after it is a literal hash tag):
//! * `{ns}mailbox:{<tag>}` — the stream;
//! * `{ns}mailbox-meta:{<tag>}` — the meta hash;
//! * `{ns}presence:{<tag>}` — the presence entry.
//!
//! Redis hashes the text between the first `{` and the first `}` after it, when that text is
//! not empty. The namespace holds no brace (`Config::validate` refuses one in `--redis-prefix`
//! and `--cluster-id`), so the first `{` is the tag's. The tag is the user with `%`, `{` and
//! `}` written as `%25`, `%7B` and `%7D`: it holds no brace whatever the user (a user `}` would
//! otherwise close the tag early, `{}}`, an empty tag, and the keys would hash apart), it is
//! one-to-one (two users never share a key), and readable for ordinary users
//! (`mailbox:{alice}`). The empty user, which the node never accepts anyway, gets the tag `%`,
//! which no other user's tag is (every `%` written is followed by two hex digits).
//!
//! The same layout serves a standalone Redis and a cluster. It replaced `mailbox:<user>`
//! (without a tag): after that upgrade the old keys are not read, so a reconnecting client is
//! told `recovered: false` and starts a new epoch, never a silent gap.

/// The hash tag of `user`'s keys: the user with `%`, `{`, `}` escaped; `%` for the empty user.
pub fn user_tag(user: &str) -> String {
    let mut tag = String::with_capacity(user.len().max(1));
    push_tag(&mut tag, user);
    tag
}

/// Appends `user`'s hash tag to `out` (see [`user_tag`]).
fn push_tag(out: &mut String, user: &str) {
    if user.is_empty() {
        out.push('%');
        return;
    }
    for c in user.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
}

/// `{namespace}{kind}:{<tag>}`, built in one allocation (two keys are made per send).
fn key(namespace: &str, kind: &str, user: &str) -> String {
    let mut key = String::with_capacity(namespace.len() + kind.len() + user.len() + 4);
    key.push_str(namespace);
    key.push_str(kind);
    key.push_str(":{");
    push_tag(&mut key, user);
    key.push('}');
    key
}

/// `user`'s mailbox stream.
pub fn stream(namespace: &str, user: &str) -> String {
    key(namespace, "mailbox", user)
}

/// `user`'s mailbox meta hash (epoch and last offset).
pub fn meta(namespace: &str, user: &str) -> String {
    key(namespace, "mailbox-meta", user)
}

/// `user`'s presence entry.
pub fn presence(namespace: &str, user: &str) -> String {
    key(namespace, "presence", user)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use redis::cluster_routing::Slot;

    use super::*;

    const NS: &str = "wscluster:default/chat:";

    /// Every key of `user` hashes to one slot.
    fn one_slot(user: &str) -> bool {
        let slot = Slot::for_key(stream(NS, user));
        slot == Slot::for_key(meta(NS, user)) && slot == Slot::for_key(presence(NS, user))
    }

    #[test]
    fn a_users_keys_share_one_slot_even_with_braces_in_the_user() {
        for user in [
            "alice", "}", "{", "{}", "}{", "a}b{c", "%", "%7D", "", "{alice}",
        ] {
            assert!(one_slot(user), "{user:?}");
            assert!(!user_tag(user).contains(['{', '}']), "{user:?}");
        }
        assert_eq!(
            stream(NS, "alice"),
            "wscluster:default/chat:mailbox:{alice}"
        );
        assert_eq!(meta(NS, "}"), "wscluster:default/chat:mailbox-meta:{%7D}");
        assert_eq!(presence(NS, ""), "wscluster:default/chat:presence:{%}");
        assert_eq!(
            stream(NS, "a%{"),
            "wscluster:default/chat:mailbox:{a%25%7B}"
        );
    }

    #[test]
    fn the_tag_is_the_hashed_part_of_the_key() {
        // Redis hashes only the tag: a key of "alice" hashes like the bare text "alice".
        assert_eq!(Slot::for_key(stream(NS, "alice")), Slot::for_key("alice"));
        assert_eq!(Slot::for_key(presence(NS, "a}b")), Slot::for_key("a%7Db"));
    }

    proptest! {
        #[test]
        fn any_user_has_one_slot_and_its_own_tag(a in ".{0,40}", b in "[{}%a]{0,8}") {
            prop_assert!(one_slot(&a));
            prop_assert!(one_slot(&b));
            let tag = user_tag(&a);
            prop_assert!(!tag.contains(['{', '}']), "tag {:?} of {:?} has a brace", tag, a);
            prop_assert!(!tag.is_empty(), "the tag of {:?} is empty", a);
            if a != b {
                prop_assert_ne!(user_tag(&a), user_tag(&b));
            }
        }
    }
}
