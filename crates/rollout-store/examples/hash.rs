//! `hash FILE…`: the store's BLAKE3 of each file, printed like b3sum (for `scripts/bench-trace`).

fn main() {
    let mut failed = false;
    for path in std::env::args_os().skip(1) {
        match rollout_store::file_digest(std::path::Path::new(&path), false) {
            Ok(d) => println!("{}  {}", d.hash, path.to_string_lossy()),
            Err(e) => {
                eprintln!("{}: {e}", path.to_string_lossy());
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
