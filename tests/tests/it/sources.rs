//! Modules reviewed from their source (issue 19, item 3): a scientist builds a module
//! reproducibly and uploads it with its source; the reviewer reads the source, rebuilds it in
//! another directory to the same bytes and the review page says so. A source that builds to
//! other bytes blocks the approval; a module without one can still be approved, the page saying
//! it is unverifiable; archives and crates that would run code on the reviewer's machine are
//! refused before anything is built.

use std::path::{Path, PathBuf};

use tidegate_runtime::sha256_hex;
use tidegate_runtime::source::{
    BuildRecipe, SourceFile, built_with, read_source_archive, write_source_archive,
};
use tidegate_server::rebuild;

use crate::common::{active_scenario, constant_module, refusal};
use crate::console::{Browser, token};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

#[test]
fn a_crate_rebuilds_to_the_same_bytes_elsewhere_and_its_reviewer_reads_that_on_the_review_page() {
    // The scientist's build: the crate packed, then built from the archive alone, in a fresh
    // directory.
    let built = rebuild::build_from_path(&example("visitor-udf")).unwrap();
    let archive = read_source_archive(&built.source).unwrap();
    assert!(
        matches!(&archive.recipe, BuildRecipe::Rust { package, toolchain }
            if package == "tidegate-example-visitor-udf" && toolchain == "1.95.0"),
        "{:?}",
        archive.recipe
    );
    let paths: Vec<&str> = archive.files.iter().map(|f| f.path.as_str()).collect();
    for needed in [
        "Cargo.lock",
        "Cargo.toml",
        "rust-toolchain.toml",
        "examples/visitor-udf/src/lib.rs",
        "udf-sdk/src/lib.rs",
        "udf-sdk/macros/src/lib.rs",
    ] {
        assert!(paths.contains(&needed), "{needed} is not in {paths:?}");
    }
    // The module says what it was built with.
    let with = built_with(&built.wasm);
    assert!(
        with.toolchain
            .as_deref()
            .is_some_and(|t| t.starts_with("rustc 1.95.0")),
        "{with:?}"
    );
    assert_eq!(with.sdk.as_deref(), Some("tidegate-udf-sdk 0.1.0"));

    // The reviewer's rebuild, in another fresh directory: the same bytes.
    let rebuilt = rebuild::rebuild(&built.source).unwrap();
    let hash = sha256_hex(&built.wasm);
    assert_eq!(sha256_hex(&rebuilt), hash);

    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let uploaded = w
        .scientist
        .upload_module_with_source(&sid, &built.wasm, Some(&built.source))
        .unwrap();
    assert_eq!(uploaded["hash"], hash.as_str());
    let detail = w.reviewer.get_module(&sid, &hash).unwrap();
    assert_eq!(detail["source_review"], "source given, not rebuilt yet");
    assert_eq!(detail["source"]["sha256"], archive.sha256.as_str());
    assert_eq!(detail["built_with"]["sdk"], "tidegate-udf-sdk 0.1.0");
    assert_eq!(w.reviewer.module_source(&sid, &hash).unwrap(), built.source);

    // Only a reviewer who may approve it records a rebuild, of the module's own source.
    let by_scientist = refusal(w.scientist.record_source_check(
        &sid,
        &hash,
        &archive.sha256,
        &hash,
        "rustc 1.95.0",
    ));
    assert!(by_scientist.contains("(403)"), "{by_scientist}");
    let other_source = refusal(w.reviewer.record_source_check(
        &sid,
        &hash,
        &sha256_hex(b"another archive"),
        &hash,
        "rustc 1.95.0",
    ));
    assert!(
        other_source.contains("not this module's source"),
        "{other_source}"
    );

    let recorded = w
        .reviewer
        .record_source_check(
            &sid,
            &hash,
            &archive.sha256,
            &sha256_hex(&rebuilt),
            "rustc 1.95.0",
        )
        .unwrap();
    assert_eq!(recorded["source_review"], "rebuilt: bytes match");
    assert_eq!(recorded["source_check"]["matches"], true);

    // The review page: the verdict, and the source's text to read.
    let mut browser = Browser::new(w.reviewer.url());
    browser.sign_in(&token(&w.reviewer));
    let page = browser.get(&format!("/console/modules/{sid}/{hash}"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Source: rebuilt: bytes match"),
        "{}",
        page.body
    );
    assert!(page.body.contains("examples/visitor-udf/src/lib.rs"));
    assert!(
        page.body.contains("pub fn age_at_visit"),
        "the page shows the source's text"
    );
    w.reviewer
        .approve_module(&sid, &hash, "age_at_visit and mask_mobile, read in source")
        .unwrap();
}

/// A well-formed archive whose files need not build: the platform never builds a source.
fn archive_of(text: &str) -> Vec<u8> {
    write_source_archive(
        &BuildRecipe::C {
            file: "udf.c".into(),
            zig: "0.13.0".into(),
        },
        &[SourceFile {
            path: "udf.c".into(),
            bytes: text.as_bytes().to_vec(),
        }],
    )
    .unwrap()
}

#[test]
fn a_source_that_builds_to_other_bytes_blocks_approval_and_a_module_without_one_is_unverifiable() {
    let (env, sid, approved) = active_scenario();
    let w = &env.world;
    // The module approved without a source says so, and was approved all the same.
    let plain = w.reviewer.get_module(&sid, &approved).unwrap();
    assert_eq!(plain["source_review"], "no source: unverifiable");
    assert_eq!(plain["state"], "approved");

    let wasm = constant_module(7);
    let hash = sha256_hex(&wasm);
    let source = archive_of("int f(void) { return 7; }");
    w.scientist
        .upload_module_with_source(&sid, &wasm, Some(&source))
        .unwrap();
    let recorded = w
        .reviewer
        .record_source_check(
            &sid,
            &hash,
            &sha256_hex(&source),
            &sha256_hex(b"what the source really builds to"),
            "zig 0.13.0",
        )
        .unwrap();
    assert_eq!(recorded["source_review"], "rebuilt: bytes differ");
    let refused = refusal(w.reviewer.approve_module(&sid, &hash, "looks fine"));
    assert!(
        refused.contains("(403)") && refused.contains("other bytes"),
        "{refused}"
    );
    // A module's source is given once.
    let again = refusal(w.scientist.upload_module_with_source(
        &sid,
        &wasm,
        Some(&archive_of("int f(void) { return 8; }")),
    ));
    assert!(again.contains("given once"), "{again}");

    // A module uploaded without its source is given it later, once.
    let later = constant_module(9);
    let later_hash = sha256_hex(&later);
    w.scientist.upload_module(&sid, &later).unwrap();
    let nothing = refusal(w.reviewer.record_source_check(
        &sid,
        &later_hash,
        &sha256_hex(&source),
        &later_hash,
        "zig 0.13.0",
    ));
    assert!(nothing.contains("without a source"), "{nothing}");
    w.scientist
        .upload_module_with_source(&sid, &later, Some(&source))
        .unwrap();
    let detail = w.reviewer.get_module(&sid, &later_hash).unwrap();
    assert_eq!(detail["source_review"], "source given, not rebuilt yet");
}

#[test]
fn a_hostile_source_archive_is_refused_and_its_module_not_stored() {
    let (env, sid, _) = active_scenario();
    let w = &env.world;
    let wasm = constant_module(11);
    let good = archive_of("int f(void) { return 11; }");
    // A link to a file outside, spliced before a good archive's entries.
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_path("udf.h").unwrap();
    header.set_link_name("/etc/passwd").unwrap();
    header.set_cksum();
    let mut hostile = header.as_bytes().to_vec();
    hostile.extend_from_slice(&good);
    let cases: [(Vec<u8>, &str); 3] = [
        (hostile, "not a regular file"),
        (b"plain text, not an archive".to_vec(), "source archive"),
        (vec![0u8; 9 << 20], "at most"),
    ];
    for (bytes, why) in cases {
        let refused = refusal(
            w.scientist
                .upload_module_with_source(&sid, &wasm, Some(&bytes)),
        );
        assert!(refused.contains(why), "{refused}");
    }
    let missing = refusal(w.reviewer.get_module(&sid, &sha256_hex(&wasm)));
    assert!(missing.contains("(404)"), "{missing}");
}

/// The packed source of the visitor example, with `change` applied to its files.
fn changed_source(change: impl FnOnce(&mut Vec<SourceFile>)) -> Vec<u8> {
    let packed = rebuild::pack_rust(&example("visitor-udf")).unwrap();
    let archive = read_source_archive(&packed).unwrap();
    let mut files = archive.files;
    change(&mut files);
    write_source_archive(&archive.recipe, &files).unwrap()
}

#[test]
fn a_rebuild_refuses_sources_that_would_run_their_own_code_on_the_reviewers_machine() {
    // A build script in the module's crate.
    let with_build_script = changed_source(|files| {
        files.push(SourceFile {
            path: "examples/visitor-udf/build.rs".into(),
            bytes: b"fn main() { std::fs::write(\"/tmp/owned\", \"\").unwrap(); }".to_vec(),
        });
    });
    let refused = rebuild::rebuild(&with_build_script)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("build script"), "{refused}");

    // The SDK's macros (which run at build time) changed.
    let with_other_macros = changed_source(|files| {
        let lib = files
            .iter_mut()
            .find(|f| f.path == "udf-sdk/macros/src/lib.rs")
            .unwrap();
        lib.bytes
            .extend_from_slice(b"\n// a change that runs on the reviewer's machine\n");
    });
    let refused = rebuild::rebuild(&with_other_macros)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("not the guest SDK"), "{refused}");

    // Another spelling of the same: the SDK's files untouched, a dependency of its macros
    // swapped for a crate of the archive by a [patch] in the workspace manifest.
    let with_patch = changed_source(|files| {
        let root = files.iter_mut().find(|f| f.path == "Cargo.toml").unwrap();
        root.bytes
            .extend_from_slice(b"\n[patch.crates-io]\nquote = { path = \"evil/quote\" }\n");
        files.push(SourceFile {
            path: "evil/quote/Cargo.toml".into(),
            bytes: b"[package]\nname = \"quote\"\nversion = \"1.0.99\"\nedition = \"2021\"\n"
                .to_vec(),
        });
        files.push(SourceFile {
            path: "evil/quote/src/lib.rs".into(),
            bytes: b"// runs inside the SDK's macros\n".to_vec(),
        });
    });
    let refused = rebuild::rebuild(&with_patch).unwrap_err().to_string();
    assert!(refused.contains("workspace manifest"), "{refused}");
}

#[test]
fn a_c_file_rebuilds_to_the_same_bytes_with_the_zig_it_names() {
    if std::env::var_os("TIDEGATE_C_UDF_WASM").is_none() {
        assert!(
            std::env::var_os("TIDEGATE_REQUIRE_C_UDF").is_none(),
            "zig is required here: run scripts/build-c-udf"
        );
        eprintln!("zig is not installed here: run scripts/test (or scripts/build-c-udf)");
        return;
    }
    let built = rebuild::build_from_path(&example("c-udf").join("mask.c")).unwrap();
    let archive = read_source_archive(&built.source).unwrap();
    assert!(
        matches!(&archive.recipe, BuildRecipe::C { file, zig } if file == "mask.c" && zig == "0.13.0"),
        "{:?}",
        archive.recipe
    );
    let rebuilt = rebuild::rebuild(&built.source).unwrap();
    assert_eq!(sha256_hex(&rebuilt), sha256_hex(&built.wasm));
    let module = tidegate_runtime::Sandbox::new()
        .unwrap()
        .load(&built.wasm)
        .unwrap();
    assert_eq!(module.functions[0].name, "c_mask_mobile");
}
