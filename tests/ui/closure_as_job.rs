// A pool runs jobs by name in another process: a closure cannot be one.

fn main() -> Result<(), procpool::Error> {
    procpool::init();
    let pool = procpool::Pool::builder().processes(1).build()?;
    let doubled = pool.map(|x: u64| x * 2, 0..10u64)?;
    assert_eq!(doubled[3], 6);
    Ok(())
}
