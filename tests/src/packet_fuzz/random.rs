//! Draws from the fuzzer's seeded generator.

use rand::Rng;
use rand::rngs::StdRng;

pub(super) fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

pub(super) fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random()).collect()
}
