// The linker (scripts/link-hot-first) reads this list, which cargo would not know to watch.
fn main() {
    println!("cargo:rerun-if-changed=scripts/hot-functions.txt");
}
