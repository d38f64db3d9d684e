//! A `Process` that would run forever is terminated and reports its exitcode, beside
//! processes that return, fail, panic and exit, each with `multiprocessing`'s code.
//!
//! cargo run --example terminate

use std::time::Duration;

use procpool::Process;

/// Counts forever, or ends the way it is told to.
#[procpool::job]
fn run(how: String) -> Result<u64, String> {
    match how.as_str() {
        "return" => Ok(42),
        "fail" => Err("no such file".into()),
        "panic" => panic!("index out of bounds"),
        "exit" => std::process::exit(3),
        _ => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
    }
}

fn main() -> Result<(), procpool::Error> {
    procpool::init();
    let forever = Process::builder()
        .name("forever")
        .spawn(run, "spin".into())?;
    println!("{} started, pid {}", forever.name(), forever.pid());
    let code = forever.join_timeout(Duration::from_millis(500));
    println!(
        "join_timeout(500ms) -> {code:?}, is_alive = {}",
        forever.is_alive()
    );
    forever.terminate();
    let code = forever.join();
    println!("after terminate: {}", procpool::describe_exitcode(code));
    println!("result: {:?}", forever.result());

    for how in ["return", "fail", "panic", "exit"] {
        let p = Process::spawn(run, how.into())?;
        let code = p.join();
        println!("{how:>6}: exitcode {code}, result {:?}", p.result());
    }
    Ok(())
}
