//! The binary's configuration contract: exit status 2 and one line naming
//! the variable; secrets never printed.

use std::process::{Command, Output};

fn connectflow(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_connectflow"));
    cmd.args(args);
    for var in [
        "FINICITY_PARTNER_SECRETS",
        "CONNECTFLOW_API_TOKENS",
        "DATABASE_URL",
        "KAFKA_BROKERS",
        "CONNECTFLOW_LISTEN",
        "CONNECTFLOW_KAFKA_PROPERTIES",
    ] {
        cmd.env_remove(var);
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().expect("running connectflow")
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr).lines().map(str::to_owned).collect()
}

#[test]
fn missing_partner_secret_exits_2_naming_the_variable() {
    for command in ["serve", "all"] {
        let output = connectflow(&[command], &[("CONNECTFLOW_API_TOKENS", "t")]);
        assert_eq!(output.status.code(), Some(2), "{command}");
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "one line: {lines:?}");
        assert!(lines[0].contains("FINICITY_PARTNER_SECRETS"), "{lines:?}");
    }
}

#[test]
fn missing_api_tokens_exits_2_naming_the_variable() {
    let output = connectflow(&["serve"], &[("FINICITY_PARTNER_SECRETS", "s")]);
    assert_eq!(output.status.code(), Some(2));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("CONNECTFLOW_API_TOKENS"), "{lines:?}");
}

#[test]
fn malformed_values_exit_2_naming_the_variable() {
    let cases = [
        ("CONNECTFLOW_LISTEN", "not-an-address"),
        ("FINICITY_PARTNER_SECRETS", "a,,b"),
        ("CONNECTFLOW_KAFKA_PROPERTIES", "no-equals-sign"),
        ("CONNECTFLOW_PUBLISH_TIMEOUT_MS", "soon"),
        ("CONNECTFLOW_LOG_FORMAT", "xml"),
        ("CONNECTFLOW_WEBHOOK_DATA_KEYS", "ref,,program"),
        ("CONNECTFLOW_WEBHOOK_DATA_KEYS", "ref, program"),
        ("CONNECTFLOW_WEBHOOK_DATA_KEYS", ""),
    ];
    for (variable, value) in cases {
        let output = connectflow(&["serve"], &[(variable, value), ("CONNECTFLOW_API_TOKENS", "t")]);
        assert_eq!(output.status.code(), Some(2), "{variable}");
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{variable}: {lines:?}");
        assert!(lines[0].contains(variable), "{variable}: {lines:?}");
    }
}

#[test]
fn secrets_are_not_printed_in_errors_or_help() {
    let secret = "very-secret-partner-key";
    let env = [
        ("FINICITY_PARTNER_SECRETS", secret),
        ("CONNECTFLOW_API_TOKENS", "very-secret-token"),
        ("DATABASE_URL", "postgres://u:very-secret-pw@127.0.0.1:1/x"),
        ("CONNECTFLOW_KAFKA_PROPERTIES", "sasl.password=very-secret-sasl"),
    ];
    for args in [&["serve", "--help"][..], &["all", "--help"], &["serve", "--listen", "bad"]] {
        let output = connectflow(args, &env);
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!text.contains("very-secret"), "{args:?} printed a secret: {text}");
    }
}

#[test]
fn help_documents_every_option() {
    let top = connectflow(&["--help"], &[]);
    assert_eq!(top.status.code(), Some(0));
    let text = String::from_utf8_lossy(&top.stdout);
    for sub in ["serve", "consume", "all", "migrate"] {
        assert!(text.contains(sub), "{sub} missing from --help");
        let output = connectflow(&[sub, "--help"], &[]);
        assert_eq!(output.status.code(), Some(0));
        let help = String::from_utf8_lossy(&output.stdout);
        // Every option line is followed by a description: no bare flags.
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("--") && !line.contains("--help") && !line.contains("--version") {
                let next = lines.get(i + 1).map_or("", |l| l.trim());
                assert!(!next.is_empty() && !next.starts_with("--"), "{sub}: `{line}` has no description");
            }
        }
    }
}

#[test]
fn secret_lists_with_empty_or_spaced_entries_exit_2_naming_the_variable_not_the_value() {
    for (variable, value) in [
        ("FINICITY_PARTNER_SECRETS", "current-secret, previous-secret"),
        ("FINICITY_PARTNER_SECRETS", "current-secret,"),
        ("CONNECTFLOW_API_TOKENS", " token-one"),
    ] {
        let mut env = vec![("FINICITY_PARTNER_SECRETS", "s"), ("CONNECTFLOW_API_TOKENS", "t")];
        env.retain(|(k, _)| *k != variable);
        env.push((variable, value));
        let output = connectflow(&["serve"], &env);
        assert_eq!(output.status.code(), Some(2), "{variable}={value:?}");
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(variable), "{lines:?}");
        for secret in ["current-secret", "previous-secret", "token-one"] {
            assert!(!lines[0].contains(secret), "the value is never printed: {lines:?}");
        }
    }
}

#[test]
fn a_bad_programs_file_exits_2_naming_the_line_or_variable() {
    let dir = std::env::temp_dir().join(format!("connectflow-programs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("programs file");
        path.to_string_lossy().into_owned()
    };
    let duplicate =
        write("duplicate.toml", "[[program]]\nid = \"a\"\nname = \"A\"\n\n[[program]]\nid = \"a\"\nname = \"B\"\n");
    let malformed = write("malformed.toml", "[[program]]\nid = \"a\"\nname = A\n");
    let unset =
        write("unset.toml", "[[program]]\nid = \"a\"\nname = \"A\"\npartner_secrets_env = \"CF_TEST_UNSET_SECRETS\"\n");
    let cases = [
        ("serve", duplicate.as_str(), "line 6"),
        ("consume", duplicate.as_str(), "line 6"),
        ("all", malformed.as_str(), "line 3"),
        ("serve", unset.as_str(), "CF_TEST_UNSET_SECRETS"),
        ("serve", "/nonexistent/programs.toml", "cannot read"),
    ];
    for (command, path, named) in cases {
        let output = connectflow(
            &[command],
            &[("CONNECTFLOW_PROGRAMS_FILE", path), ("CONNECTFLOW_API_TOKENS", "t"), ("FINICITY_PARTNER_SECRETS", "s")],
        );
        assert_eq!(output.status.code(), Some(2), "{command} {path}");
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "one line: {lines:?}");
        assert!(lines[0].contains("CONNECTFLOW_PROGRAMS_FILE") && lines[0].contains(named), "{lines:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_parallelism_the_pool_cannot_serve_exits_2_naming_both_settings() {
    let env = [
        ("CONNECTFLOW_CONSUMER_PARALLELISM", "8"),
        ("CONNECTFLOW_DATABASE_MAX_CONNECTIONS", "10"),
        ("FINICITY_PARTNER_SECRETS", "s"),
        ("CONNECTFLOW_API_TOKENS", "t"),
    ];
    for command in ["consume", "all"] {
        let output = connectflow(&[command], &env);
        assert_eq!(output.status.code(), Some(2), "{command}");
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "one line: {lines:?}");
        assert!(lines[0].contains("CONNECTFLOW_DATABASE_MAX_CONNECTIONS"), "{lines:?}");
        assert!(lines[0].contains("CONNECTFLOW_CONSUMER_PARALLELISM"), "{lines:?}");
    }
}
