//! Cache-aware routing, after SGLang's router: send a prompt to the worker
//! that most likely holds its prefix in its KV cache, unless that would worsen
//! an already imbalanced pool.
//!
//! The gateway cannot see the engines' caches, so it keeps an *approximate*
//! radix tree of the prompts it routed: each node remembers which workers saw
//! that prefix and when (a logical tick, not the clock). It is bounded per
//! worker by evicting least-recently-used leaves.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::view::{available, least_in_flight};
use crate::{RequestFeatures, RoutingPolicy, WorkerView};

/// Tuning of [`CacheAware`]. Defaults follow SGLang's router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheAwareConfig {
    /// Minimum fraction of the prompt (in chars) that must match a worker's
    /// prefix for the match to decide the route.
    pub cache_threshold: f32,
    /// The pool counts as imbalanced only if `max_load - min_load` exceeds this…
    pub balance_abs_threshold: u64,
    /// …and `max_load > min_load * balance_rel_threshold`.
    pub balance_rel_threshold: f32,
    /// Per-worker bound on the tree, in chars. Prompts are also truncated to
    /// this length before matching and insertion.
    pub max_tree_size: usize,
    /// Check the bound every this many insertions (0 is taken as 1). With 1
    /// no worker ever exceeds `max_tree_size`; larger values trade a bit of
    /// overshoot for fewer checks.
    pub eviction_interval: u64,
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        Self {
            cache_threshold: 0.3,
            balance_abs_threshold: 64,
            balance_rel_threshold: 1.5,
            max_tree_size: 1 << 22,
            eviction_interval: 1,
        }
    }
}

/// Cache-aware routing policy; see the module docs.
#[derive(Debug)]
pub struct CacheAware {
    config: CacheAwareConfig,
    tree: Mutex<Tree>,
}

impl CacheAware {
    pub fn new(config: CacheAwareConfig) -> Self {
        Self {
            config,
            tree: Mutex::new(Tree::new()),
        }
    }

    pub fn config(&self) -> &CacheAwareConfig {
        &self.config
    }

    /// Chars the tree currently attributes to `url` (0 if unknown); exposed
    /// for metrics and tests.
    pub fn tree_chars(&self, url: &str) -> usize {
        let tree = self.lock();
        tree.ids.get(url).map_or(0, |&id| tree.chars_of(id))
    }

    /// A panic while holding the lock can at worst leave a stale cache entry
    /// behind, which only costs routing quality, so a poisoned lock is reused.
    fn lock(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_imbalanced(&self, workers: &[WorkerView<'_>]) -> bool {
        let Some((min, max)) =
            available(workers)
                .map(|i| workers[i].in_flight)
                .fold(None, |acc, l| match acc {
                    None => Some((l, l)),
                    Some((lo, hi)) => Some((l.min(lo), l.max(hi))),
                })
        else {
            return false;
        };
        max - min > self.config.balance_abs_threshold
            && max as f64 > min as f64 * f64::from(self.config.balance_rel_threshold)
    }
}

impl Default for CacheAware {
    fn default() -> Self {
        Self::new(CacheAwareConfig::default())
    }
}

impl RoutingPolicy for CacheAware {
    fn name(&self) -> &'static str {
        "cache_aware"
    }

    fn pick(&self, workers: &[WorkerView<'_>], request: &RequestFeatures<'_>) -> Option<usize> {
        let text: Vec<char> = request
            .text
            .unwrap_or_default()
            .chars()
            .take(self.config.max_tree_size)
            .collect();
        if text.is_empty() {
            return least_in_flight(workers);
        }

        let mut tree = self.lock();
        let chosen = if self.is_imbalanced(workers) {
            // Shortest queue; the prompt still goes into the tree so that
            // follow-ups find the cache that this request is about to warm.
            least_in_flight(workers)?
        } else {
            let cached = tree.best_match(&text, workers);
            match cached {
                Some((i, matched))
                    if matched as f64 / text.len() as f64
                        >= f64::from(self.config.cache_threshold) =>
                {
                    i
                }
                // Weak match: start a new prefix on the worker caching least,
                // which spreads distinct prompt families across the pool.
                _ => available(workers).min_by_key(|&i| {
                    let chars = tree
                        .ids
                        .get(workers[i].url)
                        .map_or(0, |&id| tree.chars_of(id));
                    (chars, workers[i].in_flight)
                })?,
            }
        };
        tree.insert(&text, workers[chosen].url);
        tree.maybe_evict(&self.config);
        Some(chosen)
    }

    fn on_worker_removed(&self, url: &str) {
        self.lock().remove_worker(url);
    }
}

const ROOT: usize = 0;

/// Interned worker id; ids of removed workers are reused.
type WorkerId = u32;

#[derive(Debug, Default)]
struct Node {
    /// Edge label from the parent (empty only for the root).
    edge: Vec<char>,
    parent: usize,
    children: HashMap<char, usize>,
    /// Workers that saw the prefix ending here, with their last access tick.
    /// A handful of entries at most, so a Vec beats a map. Invariant: a
    /// child's workers are a subset of its parent's, and every live non-root
    /// node has at least one worker (free slots have none).
    workers: Vec<(WorkerId, u64)>,
}

impl Node {
    fn tick_of(&self, id: WorkerId) -> Option<u64> {
        self.workers.iter().find(|(w, _)| *w == id).map(|&(_, t)| t)
    }
}

/// Arena-backed radix tree: indices instead of boxes so that no operation
/// (including drop) recurses, whatever the depth.
#[derive(Debug)]
struct Tree {
    nodes: Vec<Node>,
    free_nodes: Vec<usize>,
    ids: HashMap<String, WorkerId>,
    free_ids: Vec<WorkerId>,
    /// Chars attributed to each worker id: the sum of edge lengths of the
    /// nodes that list it.
    chars: Vec<usize>,
    tick: u64,
    inserts: u64,
}

impl Tree {
    fn new() -> Self {
        Self {
            nodes: vec![Node::default()],
            free_nodes: Vec::new(),
            ids: HashMap::new(),
            free_ids: Vec::new(),
            chars: Vec::new(),
            tick: 0,
            inserts: 0,
        }
    }

    fn chars_of(&self, id: WorkerId) -> usize {
        self.chars.get(id as usize).copied().unwrap_or(0)
    }

    fn chars_mut(&mut self, id: WorkerId) -> &mut usize {
        let i = id as usize;
        if self.chars.len() <= i {
            self.chars.resize(i + 1, 0);
        }
        &mut self.chars[i]
    }

    fn intern(&mut self, url: &str) -> WorkerId {
        if let Some(&id) = self.ids.get(url) {
            return id;
        }
        let id = self.free_ids.pop().unwrap_or_else(|| {
            // More than u32::MAX distinct live urls cannot happen in practice;
            // saturating keeps this panic-free anyway.
            WorkerId::try_from(self.ids.len()).unwrap_or(WorkerId::MAX)
        });
        self.ids.insert(url.to_owned(), id);
        id
    }

    fn alloc(&mut self, node: Node) -> usize {
        match self.free_nodes.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }

    /// Detaches `node` from its parent and frees it with its whole subtree.
    fn free_subtree(&mut self, node: usize) {
        if node == ROOT {
            return;
        }
        let parent = self.nodes[node].parent;
        if let Some(&first) = self.nodes[node].edge.first() {
            self.nodes[parent].children.remove(&first);
        }
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            let old = std::mem::take(&mut self.nodes[n]);
            stack.extend(old.children.into_values());
            self.free_nodes.push(n);
        }
    }

    /// The available worker owning the longest cached prefix of `text`, and
    /// the length of that prefix. If the deepest match is held only by
    /// unavailable workers, shorter matches are considered.
    fn best_match(&self, text: &[char], workers: &[WorkerView<'_>]) -> Option<(usize, usize)> {
        // Snapshot index of each available worker the tree knows about.
        let index: HashMap<WorkerId, usize> = available(workers)
            .filter_map(|i| self.ids.get(workers[i].url).map(|&id| (id, i)))
            .collect();
        if index.is_empty() {
            return None;
        }

        // Walk down, remembering each node reached and the chars matched by
        // then. A partial edge match still counts: the node's workers saw the
        // whole edge, hence also its beginning.
        let mut path = Vec::new();
        let (mut node, mut pos) = (ROOT, 0);
        while let Some(&child) = text.get(pos).and_then(|c| self.nodes[node].children.get(c)) {
            let common = common_prefix(&self.nodes[child].edge, &text[pos..]);
            pos += common;
            path.push((child, pos));
            if common < self.nodes[child].edge.len() {
                break;
            }
            node = child;
        }

        path.iter().rev().find_map(|&(node, matched)| {
            // Among owners of the match prefer the least busy, then the one
            // that touched it last (its cache entry is the least likely to
            // have been evicted by the engine).
            self.nodes[node]
                .workers
                .iter()
                .filter_map(|&(id, tick)| index.get(&id).map(|&i| (i, tick)))
                .min_by_key(|&(i, tick)| (workers[i].in_flight, Reverse(tick)))
                .map(|(i, _)| (i, matched))
        })
    }

    /// Records that `url` saw `text`, touching every node on its path.
    fn insert(&mut self, text: &[char], url: &str) {
        let id = self.intern(url);
        self.tick += 1;
        self.inserts += 1;
        let tick = self.tick;

        let (mut node, mut pos) = (ROOT, 0);
        while let Some(&c) = text.get(pos) {
            let Some(&child) = self.nodes[node].children.get(&c) else {
                let rest = text[pos..].to_vec();
                *self.chars_mut(id) += rest.len();
                let leaf = self.alloc(Node {
                    edge: rest,
                    parent: node,
                    children: HashMap::new(),
                    workers: vec![(id, tick)],
                });
                self.nodes[node].children.insert(c, leaf);
                return;
            };
            let common = common_prefix(&self.nodes[child].edge, &text[pos..]);
            let child = if common < self.nodes[child].edge.len() {
                self.split(child, common)
            } else {
                child
            };
            self.touch(child, id, tick);
            pos += common;
            node = child;
        }
    }

    /// Splits `node`'s edge after `at` chars (0 < at < len) and returns the new
    /// upper node. Both halves keep the same workers, so char counts are
    /// unchanged.
    fn split(&mut self, node: usize, at: usize) -> usize {
        let parent = self.nodes[node].parent;
        let lower_edge = self.nodes[node].edge.split_off(at);
        let upper_edge = std::mem::replace(&mut self.nodes[node].edge, lower_edge);
        let first_lower = self.nodes[node].edge.first().copied();
        let first_upper = upper_edge.first().copied();
        let upper = self.alloc(Node {
            edge: upper_edge,
            parent,
            children: first_lower.map(|c| (c, node)).into_iter().collect(),
            workers: self.nodes[node].workers.clone(),
        });
        self.nodes[node].parent = upper;
        if let Some(c) = first_upper {
            self.nodes[parent].children.insert(c, upper);
        }
        upper
    }

    fn touch(&mut self, node: usize, id: WorkerId, tick: u64) {
        let n = &mut self.nodes[node];
        match n.workers.iter_mut().find(|(w, _)| *w == id) {
            Some(entry) => entry.1 = tick,
            None => {
                n.workers.push((id, tick));
                let len = n.edge.len();
                *self.chars_mut(id) += len;
            }
        }
    }

    fn maybe_evict(&mut self, config: &CacheAwareConfig) {
        if !self.inserts.is_multiple_of(config.eviction_interval.max(1)) {
            return;
        }
        let over: Vec<WorkerId> = self
            .ids
            .values()
            .copied()
            .filter(|&id| self.chars_of(id) > config.max_tree_size)
            .collect();
        // Trim to 7/8 of the bound so the O(tree) pass runs once per
        // max_tree_size/8 new chars, not on every insert once full.
        let target = config.max_tree_size - config.max_tree_size / 8;
        for id in over {
            self.evict(id, target);
        }
    }

    /// Drops `id`'s least-recently-used leaves until it holds at most
    /// `target` chars. The path inserted at the current tick is kept, so the
    /// prompt just routed stays cached (it is at most `max_tree_size` long).
    fn evict(&mut self, id: WorkerId, target: usize) {
        let mut heap = BinaryHeap::new();
        for n in 1..self.nodes.len() {
            if let Some(tick) = self.nodes[n].tick_of(id) {
                if self.is_leaf_for(n, id) {
                    heap.push(Reverse((tick, n)));
                }
            }
        }
        while self.chars_of(id) > target {
            let Some(Reverse((tick, n))) = heap.pop() else {
                break;
            };
            if tick >= self.tick {
                break;
            }
            let node = &mut self.nodes[n];
            node.workers.retain(|(w, _)| *w != id);
            let (len, parent, orphan) = (node.edge.len(), node.parent, node.workers.is_empty());
            let chars = self.chars_mut(id);
            *chars = chars.saturating_sub(len);
            if orphan {
                // No worker left here, hence none below (subset invariant).
                self.free_subtree(n);
            }
            if parent != ROOT && self.is_leaf_for(parent, id) {
                if let Some(t) = self.nodes[parent].tick_of(id) {
                    heap.push(Reverse((t, parent)));
                }
            }
        }
    }

    /// True if `node` lists `id` but none of its children does.
    fn is_leaf_for(&self, node: usize, id: WorkerId) -> bool {
        self.nodes[node].tick_of(id).is_some()
            && self.nodes[node]
                .children
                .values()
                .all(|&c| self.nodes[c].tick_of(id).is_none())
    }

    fn remove_worker(&mut self, url: &str) {
        let Some(id) = self.ids.remove(url) else {
            return;
        };
        for node in &mut self.nodes {
            node.workers.retain(|(w, _)| *w != id);
        }
        // Prune nodes nobody holds any more. By the subset invariant their
        // subtrees are empty too, so the search need not descend into them.
        let mut stack = vec![ROOT];
        while let Some(n) = stack.pop() {
            let children: Vec<usize> = self.nodes[n].children.values().copied().collect();
            for c in children {
                if self.nodes[c].workers.is_empty() {
                    self.free_subtree(c);
                } else {
                    stack.push(c);
                }
            }
        }
        *self.chars_mut(id) = 0;
        self.free_ids.push(id);
    }
}

fn common_prefix(a: &[char], b: &[char]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn w(url: &str, in_flight: u64) -> WorkerView<'_> {
        WorkerView {
            url,
            available: true,
            in_flight,
        }
    }

    fn req(text: &str) -> RequestFeatures<'_> {
        RequestFeatures { text: Some(text) }
    }

    fn pool<'a>(urls: &[&'a str]) -> Vec<WorkerView<'a>> {
        urls.iter().map(|u| w(u, 0)).collect()
    }

    /// Checks the structural invariants and recomputes the char counts.
    fn check_invariants(tree: &Tree) {
        let mut chars: HashMap<WorkerId, usize> = HashMap::new();
        let mut stack = vec![ROOT];
        let mut live = 0;
        while let Some(n) = stack.pop() {
            live += 1;
            let node = &tree.nodes[n];
            for (&c, &child) in &node.children {
                let ch = &tree.nodes[child];
                assert_eq!(ch.parent, n);
                assert_eq!(ch.edge.first(), Some(&c));
                assert!(!ch.workers.is_empty(), "live node without workers");
                for (id, tick) in &ch.workers {
                    if n != ROOT {
                        let parent_tick = node.tick_of(*id).expect("subset invariant");
                        assert!(parent_tick >= *tick, "parent touched no later than child");
                    }
                    *chars.entry(*id).or_default() += ch.edge.len();
                }
                stack.push(child);
            }
        }
        assert_eq!(live + tree.free_nodes.len(), tree.nodes.len());
        for &id in tree.ids.values() {
            assert_eq!(tree.chars_of(id), chars.get(&id).copied().unwrap_or(0));
        }
    }

    #[test]
    fn same_prefix_goes_to_same_worker() {
        let p = CacheAware::default();
        let ws = pool(&["a", "b", "c"]);
        let first = p
            .pick(&ws, &req("You are a helpful assistant. Q1"))
            .unwrap();
        for q in ["Q2", "Q3 is longer", "Q4"] {
            let text = format!("You are a helpful assistant. {q}");
            assert_eq!(p.pick(&ws, &req(&text)), Some(first));
        }
        check_invariants(&p.lock());
    }

    #[test]
    fn distinct_prompts_spread_by_footprint() {
        let p = CacheAware::default();
        let ws = pool(&["a", "b", "c"]);
        let mut seen = Vec::new();
        for text in ["alpha alpha alpha", "bravo bravo bravo", "charlie charlie"] {
            seen.push(p.pick(&ws, &req(text)).unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
    }

    #[test]
    fn below_threshold_match_is_ignored() {
        let p = CacheAware::new(CacheAwareConfig {
            cache_threshold: 0.5,
            ..Default::default()
        });
        let ws = pool(&["a", "b"]);
        assert_eq!(p.pick(&ws, &req("shared-0123456789")), Some(0));
        // 7 of 17 chars match (< 0.5): goes to the emptier worker b.
        assert_eq!(p.pick(&ws, &req("shared-abcdefghij")), Some(1));
        // 12 of 17 match on a (>= 0.5).
        assert_eq!(p.pick(&ws, &req("shared-01234zzzzz")), Some(0));
    }

    #[test]
    fn threshold_zero_always_follows_the_match_and_one_needs_full_match() {
        let ws = pool(&["a", "b"]);
        let zero = CacheAware::new(CacheAwareConfig {
            cache_threshold: 0.0,
            ..Default::default()
        });
        zero.pick(&ws, &req("xyz")).unwrap();
        // Any text that shares a first char sticks to the same worker.
        assert_eq!(zero.pick(&ws, &req("x-totally-different")), Some(0));

        let one = CacheAware::new(CacheAwareConfig {
            cache_threshold: 1.0,
            ..Default::default()
        });
        assert_eq!(one.pick(&ws, &req("hello world")), Some(0));
        assert_eq!(one.pick(&ws, &req("hello world")), Some(0));
        assert_eq!(one.pick(&ws, &req("hello worlds")), Some(1));
    }

    #[test]
    fn imbalance_routes_to_shortest_queue_and_still_learns() {
        let p = CacheAware::default();
        let ws = pool(&["a", "b"]);
        assert_eq!(p.pick(&ws, &req("prefix-shared long text")), Some(0));

        // Busier but within the absolute threshold: the cache wins.
        let mild = [w("a", 70), w("b", 10)];
        assert_eq!(p.pick(&mild, &req("prefix-shared long text")), Some(0));

        // a is far busier: 200 - 10 > 64 and 200 > 10 * 1.5.
        let busy = [w("a", 200), w("b", 10)];
        assert_eq!(p.pick(&busy, &req("prefix-shared long text")), Some(1));

        // The imbalanced pick was inserted for b: b now owns "other…" too.
        assert_eq!(p.pick(&busy, &req("other prompt entirely")), Some(1));
        let balanced = pool(&["a", "b"]);
        assert_eq!(p.pick(&balanced, &req("other prompt entirely")), Some(1));
    }

    #[test]
    fn relative_threshold_also_required() {
        let p = CacheAware::default();
        let ws = pool(&["a", "b"]);
        assert_eq!(p.pick(&ws, &req("sticky prompt")), Some(0));
        // Difference 100 > 64 but 1050 < 950 * 1.5: still balanced.
        let loaded = [w("a", 1050), w("b", 950)];
        assert_eq!(p.pick(&loaded, &req("sticky prompt")), Some(0));
    }

    #[test]
    fn skips_unavailable_owner() {
        let p = CacheAware::default();
        let ws = pool(&["a", "b"]);
        assert_eq!(p.pick(&ws, &req("the cached prompt")), Some(0));
        let a_down = [
            WorkerView {
                available: false,
                ..w("a", 0)
            },
            w("b", 0),
        ];
        assert_eq!(p.pick(&a_down, &req("the cached prompt")), Some(1));
        let none = [WorkerView {
            available: false,
            ..w("a", 0)
        }];
        assert_eq!(p.pick(&none, &req("the cached prompt")), None);
        assert_eq!(p.pick(&[], &req("the cached prompt")), None);
        assert_eq!(p.pick(&[], &RequestFeatures::default()), None);
    }

    #[test]
    fn falls_back_to_shorter_match_owned_by_available_worker() {
        let p = CacheAware::new(CacheAwareConfig {
            cache_threshold: 0.2,
            ..Default::default()
        });
        let ws = pool(&["a", "b", "c"]);
        // a owns "common-", then b gets a longer branch of it (forced by
        // imbalance so it does not just follow a).
        assert_eq!(p.pick(&ws, &req("common-")), Some(0));
        let b_idle = [w("a", 100), w("b", 0), w("c", 100)];
        assert_eq!(p.pick(&b_idle, &req("common-deeper-branch")), Some(1));
        // With b down, the deepest match (b's) is unusable; a's shorter one is.
        let b_down = [
            w("a", 0),
            WorkerView {
                available: false,
                ..w("b", 0)
            },
            w("c", 0),
        ];
        assert_eq!(p.pick(&b_down, &req("common-deeper-branch")), Some(0));
    }

    #[test]
    fn no_text_means_least_load() {
        let p = CacheAware::default();
        let ws = [w("a", 3), w("b", 1), w("c", 2)];
        assert_eq!(p.pick(&ws, &RequestFeatures::default()), Some(1));
        assert_eq!(p.pick(&ws, &req("")), Some(1));
        assert_eq!(p.tree_chars("b"), 0);
    }

    #[test]
    fn removal_forgets_worker() {
        let p = CacheAware::default();
        let ws = pool(&["a", "b"]);
        assert_eq!(p.pick(&ws, &req("alpha prompt")), Some(0));
        assert_eq!(p.pick(&ws, &req("bravo prompt!")), Some(1));
        assert!(p.tree_chars("a") > 0);
        p.on_worker_removed("a");
        p.on_worker_removed("never-seen");
        assert_eq!(p.tree_chars("a"), 0);
        check_invariants(&p.lock());
        // "a" rejoins empty: the old prompt is a fresh miss and goes to the
        // worker with the smaller tree, which is now a.
        assert_eq!(p.pick(&ws, &req("alpha prompt")), Some(0));
        // b's entries survived the removal.
        assert_eq!(p.pick(&ws, &req("bravo prompt!")), Some(1));
        check_invariants(&p.lock());
    }

    #[test]
    fn removal_prunes_shared_nodes() {
        let p = CacheAware::default();
        let busy_b = [w("a", 0), w("b", 100)];
        let busy_a = [w("a", 100), w("b", 0)];
        p.pick(&busy_b, &req("shared prefix one")).unwrap();
        p.pick(&busy_a, &req("shared prefix two")).unwrap();
        p.on_worker_removed("a");
        p.on_worker_removed("b");
        let tree = p.lock();
        check_invariants(&tree);
        assert!(tree.nodes[ROOT].children.is_empty());
        assert_eq!(tree.free_nodes.len(), tree.nodes.len() - 1);
    }

    #[test]
    fn eviction_bounds_memory_and_keeps_recent() {
        let max = 200;
        let p = CacheAware::new(CacheAwareConfig {
            max_tree_size: max,
            ..Default::default()
        });
        let ws = pool(&["a"]);
        for i in 0..500 {
            let text = format!("conversation {i}: some filler text to take space");
            assert_eq!(p.pick(&ws, &req(&text)), Some(0));
            assert!(p.tree_chars("a") <= max, "{} > {max}", p.tree_chars("a"));
        }
        let tree = p.lock();
        check_invariants(&tree);
        // The last prompt survives eviction, old ones are gone.
        let id = tree.ids["a"];
        let last: Vec<char> = "conversation 499: some filler text to take space"
            .chars()
            .collect();
        let first: Vec<char> = "conversation 0: some filler".chars().collect();
        let (_, m_last) = tree.best_match(&last, &ws).unwrap();
        let (_, m_first) = tree.best_match(&first, &ws).unwrap();
        assert_eq!(m_last, last.len());
        assert!(m_first < first.len());
        // Node count is bounded by chars (every live node holds >= 1 char).
        let live = tree.nodes.len() - tree.free_nodes.len();
        assert!(live <= tree.chars_of(id) + 1);
    }

    #[test]
    fn overlong_prompt_is_truncated_not_evicted() {
        let p = CacheAware::new(CacheAwareConfig {
            max_tree_size: 16,
            ..Default::default()
        });
        let ws = pool(&["a", "b"]);
        let long = "x".repeat(1000);
        assert_eq!(p.pick(&ws, &req(&long)), Some(0));
        assert_eq!(p.tree_chars("a"), 16);
        // Still recognised: the first 16 chars fully match.
        assert_eq!(p.pick(&ws, &req(&long)), Some(0));
    }

    #[test]
    fn zero_tree_size_disables_cache() {
        let p = CacheAware::new(CacheAwareConfig {
            max_tree_size: 0,
            ..Default::default()
        });
        let ws = [w("a", 2), w("b", 1)];
        assert_eq!(p.pick(&ws, &req("anything")), Some(1));
        assert_eq!(p.tree_chars("b"), 0);
    }

    #[test]
    fn multibyte_text_is_split_on_chars() {
        let p = CacheAware::default();
        let ws = pool(&["a", "b"]);
        assert_eq!(p.pick(&ws, &req("日本語のプロンプト 一")), Some(0));
        assert_eq!(p.pick(&ws, &req("日本語のプロンプト 二")), Some(0));
        assert_eq!(p.pick(&ws, &req("🦀🦀 different")), Some(1));
        check_invariants(&p.lock());
    }

    #[test]
    fn property_random_workload_keeps_invariants_and_bounds() {
        // Random prompts over a small alphabet (many shared prefixes and
        // splits), random loads, availability, removals and an interval > 1.
        let max = 300;
        let interval = 3;
        let p = CacheAware::new(CacheAwareConfig {
            max_tree_size: max,
            eviction_interval: interval,
            ..Default::default()
        });
        let urls = ["a", "b", "c", "d"];
        let mut rng = StdRng::seed_from_u64(2024);
        for step in 0..3000 {
            let len = rng.random_range(0..60);
            let text: String = (0..len)
                .map(|_| ['a', 'b', 'c', 'é'][rng.random_range(0..4)])
                .collect();
            let ws: Vec<WorkerView<'_>> = urls
                .iter()
                .map(|u| WorkerView {
                    url: u,
                    available: rng.random_bool(0.8),
                    in_flight: rng.random_range(0..150),
                })
                .collect();
            match p.pick(&ws, &req(&text)) {
                Some(i) => assert!(ws[i].available),
                None => assert!(ws.iter().all(|w| !w.available)),
            }
            if rng.random_bool(0.01) {
                p.on_worker_removed(urls[rng.random_range(0..urls.len())]);
            }
            if step % 100 == 0 {
                check_invariants(&p.lock());
            }
            // Between checks a worker can gain at most `interval` prompts.
            for u in urls {
                assert!(p.tree_chars(u) <= max + 60 * interval as usize);
            }
        }
        check_invariants(&p.lock());
    }
}
