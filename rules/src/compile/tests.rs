use super::*;
use names::edit_distance;

#[test]
fn cidr_parsing() {
    assert!(parse_cidr("10.20.1.0/24").is_ok());
    assert_eq!(parse_cidr("10.20.1.10").unwrap().to_string(), "10.20.1.10/32");
    assert!(parse_cidr("10.20.1.1/24").unwrap_err().contains("10.20.1.0/24"));
    assert!(parse_cidr("10.20.1.0/33").is_err());
    assert!(parse_cidr("fd20::/64").is_ok());
}

#[test]
fn inspect_only_settings_are_refused_on_other_rules() {
    let text = |action: &str| {
        format!(
            "[[category]]\nname = \"c\"\ndomains = [\"a.example\"]\n\n[[rule]]\nname = \"r\"\ncategories = [\"c\"]\naction = \"{action}\"\nblock_audio = true\nmask_responses = true\n"
        )
    };
    let loader = crate::catalog::ShippedOnly;
    let c = compile("t.toml", &text("inspect"), &loader).unwrap();
    let h = &c.policy.rules[0].spec.headers;
    assert!(h.block_audio && h.mask_responses);
    let errs = compile("t.toml", &text("allow"), &loader).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        msgs.iter().any(|m| m.contains("`block_audio` applies only to `inspect` rules")),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| m.contains("`mask_responses` applies only")), "{msgs:?}");
}

#[test]
fn uuids_and_distance() {
    assert!(is_uuid("00000000-0000-4000-8000-00000000f1a0"));
    assert!(!is_uuid("00000000-0000-4000-8000-00000000f1a"));
    assert!(!is_uuid("00000000x0000-4000-8000-00000000f1a0"));
    assert_eq!(edit_distance("finance", "finanse"), 1);
    assert_eq!(
        closest("openai-apj", ["openai-api", "chatgpt"].into_iter()),
        ": did you mean `openai-api`?"
    );
}
