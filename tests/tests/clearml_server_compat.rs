//! The test server is faithful where real ClearML deployments differ from what the daemon first
//! assumed (issue 17): tokens signed with the token secret's bytes, for any company; tasks of
//! two companies; `tasks.edit_runtime` with the real rules and a release without it; HTTPS
//! with a CA made in the test; a task as the open-source Kubernetes glue leaves it. Each rule
//! cites its source in `tests/src/clearml_server/`. All on loopback.

use base64::Engine;
use router_tests::clearml_server::client::ApiClient;
use router_tests::clearml_server::k8s_glue::K8S_PENDING_QUEUE;
use router_tests::clearml_server::tls::TestCa;
use router_tests::clearml_server::{
    ClearmlServer, DEFAULT_TOKEN_SECRET, HELM_COOKIE, HELM_DEFAULT_TOKEN_SECRET, Identity,
    ServerOptions, ServerRelease, TaskSpec,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

fn logged_in(server: &ClearmlServer) -> ApiClient {
    let mut c = ApiClient::for_server(server).expect("client");
    let creds = server.credentials();
    c.login(&creds.access_key, &creds.secret_key)
        .expect("login with the server's credentials");
    c
}

/// The payload of `token` if it verifies (HS256) with `key`.
fn verified(token: &str, key: &[u8]) -> Option<Value> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(key),
        &validation,
    )
    .ok()
    .map(|d| d.claims)
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn tokens_are_signed_with_the_secret_strings_bytes_and_can_be_minted_for_any_company() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let client = logged_in(&server);
    let token = client.token.clone().expect("token");
    assert_eq!(admin.token_secret(), DEFAULT_TOKEN_SECRET.as_bytes());
    let claims = verified(&token, DEFAULT_TOKEN_SECRET.as_bytes())
        .expect("the secret as written is the key");
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(DEFAULT_TOKEN_SECRET)
        .expect("the default secret is valid base64url");
    assert!(
        verified(&token, &decoded).is_none(),
        "its base64url decoding is another key"
    );
    let want: BTreeSet<String> = [
        "auth_type",
        "identity",
        "iat",
        "exp",
        "session_id",
        "env",
        "api_version",
        "server_version",
        "server_build",
        "feature_set",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    assert_eq!(keys(&claims), want, "{claims}");
    let identity: BTreeSet<String> = ["user", "company", "role", "user_name", "company_name"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(keys(&claims["identity"]), identity);

    // A browser of another company: a valid token the server itself accepts.
    let other = Identity::in_company("c0ffee00c0ffee00c0ffee00c0ffee00");
    let mut browser = ApiClient::new(&server.url());
    browser.token = Some(admin.issue_token_for(&other, Duration::from_secs(60)));
    let me = browser
        .ok("users.get_current_user", &json!({}))
        .expect("accepted");
    assert_eq!(me["user"]["company"]["id"], other.company.as_str());
    // A crafted payload: expired an hour ago.
    let mut payload = admin.token_payload(&other, Duration::from_secs(60));
    payload["exp"] = json!(payload["iat"].as_i64().unwrap() - 3600);
    browser.token = Some(admin.sign_payload(&payload));
    let a = browser.call("users.get_current_user", &json!({})).unwrap();
    assert_eq!(a.codes(), (401, 30));

    // The Helm chart's secret and cookie.
    let helm = ClearmlServer::start_with(
        ServerOptions::default()
            .token_secret(HELM_DEFAULT_TOKEN_SECRET)
            .cookie_name(HELM_COOKIE),
    )
    .expect("helm-like server");
    let http = reqwest::blocking::Client::new();
    let creds = helm.credentials();
    let r = http
        .post(format!("{}/v2.31/auth.login", helm.url()))
        .basic_auth(&creds.access_key, Some(&creds.secret_key))
        .send()
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let body: Value = r.json().unwrap();
    let token = body["data"]["token"].as_str().unwrap();
    assert!(
        cookie.starts_with(&format!("{HELM_COOKIE}={token};")),
        "{cookie}"
    );
    assert!(verified(token, HELM_DEFAULT_TOKEN_SECRET.as_bytes()).is_some());
    let with_cookie = |name: &str| {
        http.post(format!("{}/v2.31/users.get_current_user", helm.url()))
            .header("Cookie", format!("{name}={token}"))
            .json(&json!({}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with_cookie(HELM_COOKIE), 200);
    assert_eq!(with_cookie("clearml_token_basic"), 401, "not its cookie");
}

#[test]
fn a_caller_sees_and_edits_only_its_own_companys_tasks() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let own = admin.identity().company;
    let other = Identity::in_company("0ther0ther0ther0ther0ther0ther00");
    let a = admin.create_task(TaskSpec::new("ours").status("in_progress"));
    let b = admin.create_task(
        TaskSpec::new("theirs")
            .status("in_progress")
            .company(&other.company),
    );
    let public = admin.create_task(TaskSpec::new("example").company(""));
    let companies = |client: &ApiClient| {
        let data = client
            .ok(
                "tasks.get_all",
                &json!({"only_fields": ["id", "company"], "order_by": ["name"]}),
            )
            .unwrap();
        data["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_string(),
                    t["company"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let ours = logged_in(&server);
    assert_eq!(
        companies(&ours),
        vec![(public.clone(), String::new()), (a.clone(), own.clone())]
    );
    let read = ours.call("tasks.get_by_id", &json!({"task": b})).unwrap();
    assert_eq!(read.codes(), (400, 101));
    let edit = ours
        .call(
            "tasks.edit",
            &json!({"task": b, "force": true, "runtime": {"x": "1"}}),
        )
        .unwrap();
    assert_eq!(edit.codes(), (400, 101));
    assert!(
        edit.msg().contains(&format!("company={own}")),
        "{}",
        edit.msg()
    );

    let creds = admin.add_credentials(other.clone());
    let mut theirs = ApiClient::new(&server.url());
    theirs.login(&creds.access_key, &creds.secret_key).unwrap();
    assert_eq!(
        companies(&theirs),
        vec![(public, String::new()), (b.clone(), other.company.clone())]
    );
    theirs
        .ok(
            "tasks.edit",
            &json!({"task": b, "force": true, "runtime": {"x": "1"}}),
        )
        .expect("its own task");
    assert_eq!(admin.task(&b).unwrap()["company"], other.company.as_str());
}

#[test]
fn edit_runtime_sets_and_removes_keys_with_the_real_rules() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let client = logged_in(&server);
    let id = admin.create_task(
        TaskSpec::new("app")
            .status("in_progress")
            .runtime(json!({"_PORT": 8080, "keep": "x", "gone": "y"})),
    );
    let before = admin.task(&id).unwrap()["last_update"].clone();
    let a = client
        .call(
            "tasks.edit_runtime",
            &json!({"task": id, "add_or_update": {"endpoint": "http://r/", "external_tcp_port": 30000},
                    "remove": ["gone", "never-there"]}),
        )
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.data(), &json!({"updated": 1}));
    assert_eq!(
        a.json()["meta"]["endpoint"]["actual_version"],
        json!(1.0),
        "served from 1.0"
    );
    assert_eq!(
        Value::Object(admin.runtime(&id)),
        json!({"_PORT": 8080, "keep": "x", "endpoint": "http://r/", "external_tcp_port": 30000}),
        "per key, values as sent (numbers too)"
    );
    assert_ne!(admin.task(&id).unwrap()["last_update"], before);

    // Keys are stored escaped and read back as stored.
    client
        .ok(
            "tasks.edit_runtime",
            &json!({"task": id, "add_or_update": {"_ROUTER_NAME": "r1", "endpoint__ui": "u"}}),
        )
        .unwrap();
    let rt = admin.runtime(&id);
    assert_eq!(rt["%_ROUTER_NAME"], "r1");
    assert_eq!(rt["endpoint%_%_ui"], "u");
    assert!(!rt.contains_key("_ROUTER_NAME") && !rt.contains_key("endpoint__ui"));
    client
        .ok(
            "tasks.edit_runtime",
            &json!({"task": id, "remove": ["_ROUTER_NAME"]}),
        )
        .unwrap();
    assert!(!admin.runtime(&id).contains_key("%_ROUTER_NAME"));

    // Nothing to do; the request's `force` changes nothing; only created/queued/in_progress.
    let a = client
        .ok("tasks.edit_runtime", &json!({"task": id, "force": false}))
        .unwrap();
    assert_eq!(a, json!({"updated": 0}));
    admin.set_status(&id, "stopped");
    let a = client
        .call(
            "tasks.edit_runtime",
            &json!({"task": id, "force": true, "add_or_update": {"k": "v"}}),
        )
        .unwrap();
    assert_eq!(a.codes(), (400, 110));
    assert_eq!(
        a.msg(),
        "Invalid task status: expected=created, status=stopped"
    );
    admin.set_status(&id, "queued");
    client
        .ok(
            "tasks.edit_runtime",
            &json!({"task": id, "add_or_update": {"k": "v"}}),
        )
        .expect("queued is editable");

    for (body, codes) in [
        (json!({"add_or_update": {"k": "v"}}), (400, 12)),
        (json!({"task": id, "add_or_update": 5}), (400, 12)),
        (json!({"task": id, "remove": [1]}), (400, 12)),
        (json!({"task": id, "add_or_update": {" ": "v"}}), (400, 12)),
        (
            json!({"task": "0123", "add_or_update": {"k": "v"}}),
            (400, 101),
        ),
    ] {
        let a = client.call("tasks.edit_runtime", &body).unwrap();
        assert_eq!(a.codes(), codes, "{body}: {}", a.msg());
    }

    // A writer landing right after the write is played as for `tasks.edit`.
    admin.after_edit(|_, runtime| {
        runtime.insert("progress".into(), json!("50"));
    });
    client
        .ok(
            "tasks.edit_runtime",
            &json!({"task": id, "add_or_update": {"endpoint": "e2"}}),
        )
        .unwrap();
    admin.clear_after_edit();
    let rt = admin.runtime(&id);
    assert_eq!(
        (&rt["endpoint"], &rt["progress"]),
        (&json!("e2"), &json!("50"))
    );
}

#[test]
fn an_older_release_has_no_edit_runtime_and_says_its_api_version() {
    let newest = ClearmlServer::start().expect("server");
    let info = logged_in(&newest).ok("server.info", &json!({})).unwrap();
    assert_eq!(
        (&info["version"], &info["api_version"]),
        (&json!("2.3.0"), &json!("2.34"))
    );

    let old = ClearmlServer::start_with(ServerOptions::default().release(ServerRelease::V2_2))
        .expect("2.2.0 server");
    let client = logged_in(&old);
    let info = client.ok("server.info", &json!({})).unwrap();
    assert_eq!(
        (&info["version"], &info["api_version"]),
        (&json!("2.2.0"), &json!("2.33"))
    );
    let payload = client.token.as_deref().unwrap().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["api_version"], "2.33");
    let id = old
        .admin()
        .create_task(TaskSpec::new("t").status("in_progress"));
    let a = client
        .call(
            "tasks.edit_runtime",
            &json!({"task": id, "add_or_update": {"k": "v"}}),
        )
        .unwrap();
    assert_eq!(a.codes(), (404, 0));
    assert_eq!(
        a.msg(),
        "Unable to find endpoint for name tasks.edit_runtime and version 2.31"
    );
    // Unversioned, the path means the server's highest version.
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/tasks.edit_runtime", old.url()))
        .bearer_auth(client.token.as_deref().unwrap())
        .json(&json!({"task": id}))
        .send()
        .unwrap();
    let v: Value = r.json().unwrap();
    assert_eq!(
        v["meta"]["result_msg"],
        "Unable to find endpoint for name tasks.edit_runtime and version 2.33"
    );
    // The read-merge-write path still works there.
    client
        .ok(
            "tasks.edit",
            &json!({"task": id, "force": true, "runtime": {"k": "v"}}),
        )
        .unwrap();
}

#[test]
fn https_with_a_ca_made_in_the_test() {
    let mut server = ClearmlServer::start_with(ServerOptions::default().https(&[])).expect("https");
    assert!(
        server.url().starts_with("https://127.0.0.1:"),
        "{}",
        server.url()
    );
    let ca = server.ca_pem().expect("a CA bundle");
    let pem = std::fs::read_to_string(&ca).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let client = logged_in(&server);
    assert_eq!(
        client.ok("debug.ping", &json!({})).unwrap()["msg"],
        "ClearML server"
    );

    // The built-in roots do not know the CA, nor does a bundle of another CA.
    let plain = reqwest::blocking::Client::new()
        .post(format!("{}/v2.31/debug.ping", server.url()))
        .send();
    assert!(plain.is_err(), "an unknown CA is refused");
    let stranger = TestCa::generate(&["127.0.0.1".into()]).unwrap();
    let cert = reqwest::Certificate::from_pem(&std::fs::read(stranger.ca_pem()).unwrap()).unwrap();
    let wrong = reqwest::blocking::Client::builder()
        .add_root_certificate(cert)
        .build()
        .unwrap()
        .post(format!("{}/v2.31/debug.ping", server.url()))
        .send();
    assert!(wrong.is_err(), "another CA's bundle is refused");

    // Down and back: still HTTPS with the same CA.
    server.go_down();
    server.come_back(None).expect("back");
    assert_eq!(
        logged_in(&server).ok("debug.ping", &json!({})).unwrap()["msg"],
        "ClearML server"
    );
}

#[test]
fn the_open_source_k8s_glue_leaves_the_users_queue_only_in_a_user_property() {
    for (options, oss) in [
        (ServerOptions::default(), true),
        (ServerOptions::default().advanced(), false),
    ] {
        let server = ClearmlServer::start_with(options).expect("server");
        let admin = server.admin();
        let id = admin.create_task(TaskSpec::new("app"));
        let glued = admin.k8s_glue_schedules(&id, "gpu").expect("glue");
        assert_eq!(admin.queue_id("gpu"), Some(glued.user_queue_id.clone()));
        assert_eq!(
            admin.queue_id(K8S_PENDING_QUEUE),
            Some(glued.pending_queue_id.clone())
        );
        admin.k8s_pod_runs(&id).expect("pod");
        let task = admin.task(&id).unwrap();
        assert_eq!(task["status"], "in_progress");
        let queue = if oss {
            &glued.pending_queue_id
        } else {
            &glued.user_queue_id
        };
        assert_eq!(task["execution"]["queue"], queue.as_str(), "oss={oss}");
        assert_eq!(
            task["hyperparams"]["properties"]["k8s-queue"],
            json!({"section": "properties", "name": "k8s-queue", "value": "gpu"})
        );
        // What a router listening on the user's queue finds by `execution.queue`.
        let found = logged_in(&server)
            .ok(
                "tasks.get_all",
                &json!({"execution.queue": [glued.user_queue_id], "status": ["in_progress"],
                        "only_fields": ["id", "hyperparams.properties"]}),
            )
            .unwrap();
        assert_eq!(found["tasks"].as_array().unwrap().len(), usize::from(!oss));
        // What stays: the user property, a list filter of `tasks.get_all` (`hyperparams.*`).
        let found = logged_in(&server)
            .ok(
                "tasks.get_all",
                &json!({"hyperparams.properties.k8s-queue.value": ["gpu"],
                        "only_fields": ["id"]}),
            )
            .unwrap();
        assert_eq!(found["tasks"], json!([{"id": id}]));
    }
}

#[test]
fn enqueue_follows_the_real_rules() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let client = logged_in(&server);
    let id = admin.create_task(TaskSpec::new("t"));
    let a = client
        .ok(
            "tasks.enqueue",
            &json!({"task": id, "queue_name": "new-queue"}),
        )
        .unwrap();
    let q = admin
        .queue_id("new-queue")
        .expect("an unknown name creates the queue");
    assert_eq!(a["fields"]["status"], "queued");
    assert_eq!(admin.task(&id).unwrap()["execution"]["queue"], q.as_str());
    let a = client
        .call(
            "tasks.enqueue",
            &json!({"task": id, "queue": q, "queue_name": "new-queue"}),
        )
        .unwrap();
    assert_eq!(a.codes(), (400, 12));
    admin.set_status(&id, "completed");
    let a = client
        .call("tasks.enqueue", &json!({"task": id, "queue": q}))
        .unwrap();
    assert_eq!(a.codes(), (400, 110), "completed → queued is no transition");
    let a = client
        .call(
            "tasks.enqueue",
            &json!({"task": id, "queue": q, "update_execution_queue": false}),
        )
        .unwrap();
    assert_eq!(a.codes(), (400, 12), "{}", a.msg());
}
