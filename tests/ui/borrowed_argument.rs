// A job's arguments are decoded in the worker: they cannot borrow.

#[procpool::job]
fn word_length(word: &str) -> usize {
    word.len()
}

#[procpool::job]
fn first_name(names: Vec<String>) -> &'static str {
    let _ = names;
    "Ada"
}

fn main() {
    procpool::init();
}
