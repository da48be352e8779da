//! `sluicectl rules …` as an operator runs it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn sluicectl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn default_rules() -> String {
    format!("{}/../rules/default.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_default_rules() {
    let (code, out, _) = sluicectl(&["rules", "check", &default_rules()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": ok (8 rules"), "{out}");
}

#[test]
fn check_prints_file_line_col_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("sluicectl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[identity]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\", \"300.1.1.1/32\"]\n\n[[rule]]\nname = \"r\"\nidentities = [\"a\"]\ncategories = [\"missing\"]\naction = \"block\"\n").unwrap();
    let (code, out, _) = sluicectl(&["rules", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0]
            .starts_with(&format!("{}:3:24: error: `300.1.1.1/32` is not a CIDR", bad.display())),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{}:8:15: error: rule `r` names unknown category `missing`",
            bad.display()
        )),
        "{out}"
    );
    let (code, out, _) = sluicectl(&["rules", "check", "--json", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["diagnostics"][0]["line"], 3);
    // A missing file is a different failure.
    let (code, _, err) = sluicectl(&["rules", "check", dir.join("nope.toml").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read rule file"), "{err}");
    // Includes resolve relative to the rule file.
    std::fs::write(
        dir.join("extra.toml"),
        "description = \"x\"\ndomains = [\"intranet-ai.example\"]\n",
    )
    .unwrap();
    let with_include = dir.join("inc.toml");
    std::fs::write(&with_include, "[[category]]\nname = \"c\"\ninclude = [\"./extra.toml\", \"openai-api\"]\n[[rule]]\nname = \"r\"\ncategories = [\"c\"]\naction = \"block\"\n").unwrap();
    let (code, out, _) = sluicectl(&[
        "rules",
        "explain",
        with_include.to_str().unwrap(),
        "--src",
        "10.0.0.1",
        "--sni",
        "intranet-ai.example",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("decision: block (rule r"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explain_and_diff() {
    let (code, out, _) = sluicectl(&[
        "rules",
        "explain",
        &default_rules(),
        "--src",
        "10.20.9.99",
        "--sni",
        "api.openai.com",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("=> unknown-no-openai"), "{out}");
    assert!(out.contains("decision: block"), "{out}");
    let (code, out, _) = sluicectl(&["rules", "diff", &default_rules(), &default_rules()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rules_changed"].as_array().unwrap().len(), 0);
    let (code, out, _) = sluicectl(&["rules", "detectors"]);
    assert_eq!(code, 0);
    assert!(out.contains("credit_card"));
}

#[test]
fn ca_init_and_check() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sluicectl-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (code, out, err) = sluicectl(&["ca", "init", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let key = dir.join("ca.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let (code, out, _) =
        sluicectl(&["ca", "check", dir.join("ca.crt").to_str().unwrap(), key.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("ok (CA valid for 36"), "{out}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, _, err) =
        sluicectl(&["ca", "check", dir.join("ca.crt").to_str().unwrap(), key.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("chmod 600"), "{err}");
    let (code, _, err) = sluicectl(&["ca", "init", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "never overwrites: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn completions_and_online_usage_errors() {
    let (code, out, _) = sluicectl(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("sluicectl") && out.contains("identities"),
        "{}",
        &out[..200.min(out.len())]
    );
    // Online commands without a URL or token say what is missing and exit 2.
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .args(["status"])
        .env_remove("SLUICE_URL")
        .env_remove("SLUICE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_URL"));
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .args(["flows", "--url", "http://plain:80"])
        .env("SLUICE_TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected https://"));
}
