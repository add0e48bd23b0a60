//! `portico validate`: every file of `tests/invalid/` must fail with the errors its `# expect:` lines name
//! (`file:line: Kind/namespace/name: field: message`), and the team's own chart renders must load cleanly.

use std::path::Path;
use std::process::Command;

fn validate(args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("validate")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run portico");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
    )
}

#[test]
fn each_invalid_file_prints_its_expected_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/invalid").flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(files.len() >= 10, "the invalid set has {} files", files.len());
    for file in files {
        let name = file.file_name().and_then(|n| n.to_str()).expect("file name").to_string();
        let text = std::fs::read_to_string(&file).expect("read");
        let expected: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expected.is_empty(), "{name} has no # expect: line");
        let (success, output) = validate(&["--config", &name], &dir);
        assert!(!success, "{name}: validate must exit non-zero\n{output}");
        for line in expected {
            assert!(output.contains(line), "{name}: expected {line:?} in:\n{output}");
        }
    }
}

#[test]
fn the_teams_chart_renders_load_with_only_warnings() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/article/chart-0.1.6");
    for file in ["httproute-flavour.yaml", "ingress-flavour.yaml"] {
        let (success, output) = validate(&["--config", file, "--default-namespace", "dev"], &chart);
        assert!(success, "{file} must load without error:\n{output}");
        assert!(output.contains("warning: repeated mapping key, the last value is used"), "{file}: {output}");
        assert!(output.contains("0 error(s)"), "{output}");
        assert!(output.contains("of other kinds ignored"), "{output}");
    }
}

#[test]
fn a_valid_example_exits_zero_and_reports_statuses() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/article");
    let (success, output) =
        validate(&["--config", "common", "--config", "httproute", "--default-namespace", "dev"], &example);
    assert!(success, "{output}");
    assert!(
        output.contains(
            "HTTPRoute/dev/app01-aclab-nginx-httproute: Accepted=True(Accepted) ResolvedRefs=True(ResolvedRefs)"
        ),
        "{output}"
    );
}
