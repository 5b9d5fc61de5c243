//! The shipped `docker-compose.yml` parses (no compose client runs here, so
//! a YAML parser stands in for `docker compose config`) and wires LibreChat
//! to chatgate's OpenID provider as SPEC section 7 says.

use std::process::Command;

use serde_json::Value;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml");
    let script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    let out = Command::new("python3")
        .args(["-c", script, path])
        .output()
        .expect("python3 runs (scripts/test.sh installs PyYAML)");
    assert!(
        out.status.success(),
        "docker-compose.yml does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn compose_runs_chatgate_redis_mongodb_and_two_librechats() {
    let doc = compose();
    let services = doc["services"].as_object().expect("services");
    for name in ["chatgate", "redis", "mongodb", "librechat-1", "librechat-2"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for name in ["librechat-1", "librechat-2"] {
        let service = &services[name];
        assert!(service["image"]
            .as_str()
            .unwrap()
            .contains("danny-avila/librechat"));
        let env = &service["environment"];
        assert!(
            env["OPENID_ISSUER"].as_str().unwrap().ends_with("/oidc"),
            "{name}"
        );
        for (key, value) in [
            ("OPENID_AUTO_REDIRECT", "true"),
            ("ALLOW_SOCIAL_LOGIN", "true"),
            ("ALLOW_SOCIAL_REGISTRATION", "true"),
            ("ALLOW_EMAIL_LOGIN", "false"),
            ("OPENID_CALLBACK_URL", "/oauth/openid/callback"),
            ("OPENID_ADMIN_ROLE", "admin"),
            ("OPENID_ADMIN_ROLE_PARAMETER_PATH", "roles"),
            ("OPENID_ADMIN_ROLE_TOKEN_KIND", "id"),
        ] {
            assert_eq!(env[key].as_str(), Some(value), "{name}: {key}");
        }
        assert!(
            env["OPENID_CLIENT_SECRET"].as_str().unwrap().contains("${"),
            "no secret is committed"
        );
    }
    let chatgate_env = services["chatgate"]["environment"].to_string();
    assert!(chatgate_env.contains("librechat-1") && chatgate_env.contains("librechat-2"));
    assert!(chatgate_env.contains("redis://redis"));
}
