// Job names are one namespace per program, whatever module a job is in.

mod images {
    #[procpool::job]
    pub fn process(path: String) -> u64 {
        path.len() as u64
    }
}

mod sounds {
    #[procpool::job]
    pub fn process(path: String) -> u64 {
        path.len() as u64
    }
}

fn main() {
    procpool::init();
}
