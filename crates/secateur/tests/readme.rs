//! The README's library snippet is `examples/shears.rs`, so that it compiles and runs in CI.

#[test]
fn readme_snippet_is_the_shears_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/shears.rs")).unwrap();
    let code = &example[example.find("use secateur").expect("the example's first `use`")..];
    assert!(
        readme.contains(&format!("```rust\n{code}```")),
        "README.md's library snippet differs from examples/shears.rs: copy the example into it"
    );
}
