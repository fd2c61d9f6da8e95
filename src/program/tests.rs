use super::*;

const TWO: &str = r#"
[[program]]
id = "acme-card"
name = "Acme Card"
authorization_days = 30
partner_secrets_env = "ACME_SECRETS"

[[program]]
id = "default"
name = "Everyone else"
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "ACME_SECRETS" => Some("acme-new,acme-old".into()),
        "EMPTY" => Some(String::new()),
        "SPACED" => Some("a, b".into()),
        _ => None,
    }
}

fn default_secrets() -> SecretList {
    SecretList::new(["shared"]).expect("secrets")
}

fn parse(text: &str) -> Result<Programs, ProgramsError> {
    let default = default_secrets();
    Programs::parse(text, AuthorizationPolicy::new(365), Secrets::Required { default: Some(&default) }, &env)
}

#[test]
fn a_file_declares_programs_with_their_own_settings() {
    let programs = parse(TWO).expect("valid file");
    let ids: Vec<&str> = programs.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["acme-card", "default"]);
    let acme = programs.get("acme-card").expect("acme");
    assert_eq!(acme.name, "Acme Card");
    assert_eq!(acme.authorization.days(), 30);
    let secrets: Vec<&str> = acme.partner_secrets.iter().flat_map(|s| s.iter()).map(|s| s.expose()).collect();
    assert_eq!(secrets, ["acme-new", "acme-old"]);
    let other = programs.get("default").expect("default");
    assert_eq!(other.authorization.days(), 365, "the global period when the program sets none");
    let secrets: Vec<&str> = other.partner_secrets.iter().flat_map(|s| s.iter()).map(|s| s.expose()).collect();
    assert_eq!(secrets, ["shared"], "FINICITY_PARTNER_SECRETS when the program names no variable");
    assert_eq!(programs.authorization("acme-card").days(), 30);
    assert_eq!(programs.authorization("gone").days(), 365, "a program no longer declared");
    assert!(programs.get("acme").is_none());
}

#[test]
fn without_a_file_there_is_the_default_program() {
    let programs = Programs::single(AuthorizationPolicy::new(90), Some(default_secrets()));
    let ids: Vec<&str> = programs.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["default"]);
    assert_eq!(programs.authorization("default").days(), 90);
}

#[test]
fn problems_name_the_line() {
    let duplicate = "[[program]]\nid = \"a\"\nname = \"A\"\n\n[[program]]\nid = \"a\"\nname = \"A again\"\n";
    assert_eq!(parse(duplicate).err(), Some(ProgramsError::DuplicateId { line: 6, id: "a".into() }));

    let bad_id = "[[program]]\nname = \"A\"\nid = \"Acme\"\n";
    assert_eq!(parse(bad_id).err(), Some(ProgramsError::InvalidId { line: 3, id: "Acme".into() }));

    let unknown_field = "[[program]]\nid = \"a\"\nname = \"A\"\nsecret = \"x\"\n";
    assert!(
        matches!(parse(unknown_field), Err(ProgramsError::Malformed { line: 4, .. })),
        "{:?}",
        parse(unknown_field)
    );

    let not_toml = "[[program]]\nid = \"a\"\nname = A\n";
    assert!(matches!(parse(not_toml), Err(ProgramsError::Malformed { line: 3, .. })), "{:?}", parse(not_toml));

    let no_name = "[[program]]\nid = \"a\"\n";
    assert!(matches!(parse(no_name), Err(ProgramsError::Malformed { .. })));

    let negative_days = "[[program]]\nid = \"a\"\nname = \"A\"\nauthorization_days = -1\n";
    assert!(matches!(parse(negative_days), Err(ProgramsError::Malformed { line: 4, .. })));

    assert_eq!(parse("").err(), Some(ProgramsError::Empty));
}

#[test]
fn a_named_variable_must_be_set() {
    let named =
        |variable: &str| format!("[[program]]\nid = \"a\"\nname = \"A\"\npartner_secrets_env = \"{variable}\"\n");
    for variable in ["UNSET", "EMPTY"] {
        assert_eq!(
            parse(&named(variable)).err(),
            Some(ProgramsError::UnsetVariable { program: "a".into(), variable: variable.into() })
        );
    }
    assert!(matches!(parse(&named("SPACED")), Err(ProgramsError::InvalidVariable { .. })));
    let message = parse(&named("SPACED")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("SPACED") && !message.contains("a, b"), "names the variable, never the value: {message}");

    // The default secrets are required only by a program that uses them.
    let only_named = named("ACME_SECRETS");
    let programs =
        Programs::parse(&only_named, AuthorizationPolicy::default(), Secrets::Required { default: None }, &env);
    assert!(programs.is_ok());
    let uses_default = "[[program]]\nid = \"a\"\nname = \"A\"\n";
    assert_eq!(
        Programs::parse(uses_default, AuthorizationPolicy::default(), Secrets::Required { default: None }, &env).err(),
        Some(ProgramsError::UnsetVariable { program: "a".into(), variable: DEFAULT_SECRETS_ENV.into() })
    );
    // consume does not read secrets at all.
    let programs = Programs::parse(&named("UNSET"), AuthorizationPolicy::default(), Secrets::NotNeeded, &env);
    assert!(programs.is_ok_and(|p| p.iter().all(|p| p.partner_secrets.is_none())));
}
