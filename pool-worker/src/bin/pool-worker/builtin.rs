//! Jobs the `pool-worker` executable carries, taken from the seed programs. The
//! `procpool` command runs them without any code of the user's.

use std::time::Duration;

use pool_macros::job;

/// `x * x`; an overflow is the job's error, not a panic.
#[job(crate = pool_worker)]
pub fn square(x: u64) -> Result<u64, String> {
    x.checked_mul(x)
        .ok_or_else(|| format!("{x} squared overflows u64"))
}

/// Counts from 0 to `n^n` one step at a time (the seeds' CPU-bound demo): pure CPU
/// work whose length grows fast with `n` (`9` is about a third of a second).
#[job(crate = pool_worker)]
pub fn cpu_bound(n: u32) -> Result<u64, String> {
    let limit = u64::from(n)
        .checked_pow(n)
        .ok_or_else(|| format!("{n}^{n} overflows u64"))?;
    Ok(count_to(limit))
}

/// The counting loop of [`cpu_bound`], kept opaque to the optimiser so that the work
/// is really done rather than folded into a closed form.
pub fn count_to(limit: u64) -> u64 {
    let mut count = 0u64;
    for _ in 0..limit {
        count = std::hint::black_box(count + 1);
    }
    count
}

/// Sleeps `millis` milliseconds (an I/O-like wait) and returns it.
#[job(crate = pool_worker)]
pub fn sleep(millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    millis
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_compute_what_they_say() {
        assert_eq!(square(12), Ok(144));
        assert!(square(u64::MAX).is_err());
        assert_eq!(cpu_bound(3), Ok(27));
        assert_eq!(count_to(1000), 1000);
        assert!(cpu_bound(17).is_err());
    }
}
