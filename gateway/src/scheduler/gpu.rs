//! GPU placement on the node's GPU pool: which card an instance gets, how much of it, and the
//! account's cap on physical cards in use.
//!
//! Cards are numbered in config order across types (the number is what `CUDA_VISIBLE_DEVICES`
//! names). A request for `gpu = { type, memory_gb }` gets one card of that type by best fit: the
//! card left with the least free memory afterwards, lowest index on ties, so large holes stay
//! open for large requests and small instances pack together. Once `cards_max` cards carry a
//! share, only those cards can take more.
//!
//! The lock is a plain `std::sync::Mutex` held for a scan over a handful of cards; metrics are
//! published after it is released.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Gauge: GB of GPU memory handed out as shares, label `gpu_type`.
pub const GPU_MEMORY_ALLOCATED: &str = "fngate_gpu_memory_allocated_gb";
/// Gauge: physical cards carrying at least one share (what the account cap counts).
pub const GPU_CARDS_IN_USE: &str = "fngate_gpu_cards_in_use";

/// A node never has anywhere near this many cards; the bound keeps a typo in `count` from
/// allocating gigabytes of bookkeeping.
const MAX_CARDS: usize = 1024;

/// One `[[gpu]]` entry of the config: `count` cards of `memory_gb` each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardType {
    pub name: String,
    pub memory_gb: u32,
    pub count: u32,
}

/// One instance's slice of one card. Hand it back with `GpuPool::release` exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuShare {
    /// Global card index, the value of `CUDA_VISIBLE_DEVICES`.
    pub card: u32,
    pub gpu_type: Arc<str>,
    pub memory_gb: u32,
    pub card_memory_gb: u32,
}

impl GpuShare {
    /// `memory_gb / card_memory_gb`, e.g. 0.5; 0 for a (misconfigured) card of 0 GB.
    pub fn fraction(&self) -> f64 {
        if self.card_memory_gb == 0 {
            return 0.0;
        }
        f64::from(self.memory_gb) / f64::from(self.card_memory_gb)
    }

    /// The environment an instance gets so it can find its card and size its memory pool
    /// (e.g. vLLM's `--gpu-memory-utilization` from the fraction).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CUDA_VISIBLE_DEVICES", self.card.to_string()),
            ("FNGATE_GPU_TYPE", self.gpu_type.to_string()),
            ("FNGATE_GPU_MEMORY_GB", self.memory_gb.to_string()),
            ("FNGATE_GPU_CARD_MEMORY_GB", self.card_memory_gb.to_string()),
            (
                "FNGATE_GPU_MEMORY_FRACTION",
                format!("{:.4}", self.fraction()),
            ),
        ]
    }
}

/// Why an instance could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceError {
    /// No card of this type in the pool.
    UnknownType { gpu_type: String },
    /// Asks more than one card of the type has.
    TooLarge {
        gpu_type: String,
        memory_gb: u32,
        card_memory_gb: u32,
    },
    /// Every card of the type is too full, or the free ones are beyond the account's card cap.
    NoCapacity {
        gpu_type: String,
        memory_gb: u32,
        cards_in_use: u32,
        cards_max: u32,
    },
}

impl fmt::Display for PlaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlaceError::UnknownType { gpu_type } => {
                write!(f, "the node's GPU pool has no {gpu_type} card")
            }
            PlaceError::TooLarge {
                gpu_type,
                memory_gb,
                card_memory_gb,
            } => write!(
                f,
                "{memory_gb} GB exceeds {gpu_type} cards ({card_memory_gb} GB)"
            ),
            PlaceError::NoCapacity {
                gpu_type,
                memory_gb,
                cards_in_use,
                cards_max,
            } => write!(
                f,
                "no {gpu_type} card has {memory_gb} GB free \
                 ({cards_in_use} of {cards_max} cards allowed by the account in use)"
            ),
        }
    }
}

impl std::error::Error for PlaceError {}

/// A snapshot of one card, for the admin API and dashboards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardState {
    pub index: u32,
    pub gpu_type: String,
    pub memory_gb: u32,
    pub allocated_gb: u32,
    pub shares: u32,
}

#[derive(Debug)]
struct TypeInfo {
    name: Arc<str>,
    /// The largest card of the type: a request above it can never fit, whatever is released.
    max_card_gb: u32,
    cards: u32,
}

#[derive(Debug)]
struct Card {
    index: u32,
    type_idx: usize,
    memory_gb: u32,
    allocated_gb: u32,
    /// Sizes of the live shares. A share carries no identity, so release matches by
    /// (card, size): a release with no live share of that size is a stray and is ignored.
    live: Vec<u32>,
}

impl Card {
    fn free_gb(&self) -> u32 {
        self.memory_gb.saturating_sub(self.allocated_gb)
    }

    fn in_use(&self) -> bool {
        !self.live.is_empty()
    }
}

#[derive(Debug)]
struct Inner {
    cards: Vec<Card>,
    cards_in_use: u32,
}

impl Inner {
    fn allocated_for(&self, type_idx: usize) -> u32 {
        self.cards
            .iter()
            .filter(|c| c.type_idx == type_idx)
            .fold(0u32, |sum, c| sum.saturating_add(c.allocated_gb))
    }
}

/// The node's GPU cards and the shares placed on them.
#[derive(Debug)]
pub struct GpuPool {
    types: Vec<TypeInfo>,
    cards_max: u32,
    inner: Mutex<Inner>,
}

impl GpuPool {
    /// Builds the pool from the config's `[[gpu]]` entries. Entries naming a type already seen
    /// add cards to that type (numbering still follows config order).
    pub fn new(types: &[CardType], cards_max: u32) -> GpuPool {
        let mut infos: Vec<TypeInfo> = Vec::new();
        let mut cards = Vec::new();
        for t in types {
            let type_idx = match infos.iter().position(|i| *i.name == *t.name) {
                Some(idx) => idx,
                None => {
                    infos.push(TypeInfo {
                        name: Arc::from(t.name.as_str()),
                        max_card_gb: 0,
                        cards: 0,
                    });
                    infos.len().saturating_sub(1)
                }
            };
            let room = MAX_CARDS.saturating_sub(cards.len());
            let count = usize::try_from(t.count).unwrap_or(usize::MAX).min(room);
            for _ in 0..count {
                cards.push(Card {
                    index: u32::try_from(cards.len()).unwrap_or(u32::MAX),
                    type_idx,
                    memory_gb: t.memory_gb,
                    allocated_gb: 0,
                    live: Vec::new(),
                });
            }
            if let Some(info) = infos.get_mut(type_idx)
                && count > 0
            {
                info.max_card_gb = info.max_card_gb.max(t.memory_gb);
                info.cards = info
                    .cards
                    .saturating_add(u32::try_from(count).unwrap_or(u32::MAX));
            }
        }
        let pool = GpuPool {
            types: infos,
            cards_max,
            inner: Mutex::new(Inner {
                cards,
                cards_in_use: 0,
            }),
        };
        // Zeros from the start, so dashboards show every type before the first placement.
        for info in &pool.types {
            publish_type(info, 0);
        }
        metrics::gauge!(GPU_CARDS_IN_USE).set(0.0);
        pool
    }

    /// Places one share of `memory_gb` on a card of `gpu_type`.
    ///
    /// A request of 0 GB is treated as 1 GB: an instance on a card always costs memory (its CUDA
    /// context), and zero-sized shares would let any number of instances pile onto one card.
    pub fn place(&self, gpu_type: &str, memory_gb: u32) -> Result<GpuShare, PlaceError> {
        let memory_gb = memory_gb.max(1);
        let Some((type_idx, info)) = self
            .types
            .iter()
            .enumerate()
            .find(|(_, t)| &*t.name == gpu_type && t.cards > 0)
        else {
            return Err(PlaceError::UnknownType {
                gpu_type: gpu_type.to_string(),
            });
        };
        if memory_gb > info.max_card_gb {
            return Err(PlaceError::TooLarge {
                gpu_type: gpu_type.to_string(),
                memory_gb,
                card_memory_gb: info.max_card_gb,
            });
        }

        let (share, type_allocated, in_use) = {
            let mut inner = self.lock();
            let cap_reached = inner.cards_in_use >= self.cards_max;
            let mut best: Option<(usize, u32)> = None;
            for (pos, card) in inner.cards.iter().enumerate() {
                if card.type_idx != type_idx || (cap_reached && !card.in_use()) {
                    continue;
                }
                let Some(left) = card.free_gb().checked_sub(memory_gb) else {
                    continue;
                };
                // Strictly smaller keeps the lowest index on ties.
                if best.is_none_or(|(_, best_left)| left < best_left) {
                    best = Some((pos, left));
                }
            }
            let cards_in_use = inner.cards_in_use;
            let Some(card) = best.and_then(|(pos, _)| inner.cards.get_mut(pos)) else {
                return Err(PlaceError::NoCapacity {
                    gpu_type: gpu_type.to_string(),
                    memory_gb,
                    cards_in_use,
                    cards_max: self.cards_max,
                });
            };
            let newly_in_use = !card.in_use();
            card.allocated_gb = card.allocated_gb.saturating_add(memory_gb);
            card.live.push(memory_gb);
            let share = GpuShare {
                card: card.index,
                gpu_type: Arc::clone(&info.name),
                memory_gb,
                card_memory_gb: card.memory_gb,
            };
            if newly_in_use {
                inner.cards_in_use = inner.cards_in_use.saturating_add(1);
            }
            (share, inner.allocated_for(type_idx), inner.cards_in_use)
        };
        publish_type(info, type_allocated);
        metrics::gauge!(GPU_CARDS_IN_USE).set(f64::from(in_use));
        Ok(share)
    }

    /// Frees a share; releasing one that is not placed (double release) is ignored, never underflows.
    pub fn release(&self, share: &GpuShare) {
        let published = {
            let mut inner = self.lock();
            let Some(card) = usize::try_from(share.card)
                .ok()
                .and_then(|pos| inner.cards.get_mut(pos))
            else {
                return;
            };
            let type_idx = card.type_idx;
            let Some(info) = self.types.get(type_idx) else {
                return;
            };
            // A share from another pool (e.g. before a config reload) must not free this one's memory.
            if *info.name != *share.gpu_type || card.memory_gb != share.card_memory_gb {
                return;
            }
            let Some(at) = card.live.iter().position(|&gb| gb == share.memory_gb) else {
                return;
            };
            card.live.swap_remove(at);
            card.allocated_gb = card.allocated_gb.saturating_sub(share.memory_gb);
            if !card.in_use() {
                inner.cards_in_use = inner.cards_in_use.saturating_sub(1);
            }
            (info, inner.allocated_for(type_idx), inner.cards_in_use)
        };
        let (info, type_allocated, in_use) = published;
        publish_type(info, type_allocated);
        metrics::gauge!(GPU_CARDS_IN_USE).set(f64::from(in_use));
    }

    pub fn cards(&self) -> Vec<CardState> {
        let inner = self.lock();
        inner
            .cards
            .iter()
            .map(|c| CardState {
                index: c.index,
                gpu_type: self
                    .types
                    .get(c.type_idx)
                    .map(|t| t.name.to_string())
                    .unwrap_or_default(),
                memory_gb: c.memory_gb,
                allocated_gb: c.allocated_gb,
                shares: u32::try_from(c.live.len()).unwrap_or(u32::MAX),
            })
            .collect()
    }

    pub fn cards_in_use(&self) -> u32 {
        self.lock().cards_in_use
    }

    pub fn cards_max(&self) -> u32 {
        self.cards_max
    }

    /// (type, total allocated GB over its cards) for each type, in config order.
    pub fn allocated_by_type(&self) -> Vec<(String, u32)> {
        let inner = self.lock();
        self.types
            .iter()
            .enumerate()
            .map(|(idx, t)| (t.name.to_string(), inner.allocated_for(idx)))
            .collect()
    }

    /// True when no cards are configured.
    pub fn is_empty(&self) -> bool {
        self.lock().cards.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under the lock can panic half-way through an update, so a poisoned lock still
        // guards consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn publish_type(info: &TypeInfo, allocated_gb: u32) {
    metrics::gauge!(GPU_MEMORY_ALLOCATED, "gpu_type" => Arc::clone(&info.name))
        .set(f64::from(allocated_gb));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn a10(count: u32) -> CardType {
        CardType {
            name: "A10".into(),
            memory_gb: 24,
            count,
        }
    }

    fn ct(name: &str, memory_gb: u32, count: u32) -> CardType {
        CardType {
            name: name.into(),
            memory_gb,
            count,
        }
    }

    fn check_invariants(pool: &GpuPool, live: &[GpuShare]) {
        let cards = pool.cards();
        let mut in_use = 0;
        for card in &cards {
            assert!(card.allocated_gb <= card.memory_gb, "{card:?}");
            let on_card: Vec<&GpuShare> = live.iter().filter(|s| s.card == card.index).collect();
            let sum: u32 = on_card.iter().map(|s| s.memory_gb).sum();
            assert_eq!(sum, card.allocated_gb, "card {}", card.index);
            assert_eq!(on_card.len() as u32, card.shares, "card {}", card.index);
            for s in on_card {
                assert_eq!(*s.gpu_type, *card.gpu_type);
                assert_eq!(s.card_memory_gb, card.memory_gb);
            }
            if card.shares > 0 {
                in_use += 1;
            }
        }
        assert_eq!(in_use, pool.cards_in_use());
        assert!(pool.cards_in_use() <= pool.cards_max());
        let mut by_type: HashMap<String, u32> = HashMap::new();
        for card in &cards {
            *by_type.entry(card.gpu_type.clone()).or_default() += card.allocated_gb;
        }
        for (name, gb) in pool.allocated_by_type() {
            assert_eq!(by_type.get(&name).copied().unwrap_or(0), gb, "{name}");
        }
    }

    #[test]
    fn two_halves_pack_onto_one_card() {
        let pool = GpuPool::new(&[a10(2)], 10);
        let a = pool.place("A10", 12).unwrap();
        let b = pool.place("A10", 12).unwrap();
        assert_eq!((a.card, b.card), (0, 0));
        assert_eq!(pool.cards_in_use(), 1);
        let cards = pool.cards();
        assert_eq!((cards[0].allocated_gb, cards[0].shares), (24, 2));
        assert_eq!((cards[1].allocated_gb, cards[1].shares), (0, 0));
        check_invariants(&pool, &[a, b]);
    }

    #[test]
    fn third_share_opens_a_second_card_when_the_cap_allows() {
        let pool = GpuPool::new(&[a10(2)], 2);
        let shares: Vec<_> = (0..3).map(|_| pool.place("A10", 12).unwrap()).collect();
        assert_eq!(shares[2].card, 1);
        assert_eq!(pool.cards_in_use(), 2);
        check_invariants(&pool, &shares);
    }

    #[test]
    fn third_share_refused_at_a_cap_of_one_card() {
        let pool = GpuPool::new(&[a10(2)], 1);
        let a = pool.place("A10", 12).unwrap();
        let b = pool.place("A10", 12).unwrap();
        let err = pool.place("A10", 12).unwrap_err();
        assert_eq!(
            err,
            PlaceError::NoCapacity {
                gpu_type: "A10".into(),
                memory_gb: 12,
                cards_in_use: 1,
                cards_max: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "no A10 card has 12 GB free (1 of 1 cards allowed by the account in use)"
        );
        assert_eq!(pool.cards_in_use(), 1);
        check_invariants(&pool, &[a, b]);
    }

    #[test]
    fn at_the_cap_cards_in_use_still_take_shares() {
        let pool = GpuPool::new(&[a10(2)], 1);
        let a = pool.place("A10", 8).unwrap();
        let b = pool.place("A10", 8).unwrap();
        assert_eq!((a.card, b.card), (0, 0));
        // Card 1 is free and a tighter fit would not matter: it is beyond the cap.
        assert!(matches!(
            pool.place("A10", 10),
            Err(PlaceError::NoCapacity { .. })
        ));
        let c = pool.place("A10", 8).unwrap();
        assert_eq!(c.card, 0);
        check_invariants(&pool, &[a, b, c]);
    }

    #[test]
    fn no_capacity_when_every_card_is_full() {
        let pool = GpuPool::new(&[a10(2)], 10);
        let shares: Vec<_> = (0..2).map(|_| pool.place("A10", 20).unwrap()).collect();
        let err = pool.place("A10", 5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no A10 card has 5 GB free (2 of 10 cards allowed by the account in use)"
        );
        check_invariants(&pool, &shares);
    }

    #[test]
    fn best_fit_takes_the_tightest_card() {
        // 20 GB free on card 0, 10 GB free on card 1: the tighter card wins over the lower index.
        let pool = GpuPool::new(&[ct("X", 20, 1), ct("X", 10, 1)], 10);
        let s = pool.place("X", 8).unwrap();
        assert_eq!((s.card, s.card_memory_gb), (1, 10));
        check_invariants(&pool, &[s]);

        // The same on equal cards once their fill differs: card 0 at 10 GB free, card 1 at 20.
        let pool = GpuPool::new(&[a10(2)], 10);
        let a = pool.place("A10", 14).unwrap();
        let b = pool.place("A10", 14).unwrap();
        let c = pool.place("A10", 10).unwrap();
        assert_eq!((a.card, b.card, c.card), (0, 1, 0));
        pool.release(&b);
        let d = pool.place("A10", 4).unwrap();
        assert_eq!(d.card, 1);
        pool.release(&c);
        let free: Vec<u32> = pool
            .cards()
            .iter()
            .map(|c| c.memory_gb - c.allocated_gb)
            .collect();
        assert_eq!(free, [10, 20]);
        let s = pool.place("A10", 8).unwrap();
        assert_eq!(s.card, 0);
        // Now 2 and 20 free: 3 GB only fits card 1.
        let t = pool.place("A10", 3).unwrap();
        assert_eq!(t.card, 1);
        check_invariants(&pool, &[a, d, s, t]);
    }

    #[test]
    fn best_fit_across_card_sizes_and_ties() {
        let pool = GpuPool::new(&[ct("L4", 24, 1), ct("L4", 16, 2)], 10);
        // 12 GB leaves 12 on card 0, 4 on cards 1 and 2: tie broken by lowest index.
        let a = pool.place("L4", 12).unwrap();
        assert_eq!((a.card, a.card_memory_gb), (1, 16));
        let b = pool.place("L4", 12).unwrap();
        assert_eq!(b.card, 2);
        let c = pool.place("L4", 20).unwrap();
        assert_eq!((c.card, c.card_memory_gb), (0, 24));
        assert_eq!(
            pool.place("L4", 25).unwrap_err(),
            PlaceError::TooLarge {
                gpu_type: "L4".into(),
                memory_gb: 25,
                card_memory_gb: 24
            }
        );
        assert_eq!(pool.allocated_by_type(), vec![("L4".to_string(), 44)]);
        check_invariants(&pool, &[a, b, c]);
    }

    #[test]
    fn release_frees_and_allows_replacement() {
        let pool = GpuPool::new(&[a10(1)], 1);
        let a = pool.place("A10", 16).unwrap();
        assert!(pool.place("A10", 16).is_err());
        pool.release(&a);
        assert_eq!(pool.cards_in_use(), 0);
        assert_eq!(pool.cards()[0].allocated_gb, 0);
        assert_eq!(pool.cards()[0].shares, 0);
        let b = pool.place("A10", 16).unwrap();
        assert_eq!(b.card, 0);
        check_invariants(&pool, &[b]);
    }

    #[test]
    fn release_of_the_last_share_frees_the_card_for_the_cap() {
        let pool = GpuPool::new(&[a10(1), ct("T4", 16, 1)], 1);
        let a = pool.place("A10", 4).unwrap();
        assert!(matches!(
            pool.place("T4", 4),
            Err(PlaceError::NoCapacity { .. })
        ));
        pool.release(&a);
        let t = pool.place("T4", 4).unwrap();
        assert_eq!(t.card, 1);
        check_invariants(&pool, &[t]);
    }

    #[test]
    fn double_release_is_harmless() {
        let pool = GpuPool::new(&[a10(1)], 10);
        let a = pool.place("A10", 12).unwrap();
        let b = pool.place("A10", 8).unwrap();
        pool.release(&a);
        pool.release(&a);
        assert_eq!(pool.cards()[0].allocated_gb, 8);
        assert_eq!(pool.cards_in_use(), 1);
        pool.release(&b);
        pool.release(&b);
        pool.release(&a);
        assert_eq!(pool.cards()[0].allocated_gb, 0);
        assert_eq!(pool.cards()[0].shares, 0);
        assert_eq!(pool.cards_in_use(), 0);
        check_invariants(&pool, &[]);
    }

    #[test]
    fn stray_shares_are_ignored() {
        let pool = GpuPool::new(&[a10(1)], 10);
        let a = pool.place("A10", 12).unwrap();
        let strays = [
            GpuShare {
                card: 7,
                ..a.clone()
            },
            GpuShare {
                card: u32::MAX,
                ..a.clone()
            },
            GpuShare {
                gpu_type: Arc::from("T4"),
                ..a.clone()
            },
            GpuShare {
                card_memory_gb: 48,
                ..a.clone()
            },
            GpuShare {
                memory_gb: 13,
                ..a.clone()
            },
            GpuShare {
                memory_gb: u32::MAX,
                ..a.clone()
            },
        ];
        for s in &strays {
            pool.release(s);
        }
        assert_eq!(pool.cards()[0].allocated_gb, 12);
        assert_eq!(pool.cards_in_use(), 1);
        check_invariants(&pool, &[a]);
    }

    #[test]
    fn too_large_and_unknown_type() {
        let pool = GpuPool::new(&[a10(2), ct("H100", 80, 0)], 10);
        let err = pool.place("A10", 30).unwrap_err();
        assert_eq!(
            err,
            PlaceError::TooLarge {
                gpu_type: "A10".into(),
                memory_gb: 30,
                card_memory_gb: 24
            }
        );
        assert_eq!(err.to_string(), "30 GB exceeds A10 cards (24 GB)");
        let err = pool.place("V100", 1).unwrap_err();
        assert_eq!(
            err,
            PlaceError::UnknownType {
                gpu_type: "V100".into()
            }
        );
        assert_eq!(err.to_string(), "the node's GPU pool has no V100 card");
        // A type listed with no cards has no card to place on.
        assert!(matches!(
            pool.place("H100", 1),
            Err(PlaceError::UnknownType { .. })
        ));
        // Type names are exact.
        assert!(matches!(
            pool.place("a10", 1),
            Err(PlaceError::UnknownType { .. })
        ));
        assert_eq!(pool.cards_in_use(), 0);
        let _: &dyn std::error::Error = &err;
    }

    #[test]
    fn indexes_continue_across_types() {
        let pool = GpuPool::new(&[a10(2), ct("L4", 24, 1), ct("H100", 80, 2)], 10);
        let idx: Vec<(u32, String)> = pool
            .cards()
            .into_iter()
            .map(|c| (c.index, c.gpu_type))
            .collect();
        assert_eq!(
            idx,
            vec![
                (0, "A10".into()),
                (1, "A10".into()),
                (2, "L4".into()),
                (3, "H100".into()),
                (4, "H100".into())
            ]
        );
        let h = pool.place("H100", 40).unwrap();
        assert_eq!(h.card, 3);
        let l = pool.place("L4", 24).unwrap();
        assert_eq!(l.card, 2);
        let h2 = pool.place("H100", 41).unwrap();
        assert_eq!(h2.card, 4);
        assert_eq!(
            pool.allocated_by_type(),
            vec![("A10".into(), 0), ("L4".into(), 24), ("H100".into(), 81)]
        );
        check_invariants(&pool, &[h, l, h2]);
    }

    #[test]
    fn env_is_exact() {
        let pool = GpuPool::new(&[a10(1), ct("L4", 24, 2)], 10);
        let _ = pool.place("L4", 6).unwrap();
        let s = pool.place("L4", 12).unwrap();
        assert_eq!(
            s.env(),
            vec![
                ("CUDA_VISIBLE_DEVICES", "1".to_string()),
                ("FNGATE_GPU_TYPE", "L4".to_string()),
                ("FNGATE_GPU_MEMORY_GB", "12".to_string()),
                ("FNGATE_GPU_CARD_MEMORY_GB", "24".to_string()),
                ("FNGATE_GPU_MEMORY_FRACTION", "0.5000".to_string()),
            ]
        );
    }

    #[test]
    fn cap_zero_refuses_everything() {
        let pool = GpuPool::new(&[a10(2)], 0);
        assert_eq!(pool.cards_max(), 0);
        let err = pool.place("A10", 1).unwrap_err();
        assert_eq!(
            err,
            PlaceError::NoCapacity {
                gpu_type: "A10".into(),
                memory_gb: 1,
                cards_in_use: 0,
                cards_max: 0
            }
        );
        assert_eq!(pool.cards_in_use(), 0);
    }

    #[test]
    fn fraction_and_its_formatting() {
        let share = |memory_gb, card_memory_gb| GpuShare {
            card: 0,
            gpu_type: Arc::from("A10"),
            memory_gb,
            card_memory_gb,
        };
        let frac = |s: &GpuShare| s.env()[4].1.clone();
        assert_eq!(share(12, 24).fraction(), 0.5);
        assert_eq!(frac(&share(12, 24)), "0.5000");
        assert_eq!(frac(&share(24, 24)), "1.0000");
        assert_eq!(frac(&share(1, 3)), "0.3333");
        assert_eq!(frac(&share(2, 3)), "0.6667");
        assert_eq!(frac(&share(1, 80)), "0.0125");
        assert_eq!(frac(&share(0, 0)), "0.0000");
        assert_eq!(share(5, 0).fraction(), 0.0);
        assert!(share(u32::MAX, 1).fraction().is_finite());
    }

    #[test]
    fn zero_gb_counts_as_one() {
        let pool = GpuPool::new(&[ct("T4", 2, 1)], 10);
        let a = pool.place("T4", 0).unwrap();
        assert_eq!(a.memory_gb, 1);
        let b = pool.place("T4", 0).unwrap();
        assert!(pool.place("T4", 0).is_err());
        check_invariants(&pool, &[a, b]);
    }

    #[test]
    fn empty_and_degenerate_pools() {
        let pool = GpuPool::new(&[], 10);
        assert!(pool.is_empty());
        assert!(pool.cards().is_empty());
        assert!(pool.allocated_by_type().is_empty());
        assert!(matches!(
            pool.place("A10", 1),
            Err(PlaceError::UnknownType { .. })
        ));

        let pool = GpuPool::new(&[ct("A10", 24, 0)], 10);
        assert!(pool.is_empty());
        assert_eq!(pool.allocated_by_type(), vec![("A10".into(), 0)]);

        // Cards of 0 GB exist but nothing fits on them.
        let pool = GpuPool::new(&[ct("X", 0, 1)], 10);
        assert!(!pool.is_empty());
        assert!(matches!(
            pool.place("X", 1),
            Err(PlaceError::TooLarge { .. })
        ));

        // A huge count is bounded instead of exhausting memory.
        let pool = GpuPool::new(&[ct("A10", 24, u32::MAX), ct("L4", 24, 3)], u32::MAX);
        assert_eq!(pool.cards().len(), MAX_CARDS);
        assert!(matches!(
            pool.place("L4", 1),
            Err(PlaceError::UnknownType { .. })
        ));
        let s = pool.place("A10", u32::MAX);
        assert!(matches!(s, Err(PlaceError::TooLarge { .. })));

        // Max-size requests on max-size cards do not overflow.
        let pool = GpuPool::new(&[ct("Big", u32::MAX, 1)], 1);
        let a = pool.place("Big", u32::MAX).unwrap();
        assert_eq!(a.fraction(), 1.0);
        assert!(pool.place("Big", 1).is_err());
        pool.release(&a);
        pool.release(&a);
        check_invariants(&pool, &[]);
    }

    #[test]
    fn poisoned_lock_does_not_panic() {
        let pool = Arc::new(GpuPool::new(&[a10(1)], 1));
        let p = Arc::clone(&pool);
        let _ = std::thread::spawn(move || {
            let _guard = p.inner.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(pool.inner.is_poisoned());
        let a = pool.place("A10", 4).unwrap();
        pool.release(&a);
        assert_eq!(pool.cards_in_use(), 0);
    }

    #[test]
    fn concurrent_place_and_release_keep_the_books() {
        let pool = Arc::new(GpuPool::new(&[a10(4), ct("L4", 24, 2)], 3));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let ty = if (i + t) % 3 == 0 { "L4" } else { "A10" };
                        if let Ok(s) = pool.place(ty, 1 + (i * 7 + t) % 12) {
                            assert!(pool.cards_in_use() <= 3);
                            pool.release(&s);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.cards_in_use(), 0);
        check_invariants(&pool, &[]);
    }

    /// Deterministic pseudo-random place/release sequences (Knuth's MMIX LCG).
    #[test]
    fn randomized_place_release_keeps_invariants() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |bound: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % bound.max(1)
        };
        let names = ["A10", "L4", "H100", "nope"];
        for round in 0..40 {
            let cap = next(6) as u32;
            let pool = GpuPool::new(
                &[
                    ct("A10", 24, 1 + next(3) as u32),
                    ct("L4", 16 + next(9) as u32, next(3) as u32),
                    ct("H100", 80, 1 + next(2) as u32),
                ],
                cap,
            );
            let mut live: Vec<GpuShare> = Vec::new();
            for _ in 0..400 {
                match next(10) {
                    0..=5 => {
                        let ty = names[next(names.len() as u64) as usize];
                        let gb = next(30) as u32;
                        match pool.place(ty, gb) {
                            Ok(s) => {
                                assert_eq!(&*s.gpu_type, ty);
                                assert_eq!(s.memory_gb, gb.max(1));
                                live.push(s);
                            }
                            Err(PlaceError::NoCapacity { cards_in_use, .. }) => {
                                assert!(cards_in_use <= cap);
                                // Refused only if no eligible card really had room.
                                let at_cap = pool.cards_in_use() >= cap;
                                let fits = pool.cards().iter().any(|c| {
                                    c.gpu_type == ty
                                        && (!at_cap || c.shares > 0)
                                        && c.memory_gb - c.allocated_gb >= gb.max(1)
                                });
                                assert!(!fits, "round {round}: {ty} {gb} refused");
                            }
                            Err(PlaceError::TooLarge { card_memory_gb, .. }) => {
                                assert!(gb > card_memory_gb);
                            }
                            Err(PlaceError::UnknownType { .. }) => {
                                assert!(pool.cards().iter().all(|c| c.gpu_type != ty));
                            }
                        }
                    }
                    6..=8 if !live.is_empty() => {
                        let s = live.swap_remove(next(live.len() as u64) as usize);
                        pool.release(&s);
                        if next(4) == 0 {
                            // A double release must change nothing that a live share owns;
                            // only test it when no identical share is live (shares carry no id).
                            if !live.contains(&s) {
                                pool.release(&s);
                            }
                        }
                    }
                    _ => {}
                }
                check_invariants(&pool, &live);
            }
            for s in live.drain(..) {
                pool.release(&s);
            }
            check_invariants(&pool, &[]);
            assert_eq!(pool.cards_in_use(), 0);
        }
    }

    mod metrics_capture {
        use metrics::{
            Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
            Unit,
        };
        use std::collections::BTreeMap;
        use std::sync::{Arc, Mutex};

        /// Records the last value set on each gauge, keyed by "name{label=value}".
        #[derive(Default)]
        pub struct Capture(pub Arc<Mutex<BTreeMap<String, f64>>>);

        struct Handle(String, Arc<Mutex<BTreeMap<String, f64>>>);

        impl GaugeFn for Handle {
            fn increment(&self, _: f64) {}
            fn decrement(&self, _: f64) {}
            fn set(&self, value: f64) {
                self.1.lock().unwrap().insert(self.0.clone(), value);
            }
        }

        impl Recorder for Capture {
            fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
                Counter::noop()
            }
            fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
                let labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                let name = format!("{}{{{}}}", key.name(), labels.join(","));
                Gauge::from_arc(Arc::new(Handle(name, Arc::clone(&self.0))))
            }
            fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
                Histogram::noop()
            }
        }
    }

    #[test]
    fn metrics_follow_place_and_release() {
        let capture = metrics_capture::Capture::default();
        let seen = Arc::clone(&capture.0);
        let get = |k: &str| seen.lock().unwrap().get(k).copied();
        let alloc_a10 = format!("{GPU_MEMORY_ALLOCATED}{{gpu_type=A10}}");
        let alloc_l4 = format!("{GPU_MEMORY_ALLOCATED}{{gpu_type=L4}}");
        let in_use = format!("{GPU_CARDS_IN_USE}{{}}");
        metrics::with_local_recorder(&capture, || {
            let pool = GpuPool::new(&[a10(2), ct("L4", 24, 1)], 10);
            assert_eq!(get(&alloc_a10), Some(0.0));
            assert_eq!(get(&alloc_l4), Some(0.0));
            assert_eq!(get(&in_use), Some(0.0));
            let a = pool.place("A10", 12).unwrap();
            let b = pool.place("A10", 20).unwrap();
            let l = pool.place("L4", 5).unwrap();
            assert_eq!(get(&alloc_a10), Some(32.0));
            assert_eq!(get(&alloc_l4), Some(5.0));
            assert_eq!(get(&in_use), Some(3.0));
            pool.release(&b);
            assert_eq!(get(&alloc_a10), Some(12.0));
            assert_eq!(get(&in_use), Some(2.0));
            pool.release(&a);
            pool.release(&l);
            assert_eq!(get(&alloc_a10), Some(0.0));
            assert_eq!(get(&alloc_l4), Some(0.0));
            assert_eq!(get(&in_use), Some(0.0));
        });
        assert_eq!(GPU_MEMORY_ALLOCATED, "fngate_gpu_memory_allocated_gb");
        assert_eq!(GPU_CARDS_IN_USE, "fngate_gpu_cards_in_use");
    }
}
