//! Key comparison in table probes: short keys compared word-wise in registers, and whether a
//! slot is the one of a key in a namespace.

use super::slot::Slot;
use crate::store::Namespace;

/// Whether two keys are equal. Short keys (nearly all) are compared with a few loads in
/// registers: hashbrown calls the comparison for every tag match, and `==` on `str` calls
/// `bcmp` in libc, which costs more than the rest of the probe.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
        let mut w = [0; N];
        w.copy_from_slice(&s[at..at + N]);
        w
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        // Two overlapping words cover every byte.
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        _ => a == b,
    }
}

/// Whether `slot` is the one of `key` in `ns`. The key first: the namespace of a boxed slot is
/// behind its pointer, and keys of the same name in two namespaces are rare.
#[inline]
pub(super) fn is_slot_of(slot: &Slot, ns: Namespace, key: &str) -> bool {
    same_key(&slot.key, key) && slot.ns() == ns
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why: keys are compared word-wise when short; a difference at any byte, of any length,
    /// must still tell them apart.
    #[test]
    fn keys_compare_equal_exactly_when_equal() {
        for n in 0..40 {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert!(same_key(&a, &a.clone()));
            assert!(!same_key(&a, &format!("{a}x")));
            for i in 0..n {
                let mut b = a.clone().into_bytes();
                b[i] = b'#';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_key(&a, &b), "{a:?} {b:?}");
            }
        }
    }
}
