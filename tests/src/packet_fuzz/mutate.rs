//! Mutations of a frame: bit flips, truncations, bad IHL and lengths, IP options, fragments,
//! odd TCP flags and data offsets, VLAN tags and the rest.

use super::case::{ETH_LEN, ihl_bytes};
use super::random::{pick, random_bytes};
use rand::Rng;
use rand::rngs::StdRng;

/// Inserts an 802.1Q tag before the EtherType.
pub fn insert_vlan(frame: &mut Vec<u8>, vid: u16) {
    if frame.len() < 12 {
        return;
    }
    let tag = [0x81, 0x00, (vid >> 8) as u8 & 0x0f, vid as u8];
    frame.splice(12..12, tag);
}

/// One random mutation of `frame`; returns what it did.
pub fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>) -> String {
    let len = frame.len();
    let l4 = ETH_LEN + ihl_bytes(frame).max(20);
    match rng.random_range(0..14) {
        0 | 1 if len > 0 => {
            let n = rng.random_range(1..=4);
            let mut at = Vec::new();
            for _ in 0..n {
                // Mostly in the headers, where the programs look.
                let off = if rng.random_bool(0.8) {
                    rng.random_range(0..len.min(ETH_LEN + 60 + 28))
                } else {
                    rng.random_range(0..len)
                };
                let bit = rng.random_range(0..8);
                frame[off] ^= 1 << bit;
                at.push(format!("{off}.{bit}"));
            }
            format!("flipped bits {}", at.join(","))
        }
        2 if len > 0 => {
            let to = rng.random_range(0..len);
            frame.truncate(to);
            format!("truncated to {to}")
        }
        3 if len > ETH_LEN => {
            let ihl = rng.random_range(0..16u8);
            frame[ETH_LEN] = (frame[ETH_LEN] & 0xf0) | ihl;
            format!("IHL {ihl}")
        }
        4 if len > ETH_LEN => {
            let v = pick(rng, &[0u8, 4, 5, 6, 15]);
            frame[ETH_LEN] = (v << 4) | (frame[ETH_LEN] & 0x0f);
            format!("version {v}")
        }
        5 if len >= ETH_LEN + 4 => {
            let actual = (len - ETH_LEN) as u16;
            let tot = match rng.random_range(0..6) {
                0 => 0,
                1 => rng.random_range(1..40),
                2 => actual.saturating_sub(rng.random_range(1..30)),
                3 => actual.saturating_add(rng.random_range(1..30)),
                4 => 0xffff,
                _ => rng.random(),
            };
            frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot.to_be_bytes());
            format!("total length {tot} (frame has {actual})")
        }
        6 if len >= ETH_LEN + 20 && frame[ETH_LEN] & 0x0f == 5 => {
            let words = rng.random_range(1..=10usize);
            let mut opts = Vec::with_capacity(words * 4);
            for _ in 0..words * 4 {
                let any: u8 = rng.random();
                opts.push(pick(rng, &[0u8, 1, 1, 7, 0x44, 0x94, any]));
            }
            let at = ETH_LEN + 20;
            frame.splice(at..at, opts);
            frame[ETH_LEN] = 0x40 | (5 + words as u8);
            let tot = u16::from_be_bytes([frame[ETH_LEN + 2], frame[ETH_LEN + 3]]);
            let tot = tot.wrapping_add(words as u16 * 4);
            frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&tot.to_be_bytes());
            format!("{words} words of IP options")
        }
        7 if len >= ETH_LEN + 8 => {
            let v = pick(
                rng,
                &[0x2000u16, 0x2001, 0x0001, 0x1fff, 0x4000, 0x8000, 0x3fff],
            );
            frame[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&v.to_be_bytes());
            format!("flags/fragment {v:#06x}")
        }
        8 if len > l4 + 13 => {
            let f: u8 = rng.random();
            frame[l4 + 13] = f;
            format!("TCP flags {f:#04x}")
        }
        9 if len > l4 + 12 => {
            let doff = rng.random_range(0..16u8);
            frame[l4 + 12] = (doff << 4) | (frame[l4 + 12] & 0x0f);
            format!("TCP data offset {doff}")
        }
        10 if len > ETH_LEN + 8 => {
            let ttl = pick(rng, &[0u8, 1, 2, 255]);
            frame[ETH_LEN + 8] = ttl;
            format!("TTL {ttl}")
        }
        11 => {
            let n = rng.random_range(1..64);
            frame.extend(random_bytes(rng, n));
            format!("{n} bytes appended")
        }
        12 if len > ETH_LEN + 9 => {
            let p = pick(rng, &[0u8, 1, 6, 17, 47, 255]);
            frame[ETH_LEN + 9] = p;
            format!("protocol {p}")
        }
        13 => {
            insert_vlan(frame, 7);
            "VLAN tag".into()
        }
        _ => "no mutation (frame too short)".into(),
    }
}
