//! The toy text "model" behind `POST /generate`: a word-bigram chain walked by a seeded PRNG.
//!
//! It exists so the gateway has a backend that burns real (if small) CPU per request and per
//! streamed token, while staying fully deterministic so tests can compare outputs.

use std::collections::HashMap;

/// Built-in corpus. Treated as one cyclic word chain, so a walk that reaches corpus words can
/// never dead-end.
const CORPUS: &str = "the gateway accepts a request and routes it to a warm function instance \
    the function instance loads the model into gpu memory and answers the request quickly \
    a cold start happens when no warm instance is ready and the request must wait \
    the scheduler keeps a small pool of warm instances so the next request finds one ready \
    tokens stream back to the client one by one as the model produces them \
    the client reads each token and shows it to the user without waiting for the end";

/// Hard cap on generated tokens; `POST /generate` rejects larger requests.
pub const MAX_TOKENS: usize = 4096;

/// Tokens generated when the request does not say.
pub const DEFAULT_TOKENS: usize = 16;

/// Lazily yields up to `max_tokens` words, so streaming pays the per-token cost as it goes.
pub struct Generator {
    vocab: Vec<String>,
    successors: Vec<Vec<u32>>,
    current: Option<u32>,
    rng: XorShift64,
    remaining: usize,
}

impl Generator {
    pub fn new(prompt: &str, max_tokens: usize) -> Self {
        let mut vocab = Vocab::default();
        let lowered = prompt.to_lowercase();
        let prompt_ids: Vec<u32> = words(&lowered).map(|w| vocab.intern(w)).collect();
        let corpus_ids: Vec<u32> = words(CORPUS).map(|w| vocab.intern(w)).collect();

        let mut successors = vec![Vec::new(); vocab.words.len()];
        for pair in prompt_ids.windows(2).chain(corpus_ids.windows(2)) {
            successors[pair[0] as usize].push(pair[1]);
        }
        if let (Some(&last), Some(&first)) = (corpus_ids.last(), corpus_ids.first()) {
            successors[last as usize].push(first);
        }

        Self {
            vocab: vocab.words,
            successors,
            current: prompt_ids.last().copied(),
            rng: XorShift64::seeded(fnv1a(prompt.as_bytes())),
            remaining: max_tokens,
        }
    }

    /// Tokens still to come; lets the streaming body know when to send `[DONE]` without waiting.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    pub fn next_token(&mut self) -> Option<&str> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let next = match self.current.map(|c| &self.successors[c as usize]) {
            Some(choices) if !choices.is_empty() => choices[self.rng.below(choices.len())],
            // The prompt's last word may have no successor (or the prompt may be empty):
            // jump to any word rather than stopping short of max_tokens.
            _ => self.rng.below(self.vocab.len()) as u32,
        };
        self.current = Some(next);
        Some(&self.vocab[next as usize])
    }
}

/// The whole generation joined by single spaces, for the non-streaming response.
pub fn generate(prompt: &str, max_tokens: usize) -> String {
    let mut generator = Generator::new(prompt, max_tokens);
    let mut text = String::with_capacity(max_tokens * 8);
    while let Some(token) = generator.next_token() {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(token);
    }
    text
}

#[derive(Default)]
struct Vocab {
    index: HashMap<String, u32>,
    words: Vec<String>,
}

impl Vocab {
    fn intern(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.index.get(word) {
            return id;
        }
        let id = u32::try_from(self.words.len()).expect("vocabulary fits in u32");
        self.index.insert(word.to_owned(), id);
        self.words.push(word.to_owned());
        id
    }
}

/// Splits on whitespace and strips punctuation so "ready." and "ready" share a table entry.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// xorshift64*: tiny, good enough for picking words, and keeps the crate free of `rand`.
struct XorShift64(u64);

impl XorShift64 {
    fn seeded(seed: u64) -> Self {
        // Zero is the one fixed point of xorshift.
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_tokens(prompt: &str, n: usize) -> Vec<String> {
        let mut generator = Generator::new(prompt, n);
        let mut out = Vec::new();
        while let Some(t) = generator.next_token() {
            out.push(t.to_owned());
        }
        out
    }

    #[test]
    fn same_prompt_same_output() {
        let a = generate("Tell me about the gateway", 64);
        let b = generate("Tell me about the gateway", 64);
        assert_eq!(a, b);
        assert_eq!(a, all_tokens("Tell me about the gateway", 64).join(" "));
    }

    #[test]
    fn different_prompts_diverge() {
        let a = generate("the request", 64);
        let b = generate("the model", 64);
        assert_ne!(a, b);
    }

    #[test]
    fn produces_exactly_max_tokens() {
        for n in [0, 1, 2, 16, 500, MAX_TOKENS] {
            assert_eq!(all_tokens("hello world", n).len(), n);
            let text = generate("hello world", n);
            assert_eq!(text.split(' ').filter(|w| !w.is_empty()).count(), n);
        }
    }

    #[test]
    fn empty_and_unknown_prompts_still_generate() {
        assert_eq!(all_tokens("", 10).len(), 10);
        // "zebra" is only ever a last word, so it has no successors: exercises the jump.
        assert_eq!(all_tokens("zebra", 10).len(), 10);
        assert_eq!(all_tokens("!!! ...", 3).len(), 3);
    }

    #[test]
    fn walk_follows_the_bigram_chain() {
        // "cold" appears once in the corpus, always followed by "start".
        assert_eq!(all_tokens("a cold", 1), vec!["start"]);
        // Prompt bigrams join the table: "purple" is followed only by "elephant".
        assert_eq!(all_tokens("purple elephant purple", 1), vec!["elephant"]);
    }

    #[test]
    fn remaining_counts_down() {
        let mut generator = Generator::new("the", 3);
        assert_eq!(generator.remaining(), 3);
        generator.next_token();
        assert_eq!(generator.remaining(), 2);
        generator.next_token();
        generator.next_token();
        assert_eq!(generator.remaining(), 0);
        assert!(generator.next_token().is_none());
    }

    #[test]
    fn tokens_are_clean_words() {
        for token in all_tokens("Hello, World! How are you?", 200) {
            assert!(!token.is_empty());
            assert!(token.chars().all(|c| c.is_alphanumeric()), "{token:?}");
            assert_eq!(token, token.to_lowercase());
        }
    }
}
