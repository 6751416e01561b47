fn main() {
    // ORT dlcloses the plugin when its last session goes away, while Rust's std may still hold a
    // thread-local destructor pointing into it (seen as a segfault on thread exit). Keep the
    // library mapped for the life of the process.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
