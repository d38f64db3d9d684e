//! A worker program with two jobs of its own, for the `procpool` command:
//!
//! ```text
//! cargo build --release -p example-worker
//! procpool jobs --worker target/release/example-worker
//! echo '[{"width": 1920, "height": 1080}, {"width": 640, "height": 640}]' \
//!     | procpool run fit --worker target/release/example-worker
//! ```
//!
//! All a worker needs: a dependency on `procpool`, functions marked `#[procpool::job]`,
//! and `procpool::init()` first thing in `main`. When a pool starts this program,
//! `init()` serves the jobs and exits; started by hand, it returns, and `main` goes on.
//!
//! Each input line is the job's argument as JSON, as serde maps it: a struct is an
//! object with its field names, a job of several arguments takes an array of them,
//! `Option` is `null` (or, as a field, may be left out), `#[serde(default)]` fields
//! may be left out.

use serde::{Deserialize, Serialize};

/// A width and height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

/// Scales an image size to fit within a box, keeping its aspect ratio.
///
/// Two arguments: the input line is a JSON array of two objects,
/// `[{"width": 1920, "height": 1080}, {"width": 640, "height": 640}]`.
#[procpool::job]
pub fn fit(size: Size, within: Size) -> Size {
    if size.width == 0 || size.height == 0 {
        return Size {
            width: 0,
            height: 0,
        };
    }
    // Scale by the tighter of the two ratios, in integers: width * within.height
    // against height * within.width says which side limits.
    let (w, h) = (u64::from(size.width), u64::from(size.height));
    let (bw, bh) = (u64::from(within.width), u64::from(within.height));
    let (width, height) = if w * bh >= h * bw {
        (bw, h * bw / w)
    } else {
        (w * bh / h, bh)
    };
    Size {
        width: u32::try_from(width).unwrap_or(u32::MAX),
        height: u32::try_from(height).unwrap_or(u32::MAX),
    }
}

/// Argument of [`summarize`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// The numbers.
    pub values: Vec<f64>,
    /// Whether `values` is the whole population (divide by n) rather than a sample of
    /// it (divide by n - 1). May be left out: false.
    #[serde(default)]
    pub population: bool,
}

/// Result of [`summarize`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub std_dev: f64,
}

/// The count, mean and standard deviation of some numbers.
///
/// One argument, a struct: the input line is a JSON object,
/// `{"values": [2, 4, 4, 4, 5, 5, 7, 9], "population": true}`. Too few numbers is the
/// job's error (a `Failed` record), not a crash.
#[procpool::job]
pub fn summarize(sample: Sample) -> Result<Summary, String> {
    let count = sample.values.len();
    let divisor = if sample.population {
        count
    } else {
        count.saturating_sub(1)
    };
    if divisor == 0 {
        return Err(format!(
            "{count} values are too few for a standard deviation"
        ));
    }
    let mean = sample.values.iter().sum::<f64>() / count as f64;
    let squares: f64 = sample.values.iter().map(|v| (v - mean).powi(2)).sum();
    Ok(Summary {
        count,
        mean,
        std_dev: (squares / divisor as f64).sqrt(),
    })
}

fn main() {
    procpool::init();
    eprintln!(
        "example-worker is a procpool worker: try\n  \
         procpool jobs --worker {0}\n  \
         echo '[{{\"width\": 1920, \"height\": 1080}}, {{\"width\": 640, \"height\": 640}}]' \
         | procpool run fit --worker {0}",
        std::env::args()
            .next()
            .unwrap_or_else(|| "example-worker".into())
    );
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_the_aspect_ratio() {
        let size = |width, height| Size { width, height };
        assert_eq!(fit(size(1920, 1080), size(640, 640)), size(640, 360));
        assert_eq!(fit(size(1080, 1920), size(640, 640)), size(360, 640));
        assert_eq!(fit(size(0, 10), size(5, 5)), size(0, 0));
    }

    #[test]
    fn summarize_divides_as_asked() {
        let population = summarize(Sample {
            values: vec![2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0],
            population: true,
        })
        .unwrap();
        assert_eq!(
            (population.count, population.mean, population.std_dev),
            (8, 5.0, 2.0)
        );
        assert!(
            summarize(Sample {
                values: vec![1.0],
                population: false
            })
            .is_err()
        );
    }
}
