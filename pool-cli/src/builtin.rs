//! The jobs the `procpool` command carries, taken from the seed programs: `procpool
//! run` serves them itself (it is its own default worker), so they run without any
//! code of the user's. They live here, in the command, so that neither they nor their
//! dependencies (PBKDF2, SHA-2, hex) reach programs that use procpool as a library.
//!
//! The first paragraph of each doc comment is what `procpool jobs` shows.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::Duration;

use procpool::job;
use serde::{Deserialize, Serialize};

/// Squares a number; an overflow is the job's error, not a crash.
#[job]
pub fn square(x: u64) -> Result<u64, String> {
    x.checked_mul(x)
        .ok_or_else(|| format!("{x} squared overflows u64"))
}

/// Counts from 0 to n^n one step at a time: pure CPU work that grows fast with n (9
/// takes about a tenth of a second, 10 about three seconds).
///
/// The seeds' CPU-bound demo.
#[job]
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

/// Sleeps ms milliseconds, like waiting for I/O, and returns ms.
#[job]
pub fn sleep(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Argument of [`hash_file`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HashFile {
    /// The file whose bytes are the password.
    pub path: String,
    /// Salt, as text. Default: `salt` (the seeds' value).
    #[serde(default = "default_salt")]
    pub salt: String,
    /// PBKDF2 iterations. Default: 100,000 (the seeds use 1,000,000: about ten times
    /// slower).
    #[serde(default = "default_iterations")]
    pub iterations: u32,
}

fn default_salt() -> String {
    "salt".into()
}

fn default_iterations() -> u32 {
    100_000
}

/// PBKDF2-HMAC-SHA512 of a file's bytes, as 128 hex digits: slow on purpose (salt
/// defaults to "salt", iterations to 100000).
///
/// The seeds' "hash a book".
#[job]
pub fn hash_file(spec: HashFile) -> Result<String, String> {
    let data = std::fs::read(&spec.path).map_err(|e| format!("{}: {e}", spec.path))?;
    if spec.iterations == 0 {
        return Err("iterations must be at least 1".into());
    }
    Ok(pbkdf2_sha512_hex(
        &data,
        spec.salt.as_bytes(),
        spec.iterations,
    ))
}

fn pbkdf2_sha512_hex(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut key = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, &mut key);
    hex::encode(key)
}

/// Argument of [`word_count`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WordCount {
    /// A text file.
    pub path: String,
    /// Words not to count. Default: a list of common English words.
    #[serde(default)]
    pub stop_words: Option<Vec<String>>,
}

/// Result of [`word_count`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MostCommon {
    /// The word, in lower case.
    pub word: String,
    /// How many times it occurs.
    pub count: u64,
}

/// Common English words, left out of [`word_count`] unless the caller gives a list.
pub const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "before", "but", "by", "can", "could", "did", "do", "does", "for", "from", "had",
    "has", "have", "he", "her", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "just", "me", "my", "no", "not", "now", "of", "on", "one", "only", "or", "our", "out", "said",
    "she", "so", "some", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "to", "up", "upon", "us", "was", "we", "were", "what", "when", "which", "who", "will",
    "with", "would", "you", "your",
];

/// The most common word of a text file and its count, case-folded, common English
/// words left out unless stop_words is given.
///
/// The seeds' "most common word in a book". Punctuation is trimmed; ties go to the
/// word that sorts first, so the answer does not depend on hashing order.
#[job]
pub fn word_count(spec: WordCount) -> Result<MostCommon, String> {
    let file = std::fs::File::open(&spec.path).map_err(|e| format!("{}: {e}", spec.path))?;
    let stop: HashSet<String> = match &spec.stop_words {
        Some(words) => words.iter().map(|w| w.to_lowercase()).collect(),
        None => STOP_WORDS.iter().map(|w| (*w).to_owned()).collect(),
    };
    let mut counts: HashMap<String, u64> = HashMap::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("{}: {e}", spec.path))?;
        for raw in line.split_whitespace() {
            let word = raw
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            if !word.is_empty() && !stop.contains(&word) {
                *counts.entry(word).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(word, count)| MostCommon { word, count })
        .ok_or_else(|| format!("{}: no words to count", spec.path))
}

/// Argument of [`write_file`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteFile {
    /// The file to create (or truncate).
    pub path: String,
    /// How many lines to write.
    pub lines: u64,
    /// The text of each line. Default: the seeds' `This is a sample text`.
    #[serde(default = "default_text")]
    pub text: String,
}

fn default_text() -> String {
    "This is a sample text".into()
}

/// Writes a text file of the given number of lines and returns its size in bytes
/// (text defaults to "This is a sample text").
///
/// The seeds' I/O-bound demo.
#[job]
pub fn write_file(spec: WriteFile) -> Result<u64, String> {
    let fail = |e: std::io::Error| format!("{}: {e}", spec.path);
    let mut out = BufWriter::new(std::fs::File::create(&spec.path).map_err(fail)?);
    for _ in 0..spec.lines {
        out.write_all(spec.text.as_bytes()).map_err(fail)?;
        out.write_all(b"\n").map_err(fail)?;
    }
    out.flush().map_err(fail)?;
    Ok(spec.lines * (spec.text.len() as u64 + 1))
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

    #[test]
    fn pbkdf2_matches_the_published_vectors() {
        // PBKDF2-HMAC-SHA512("password", "salt", c), as Python's hashlib computes it.
        assert_eq!(
            pbkdf2_sha512_hex(b"password", b"salt", 1),
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252\
             c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
        );
        assert_eq!(
            pbkdf2_sha512_hex(b"password", b"salt", 2),
            "e1d9c16aa681708a45f5c7c4e215ceb66e011a2e9f0040713f18aefdb866d53c\
             f76cab2868a39b9f7840edce4fef5a82be67335c77a6068e04112754f27ccf4e"
        );
    }

    #[test]
    fn files_are_counted_hashed_and_written() {
        let dir = std::env::temp_dir().join(format!("pool-worker-builtin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("book.txt").to_string_lossy().into_owned();
        let written = write_file(WriteFile {
            path: path.clone(),
            lines: 3,
            text: "The cat, the CAT and the dog.".into(),
        });
        assert_eq!(written, Ok(90));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 90);
        let most = word_count(WordCount {
            path: path.clone(),
            stop_words: None,
        });
        assert_eq!(
            most,
            Ok(MostCommon {
                word: "cat".into(),
                count: 6
            })
        );
        let only_dogs = word_count(WordCount {
            path: path.clone(),
            stop_words: Some(vec!["the".into(), "cat".into(), "AND".into()]),
        });
        assert_eq!(only_dogs.map(|m| m.word), Ok("dog".into()));
        let hash = hash_file(HashFile {
            path: path.clone(),
            salt: "salt".into(),
            iterations: 2,
        })
        .unwrap();
        assert_eq!(hash.len(), 128);
        assert!(
            hash_file(HashFile {
                path: dir.join("missing").to_string_lossy().into_owned(),
                salt: "s".into(),
                iterations: 1
            })
            .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
