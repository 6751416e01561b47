//! Skeleton only: this tool is not implemented yet (see the project's issues).

fn main() {
    eprintln!("lookat-rewrite: not implemented yet");
    std::process::exit(2);
}
