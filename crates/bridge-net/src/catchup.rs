//! Sans IO: the walk back through a room's history after the bridge may have missed some of it, that the
//! connectors share (the XMPP archive, XEP-0313; the Matrix timeline, `/messages?dir=b`).
//!
//! The connector reads the room's history backwards, page by page, and feeds each page (oldest first) to a
//! [`Walk`] with what is known of each message id ([`Known`]); the walk asks for the page before it until a page
//! holds an anchor, the history's start, or its bound of pages. It then hands back every message after the
//! newest anchor that is not known, oldest first, to be passed on as if it had come live.
//!
//! An anchor is a message the core took from this room ([`Known::FromLeg`]). One taken live while the catch-up
//! is pending ([`Known::Live`]) is none: newer messages can get through while an older one was lost, so a newer
//! taken message says nothing about what came before it. A delivery of the bridge's own ([`Known::Delivery`])
//! anchors only when nothing taken from the room was found: what the room said just before it may have been
//! missed. Without any anchor (the bridge's first join of the room, or more missed than the bound) nothing is
//! handed back: a first link must not flood the portal with old history; [`Done::no_anchor`] says so.

/// What the core (and the account) know of an event of the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// The core took it from this room (before the catch-up was called for): an anchor.
    FromLeg,
    /// The core took it from this room while a catch-up was pending: not replayed, and no anchor.
    Live,
    /// One of the bridge's own deliveries to the room: an anchor only if nothing was taken from the room.
    Delivery,
}

/// The next step of a catch-up.
#[derive(Debug)]
pub enum Step<T> {
    /// Ask for the page before this one (the token or id the history gave for it).
    More(String),
    /// Finished.
    Done(Done<T>),
}

/// What one catch-up found.
#[derive(Debug)]
pub struct Done<T> {
    /// What to replay, oldest first.
    pub replay: Vec<T>,
    /// How many messages the walk read.
    pub seen: usize,
    /// Messages were read but none anchors: what was missed (if anything) is not replayed.
    pub no_anchor: bool,
}

/// One room's walk back through its history; `T` is the message (kept as given, handed back as it is).
#[derive(Debug)]
pub struct Walk<T> {
    /// Every message read so far, oldest first, with its id.
    seen: Vec<(String, T)>,
    pages: usize,
    max_pages: usize,
}

impl<T> Walk<T> {
    /// A walk that reads at most `max_pages` pages.
    pub fn new(max_pages: usize) -> Self {
        Self { seen: Vec::new(), pages: 0, max_pages }
    }

    /// No page has been read yet.
    pub fn is_fresh(&self) -> bool {
        self.pages == 0
    }

    /// Takes the next (older) page, oldest first, and where the page before it starts (`None` at the history's
    /// start); `known` says what is known of a message id.
    pub fn page(
        &mut self,
        mut oldest_first: Vec<(String, T)>,
        before: Option<String>,
        known: impl Fn(&str) -> Option<Known>,
    ) -> Step<T> {
        self.pages += 1;
        let anchored = oldest_first.iter().any(|(id, _)| known(id) == Some(Known::FromLeg));
        let empty = oldest_first.is_empty();
        oldest_first.append(&mut self.seen);
        self.seen = oldest_first;
        match before {
            Some(before) if !anchored && !empty && self.pages < self.max_pages => Step::More(before),
            _ => Step::Done(self.finish(known)),
        }
    }

    /// Ends the walk (also when the history refused a page) with what it has seen.
    pub fn finish(&mut self, known: impl Fn(&str) -> Option<Known>) -> Done<T> {
        let seen = std::mem::take(&mut self.seen);
        let count = seen.len();
        let taken = seen.iter().rposition(|(id, _)| known(id) == Some(Known::FromLeg));
        let anchor = taken.or_else(|| seen.iter().rposition(|(id, _)| known(id) == Some(Known::Delivery)));
        let replay = match anchor {
            Some(at) => seen.into_iter().skip(at + 1).filter(|(id, _)| known(id).is_none()).map(|(_, e)| e).collect(),
            None => Vec::new(),
        };
        Done { replay, seen: count, no_anchor: anchor.is_none() && count > 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many pages the tests' walks read at most.
    const MAX_PAGES: usize = 20;

    /// A page from ids listed oldest first (the message is its id).
    fn page(oldest_first: &[&str]) -> Vec<(String, String)> {
        oldest_first.iter().map(|id| ((*id).to_owned(), (*id).to_owned())).collect()
    }

    fn walk() -> Walk<String> {
        Walk::new(MAX_PAGES)
    }

    /// Taken from the room: ids starting with `t`; taken live during the catch-up: `l`; delivered here: `d`;
    /// anything else is unknown.
    fn kind(id: &str) -> Option<Known> {
        match id.chars().next() {
            Some('t') => Some(Known::FromLeg),
            Some('l') => Some(Known::Live),
            Some('d') => Some(Known::Delivery),
            _ => None,
        }
    }

    fn tok(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn replays_what_follows_the_newest_event_taken_oldest_first() {
        let Step::Done(d) = walk().page(page(&["a", "ta", "tb", "c", "e"]), tok("p1"), kind) else {
            panic!("an anchored page ends the walk")
        };
        assert_eq!(d.replay, ["c", "e"]);
        assert_eq!(d.seen, 5);
        assert!(!d.no_anchor);
        let Step::Done(d) = walk().page(page(&["a", "tb"]), tok("p1"), kind) else { panic!("anchored") };
        assert!(d.replay.is_empty(), "nothing missed, nothing replayed");
    }

    #[test]
    fn events_taken_live_are_neither_anchors_nor_replayed() {
        // The lost transaction held u1; later pushes (l2, l3) went through before the catch-up.
        let Step::Done(d) = walk().page(page(&["t0", "u1", "l2", "u4", "l3"]), tok("p1"), kind) else {
            panic!("anchored on t0")
        };
        assert_eq!(d.replay, ["u1", "u4"]);
        // Live events only: the walk goes on.
        let mut w = walk();
        assert!(matches!(w.page(page(&["u1", "l2"]), tok("p1"), kind), Step::More(t) if t == "p1"));
        let Step::Done(d) = w.page(page(&["t0"]), tok("p2"), kind) else { panic!("anchored") };
        assert_eq!(d.replay, ["u1"]);
    }

    #[test]
    fn a_delivery_anchors_only_when_nothing_was_taken_from_the_room() {
        // Deliveries do not hide what the room said before them.
        let Step::Done(d) = walk().page(page(&["t0", "u1", "d1", "u2"]), tok("p1"), kind) else {
            panic!("anchored on t0")
        };
        assert_eq!(d.replay, ["u1", "u2"], "the delivery is not replayed, the rest is");
        // A page with deliveries only does not end the walk.
        let mut w = walk();
        assert!(matches!(w.page(page(&["d5", "u6"]), tok("p1"), kind), Step::More(_)));
        // Nothing taken up to the timeline's start: the newest delivery anchors.
        let Step::Done(d) = w.page(page(&["u0", "d1", "u1"]), None, kind) else { panic!("timeline start") };
        assert_eq!(d.replay, ["u6"]);
        assert!(!d.no_anchor);
        // A live event is no fallback anchor either.
        let Step::Done(d) = walk().page(page(&["d0", "u1", "l1"]), None, kind) else { panic!("start") };
        assert_eq!(d.replay, ["u1"]);
    }

    #[test]
    fn pages_back_until_an_anchor_and_replays_across_pages_in_order() {
        let mut w = walk();
        let Step::More(before) = w.page(page(&["e", "f"]), tok("p1"), kind) else { panic!("no anchor yet") };
        assert_eq!(before, "p1");
        let Step::Done(d) = w.page(page(&["a", "tb", "c", "g"]), tok("p2"), kind) else {
            panic!("anchored on the second page")
        };
        assert_eq!(d.replay, ["c", "g", "e", "f"]);
        assert_eq!(d.seen, 6);
    }

    #[test]
    fn without_an_anchor_nothing_is_replayed_and_the_walk_is_bounded() {
        let none = |_: &str| None;
        let Step::Done(d) = walk().page(page(&["a", "b"]), None, none) else { panic!("timeline start") };
        assert!(d.replay.is_empty() && d.no_anchor, "a first link replays nothing");
        let mut w = walk();
        for n in 1..MAX_PAGES {
            assert!(matches!(w.page(page(&["x"]), tok("p"), none), Step::More(_)), "page {n}");
        }
        let Step::Done(d) = w.page(page(&["x"]), tok("p"), none) else { panic!("capped") };
        assert!(d.replay.is_empty() && d.no_anchor, "more missed than the bound: a gap");
        let Step::Done(d) = walk().page(Vec::new(), tok("p"), none) else { panic!("empty") };
        assert!(!d.no_anchor, "an empty timeline is no gap");
    }
}
