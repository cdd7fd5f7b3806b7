//! The Bearer token flow against docker-registry configured for token auth,
//! with a small token issuer (RS256 JWTs signed via openssl) run by the test.

mod support;

use kiln::oci::Compression;
use kiln::registry::{Credentials, PullOptions, PushOptions, Reference, RegistryError};
use support::token_issuer::{start_issuer, Accepts, ISSUER, SERVICE};
use support::*;

const USER: &str = "builder";
const PASSWORD: &str = "t0ken-secret-never-logged";

#[test]
fn bearer_flow_with_anonymous_and_authenticated_tokens_per_repository_scope() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let issuer = start_issuer(rt.handle(), Accepts { basic: Some((USER.into(), PASSWORD.into())), refresh_token: None });
    let reg = RegistryServer::start(RegistrySetup {
        token: Some((issuer.realm.clone(), SERVICE.into(), ISSUER.into(), issuer.cert.clone())),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let authed = client(Some(docker_config(work.path(), &reg.addr, USER, PASSWORD)), None);
    let anonymous = client(None, None);
    let src = temp_store();
    let image = build_image(&src.store, 31, &[80_000, 4_000], "linux/amd64", Compression::Gzip);
    let app = Reference::parse(&format!("{}/team/app:v1", reg.addr)).unwrap();

    // Anonymous push: the anonymous token carries no push right.
    let err = rt.block_on(anonymous.push(&src.store, &image, &app, &PushOptions::default())).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("kiln login"), "{err}");

    // Authenticated push, then a mount into another repository.
    rt.block_on(authed.push(&src.store, &image, &app, &PushOptions::default())).unwrap();
    let copy = Reference::parse(&format!("{}/team/copy:v1", reg.addr)).unwrap();
    let report = rt.block_on(authed.push(&src.store, &image, &copy, &PushOptions { mount_from: Some("team/app".into()) })).unwrap();
    assert_eq!(report.mounted, 3);

    // Anonymous pull works with an anonymous token, bit-identical.
    for target in [app.clone(), copy.with_digest(image.digest().clone())] {
        let back = temp_store();
        rt.block_on(anonymous.pull(&back.store, &target, &PullOptions::default())).unwrap();
        assert_same_content(&src.store, &back.store, &image);
    }

    let requests = issuer.requests.lock().unwrap().clone();
    let has = |user: &str, scopes: &[&str]| requests.iter().any(|(u, s)| u == user && s.iter().map(String::as_str).eq(scopes.iter().copied()));
    assert!(has("anonymous", &["repository:team/app:pull,push"]), "{requests:?}");
    assert!(has(USER, &["repository:team/app:pull,push"]), "{requests:?}");
    assert!(has(USER, &["repository:team/copy:pull,push", "repository:team/app:pull"]), "{requests:?}");
    assert!(has("anonymous", &["repository:team/app:pull"]), "{requests:?}");
    assert!(has("anonymous", &["repository:team/copy:pull"]), "{requests:?}");

    // Wrong password: the token server refuses; nothing stored, no secret shown.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = client(Some(docker_config(bad_dir.path(), &reg.addr, USER, "wrong-secret-xyz")), None);
    let dst = temp_store();
    let before = store_state(&dst.store);
    let err = rt.block_on(bad.pull(&dst.store, &app, &PullOptions::default())).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains("rejected the stored credentials") && !msg.contains("wrong-secret-xyz"), "{msg}");
    assert_eq!(store_state(&dst.store), before);

    // Login check through the token server.
    rt.block_on(anonymous.check_credentials(&reg.addr, &Credentials { username: USER.into(), secret: PASSWORD.into() })).unwrap();
    let err = rt
        .block_on(anonymous.check_credentials(&reg.addr, &Credentials { username: USER.into(), secret: "nope".into() }))
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
}
