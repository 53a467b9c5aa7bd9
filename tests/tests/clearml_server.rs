//! The ClearML test server behaves like the real one where routers and the SDK look: paths and
//! versions, the envelope, authentication, the task queries and edits, and the admin side's
//! tasks and faults. All on loopback, ephemeral ports.

use base64::Engine;
use reqwest::Method;
use router_tests::clearml_server::client::ApiClient;
use router_tests::clearml_server::{ClearmlServer, FaultKind, ServerOptions, TaskSpec};
use router_tests::wait;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn logged_in(server: &ClearmlServer) -> ApiClient {
    let mut c = ApiClient::new(&server.url());
    let creds = server.credentials();
    c.login(&creds.access_key, &creds.secret_key)
        .expect("login with the server's credentials");
    c
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("payload is base64url");
    serde_json::from_slice(&raw).expect("payload is JSON")
}

#[test]
fn login_refuses_bad_keys_and_issues_a_token_as_the_open_source_server() {
    let server = ClearmlServer::start().expect("server");
    let http = reqwest::blocking::Client::new();
    let login = |user: &str, pass: &str| {
        let r = http
            .post(format!("{}/v2.31/auth.login", server.url()))
            .basic_auth(user, Some(pass))
            .send()
            .expect("send");
        let status = r.status().as_u16();
        let cookie = r
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        (status, cookie, r.json::<Value>().expect("json"))
    };
    let creds = server.credentials();
    let (status, _, body) = login(&creds.access_key, "wrong");
    assert_eq!(status, 401);
    assert_eq!(body["meta"]["result_subcode"], 22);
    let (status, _, body) = login("nobody", &creds.secret_key);
    assert_eq!(
        (status, body["meta"]["result_subcode"].as_u64()),
        (401, Some(22))
    );

    let r = http
        .post(format!("{}/v2.31/auth.login", server.url()))
        .header("Authorization", "Basic %%%")
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().unwrap()["meta"]["result_subcode"], 21);
    let r = http
        .post(format!("{}/v2.31/auth.login", server.url()))
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().unwrap()["meta"]["result_subcode"], 20);

    let (status, cookie, body) = login(&creds.access_key, &creds.secret_key);
    assert_eq!(status, 200, "{body}");
    let token = body["data"]["token"].as_str().expect("token");
    let c = claims(token);
    assert_eq!(
        c["feature_set"], "basic",
        "what the open-source server says"
    );
    assert_eq!(c["api_version"], "2.34");
    assert_eq!(c["server_version"], "2.3.0");
    assert_eq!(c["auth_type"], "Bearer");
    assert_eq!(c["identity"]["company"], server.admin().identity().company);
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        30 * 24 * 3600
    );
    let cookie = cookie.expect("login sets the browser cookie");
    assert!(
        cookie.starts_with(&format!("clearml_token_basic={token}")),
        "{cookie}"
    );

    // Bearer, cookie-only, and Basic on an ordinary call all authenticate.
    let get = |req: reqwest::blocking::RequestBuilder| {
        let r = req.json(&json!({})).send().expect("send");
        (r.status().as_u16(), r.json::<Value>().expect("json"))
    };
    let url = format!("{}/v2.31/users.get_current_user", server.url());
    let (s, body) = get(http.post(&url).bearer_auth(token));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"]["user"]["id"], c["identity"]["user"]);
    let (s, _) = get(http
        .post(&url)
        .header("Cookie", format!("clearml_token_basic={token}")));
    assert_eq!(s, 200, "cookie alone authenticates");
    let (s, _) = get(http
        .post(&url)
        .basic_auth(&creds.access_key, Some(&creds.secret_key)));
    assert_eq!(s, 200, "Basic works on any call");
    // An explicit header wins over the cookie.
    let (s, body) = get(http
        .post(&url)
        .header("Cookie", format!("clearml_token_basic={token}"))
        .bearer_auth("garbage"));
    assert_eq!(
        (s, body["meta"]["result_subcode"].as_u64()),
        (401, Some(30))
    );
    let (s, body) = get(http.post(&url).header("Authorization", "Digest x"));
    assert_eq!(
        (s, body["meta"]["result_subcode"].as_u64()),
        (401, Some(10))
    );

    // A token of another server (other key) is refused.
    let other = ClearmlServer::start_with(ServerOptions::default().token_secret("another secret"))
        .expect("second server");
    let foreign = other.admin().issue_token(Duration::from_secs(60));
    let (s, body) = get(http.post(&url).bearer_auth(&foreign));
    assert_eq!(
        (s, body["meta"]["result_subcode"].as_u64()),
        (401, Some(30))
    );

    // `feature_set` follows the options: an Enterprise-like server says advanced.
    let enterprise = ClearmlServer::start_with(ServerOptions::default().advanced())
        .expect("enterprise-like server");
    let mut c = ApiClient::new(&enterprise.url());
    let creds = enterprise.credentials();
    let t = c
        .login(&creds.access_key, &creds.secret_key)
        .expect("login");
    assert_eq!(claims(&t)["feature_set"], "advanced");
}

#[test]
fn tokens_expire_and_the_admin_can_expire_them_all() {
    let server = ClearmlServer::start().expect("server");
    let mut client = logged_in(&server);
    assert_eq!(client.call("debug.ping", &json!({})).unwrap().status, 200);

    // A token whose lifetime ran out is refused once its `exp` second has passed.
    client.token = Some(server.admin().issue_token(Duration::ZERO));
    let answer = wait::until(
        "a zero-lifetime token to be refused",
        Duration::from_secs(5),
        || {
            let a = client.call("tasks.get_all", &json!({})).unwrap();
            (a.status == 401).then_some(a)
        },
    );
    assert_eq!(answer.codes(), (401, 30));
    assert!(answer.msg().contains("expired"), "{}", answer.msg());

    let mut client = logged_in(&server);
    server.admin().expire_tokens();
    let a = client.call("tasks.get_all", &json!({})).unwrap();
    assert_eq!(
        a.codes(),
        (401, 30),
        "tokens issued before the expiry are refused"
    );
    // Logging in again at once gives a token that works.
    let creds = server.credentials();
    client
        .login(&creds.access_key, &creds.secret_key)
        .expect("login again");
    assert_eq!(
        client.call("tasks.get_all", &json!({})).unwrap().status,
        200
    );
}

#[test]
fn paths_methods_versions_and_the_envelope() {
    let server = ClearmlServer::start().expect("server");
    let client = logged_in(&server);
    let id = server
        .admin()
        .create_task(TaskSpec::new("t").status("in_progress"));

    // GET with a JSON body, as the SDK sends by default.
    let a = client
        .call_with(Method::GET, "tasks.get_by_id", &json!({"task": id}))
        .unwrap();
    assert_eq!(a.status, 200);
    let meta = &a.json()["meta"];
    assert_eq!(meta["endpoint"]["name"], "tasks.get_by_id");
    assert_eq!(meta["endpoint"]["requested_version"], "2.31");
    assert!(meta["endpoint"]["actual_version"].is_string());
    assert_eq!(meta["result_msg"], "OK");
    assert_eq!(meta["id"], meta["trx"]);
    assert_eq!(a.data()["task"]["id"], id.as_str());

    let http = reqwest::blocking::Client::new();
    let token = client.token.clone().unwrap();
    // Unversioned path, PUT, query-string arguments (used only when the body is empty).
    let r = http
        .put(format!("{}/tasks.get_by_id?task={id}", server.url()))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().unwrap();
    assert_eq!(body["data"]["task"]["id"], id.as_str());
    // A trx header is echoed.
    let r = http
        .post(format!("{}/v2.31/debug.ping", server.url()))
        .header("X-ClearML-Trx", "my-trx")
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["meta"]["trx"], "my-trx");

    let raw = |path: &str, body: &str| {
        let r = http
            .post(format!("{}{path}", server.url()))
            .bearer_auth(&token)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().unwrap();
        assert_eq!(
            v["meta"]["result_code"].as_u64(),
            Some(status as u64),
            "{v}"
        );
        (status, v["meta"]["result_subcode"].as_u64().unwrap(), v)
    };
    let (s, sub, v) = raw("/not-an-endpoint", "{}");
    assert_eq!((s, sub), (400, 0));
    assert!(
        v["meta"]["result_msg"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request path")
    );
    let (s, _, v) = raw("/v2.31/tasks.no_such_action", "{}");
    assert_eq!(s, 404);
    assert!(
        v["meta"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("tasks.no_such_action")
    );
    let (s, _, _) = raw("/v2.0/tasks.edit", r#"{"task": "x"}"#);
    assert_eq!(
        s, 404,
        "a version below the endpoint's first one is not served"
    );
    let (s, _, v) = raw("/v9.99/debug.ping", "{}");
    assert_eq!(
        s, 200,
        "a version above the max is served by the newest endpoint"
    );
    assert_eq!(v["meta"]["endpoint"]["requested_version"], "9.99");
    let (s, _, v) = raw("/v2.31/tasks.get_by_id", "{not json");
    assert_eq!(s, 400);
    assert!(
        v["meta"]["result_msg"].as_str().unwrap().contains("JSON"),
        "{v}"
    );
    let (s, sub, v) = raw("/v2.31/tasks.get_by_id", "{}");
    assert_eq!((s, sub), (400, 11));
    assert_eq!(v["meta"]["error_data"]["missing"], json!(["task"]));
    let (s, sub, _) = raw("/v2.31/tasks.get_by_id", r#"{"task": "0123"}"#);
    assert_eq!((s, sub), (400, 101));
    let (s, sub, _) = raw("/v2.31/tasks.get_all", r#"{"status": ["running"]}"#);
    assert_eq!((s, sub), (400, 12), "unknown status value");
    let (s, sub, _) = raw("/v2.31/tasks.get_all", r#"{"status": "in_progress"}"#);
    assert_eq!((s, sub), (400, 12), "a list filter must be a list");
}

#[test]
fn get_all_filters_projects_pages_and_caps_like_the_real_server() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let client = logged_in(&server);
    let gpu = admin.create_queue("gpu");
    let cpu = admin.create_queue("cpu");
    let mut wanted = Vec::new();
    for i in 0..1200 {
        let queue = if i % 2 == 0 { &gpu } else { &cpu };
        let mut tags = vec!["external_service"];
        if i % 3 == 0 {
            tags.push("hidden");
        }
        let status = if i % 5 == 0 { "stopped" } else { "in_progress" };
        let id = admin.create_task(
            TaskSpec::new(&format!("task {i}"))
                .status(status)
                .queue(queue)
                .system_tags(&tags)
                .runtime(json!({"_SERVICE": "EXTERNAL_TCP", "_PORT": 8000 + i})),
        );
        if i % 2 == 0 && status == "in_progress" {
            wanted.push(id);
        }
    }
    admin.create_task(TaskSpec::new("plain").status("in_progress").queue(&gpu));

    // The router's query: tag, status, queue, hidden included, projection, paged by id.
    let mut got = Vec::new();
    for page in 0.. {
        let data = client
            .ok(
                "tasks.get_all",
                &json!({
                    "system_tags": ["external_service"], "status": ["in_progress"],
                    "execution.queue": [gpu], "search_hidden": true,
                    "only_fields": ["id", "name", "runtime", "execution.queue", "system_tags"],
                    "order_by": ["id"], "page": page, "page_size": 200,
                }),
            )
            .unwrap();
        let tasks = data["tasks"].as_array().unwrap().clone();
        for t in &tasks {
            let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
            assert_eq!(
                keys.len(),
                5,
                "only the projected fields come back: {keys:?}"
            );
            assert_eq!(t["execution"], json!({"queue": gpu}));
        }
        let n = tasks.len();
        got.extend(
            tasks
                .into_iter()
                .map(|t| t["id"].as_str().unwrap().to_string()),
        );
        if n < 200 {
            break;
        }
    }
    let mut sorted = wanted.clone();
    sorted.sort();
    assert_eq!(
        got, sorted,
        "paging by id returns every wanted task once, in order"
    );

    // Hidden tasks are left out without search_hidden.
    let visible = client
        .ok("tasks.get_all", &json!({"system_tags": ["external_service"], "execution.queue": [gpu],
                                     "status": ["in_progress"], "page_size": 500, "only_fields": ["id"]}))
        .unwrap();
    assert_eq!(visible["tasks"].as_array().unwrap().len(), 320);

    // No page_size: silently 500. A bigger page_size: clamped to 500.
    let all = client
        .ok("tasks.get_all", &json!({"search_hidden": true}))
        .unwrap();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 500);
    let all = client
        .ok(
            "tasks.get_all",
            &json!({"search_hidden": true, "page": 0, "page_size": 5000}),
        )
        .unwrap();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 500);

    // Exclusion and negation.
    let not_tagged = client
        .ok(
            "tasks.get_all",
            &json!({"system_tags": ["-external_service"], "only_fields": ["name"]}),
        )
        .unwrap();
    assert_eq!(
        not_tagged["tasks"],
        json!([{"id": admin.task_ids().last().unwrap(), "name": "plain"}])
    );
    let not_running = client
        .ok(
            "tasks.get_all",
            &json!({"status": ["__$not", "in_progress"], "search_hidden": true,
                                     "page_size": 500, "only_fields": ["status"]}),
        )
        .unwrap();
    assert_eq!(not_running["tasks"].as_array().unwrap().len(), 240);

    // Equality on a runtime key, and `id` finds hidden tasks without search_hidden.
    let hidden_id = admin.task_ids()[0].clone();
    let by_port = client
        .ok(
            "tasks.get_all",
            &json!({"runtime._PORT": 8000, "id": [hidden_id]}),
        )
        .unwrap();
    assert_eq!(by_port["tasks"].as_array().unwrap().len(), 1);

    // A scroll walks everything exactly once.
    let mut seen = std::collections::HashSet::new();
    let mut scroll = String::new();
    loop {
        let data = client
            .ok(
                "tasks.get_all",
                &json!({"scroll_id": scroll, "size": 300, "search_hidden": true,
                                         "only_fields": ["id"]}),
            )
            .unwrap();
        let tasks = data["tasks"].as_array().unwrap();
        for t in tasks {
            assert!(
                seen.insert(t["id"].as_str().unwrap().to_string()),
                "a task came twice"
            );
        }
        scroll = data["scroll_id"].as_str().expect("scroll_id").to_string();
        if tasks.len() < 300 {
            break;
        }
    }
    assert_eq!(seen.len(), 1201);

    // Queues by name: a regex "contains" match, so routers anchor it.
    let q = client.ok("queues.get_all", &json!({"name": "pu"})).unwrap();
    assert_eq!(q["queues"].as_array().unwrap().len(), 2);
    let q = client
        .ok(
            "queues.get_all",
            &json!({"name": "^gpu$", "only_fields": ["id", "name"]}),
        )
        .unwrap();
    assert_eq!(q["queues"], json!([{"id": gpu, "name": "gpu"}]));
}

#[test]
fn edit_replaces_runtime_whole_and_needs_force_on_a_running_task() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let client = logged_in(&server);
    let id = admin.create_task(
        TaskSpec::new("app")
            .status("in_progress")
            .system_tags(&["external_service"])
            .runtime(json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.0.0.5", "_PORT": 7860})),
    );

    let a = client
        .call(
            "tasks.edit",
            &json!({"task": id, "runtime": {"endpoint": "x"}}),
        )
        .unwrap();
    assert_eq!(a.codes(), (400, 110));
    assert_eq!(a.json()["meta"]["error_data"]["status"], "in_progress");

    let new_runtime = json!({"_SERVICE": "EXTERNAL", "_ADDRESS": "10.0.0.5", "_PORT": 7860,
                             "endpoint": "http://r/service/x/"});
    let data = client
        .ok(
            "tasks.edit",
            &json!({"task": id, "force": true, "runtime": new_runtime}),
        )
        .unwrap();
    assert_eq!(data["updated"], 1);
    assert_eq!(data["fields"]["runtime"], new_runtime);
    assert_eq!(admin.runtime(&id), *new_runtime.as_object().unwrap());

    // Replaced, not merged: a key left out is gone.
    client
        .ok(
            "tasks.edit",
            &json!({"task": id, "force": true, "runtime": {"endpoint": "y"}}),
        )
        .unwrap();
    assert_eq!(
        admin.runtime(&id),
        *json!({"endpoint": "y"}).as_object().unwrap()
    );
    // Any values (a `SafeDictField`), but no empty or `$` keys.
    client
        .ok(
            "tasks.edit",
            &json!({"task": id, "force": true, "runtime": {"a": {"nested": 1}, "endpoint": "y"}}),
        )
        .expect("nested values are stored");
    assert_eq!(admin.runtime(&id)["a"], json!({"nested": 1}));
    for key in ["", "$set"] {
        let a = client
            .call(
                "tasks.edit",
                &json!({"task": id, "force": true, "runtime": {key: "v"}}),
            )
            .unwrap();
        assert_eq!(a.codes(), (400, 12), "{key:?}");
    }
    // Keys tasks.edit does not write are ignored (the SDK sends `"method": "get"` in every body).
    client
        .ok(
            "tasks.edit",
            &json!({"task": id, "force": true, "status": "stopped", "method": "get"}),
        )
        .unwrap();
    assert_eq!(admin.task(&id).unwrap()["status"], "in_progress");
    let a = client
        .call(
            "tasks.edit",
            &json!({"task": "ffff", "force": true, "runtime": {}}),
        )
        .unwrap();
    assert_eq!(a.codes(), (400, 101));

    // system_tags are replaced whole too.
    client
        .ok(
            "tasks.edit",
            &json!({"task": id, "force": true, "system_tags": ["external_service", "x"]}),
        )
        .unwrap();
    assert_eq!(
        admin.task(&id).unwrap()["system_tags"],
        json!(["external_service", "x"])
    );

    // A created task can be edited without force.
    let created = admin.create_task(TaskSpec::new("draft"));
    client
        .ok("tasks.edit", &json!({"task": created, "runtime": {"k": 1}}))
        .unwrap();

    // reset: runtime and queue cleared, system tags kept, back to created.
    let q = admin.create_queue("q");
    admin.update_task(&id, json!({"execution.queue": q}));
    client
        .ok("tasks.reset", &json!({"task": id, "force": true}))
        .unwrap();
    let t = admin.task(&id).unwrap();
    assert_eq!(t["runtime"], json!({}));
    assert_eq!(t["execution"]["queue"], Value::Null);
    assert_eq!(t["status"], "created");
    assert_eq!(t["system_tags"], json!(["external_service", "x"]));

    // stop: a running task no agent runs is stopped at once; a stopped one cannot be stopped.
    let running = admin.create_task(TaskSpec::new("r").status("in_progress"));
    client.ok("tasks.stop", &json!({"task": running})).unwrap();
    assert_eq!(admin.task(&running).unwrap()["status"], "stopped");
    let a = client
        .call("tasks.stop", &json!({"task": running}))
        .unwrap();
    assert_eq!(a.codes(), (400, 110));
    // One an agent runs only gets "stopping" until its agent acts.
    let agent = admin.create_task(
        TaskSpec::new("a")
            .status("in_progress")
            .last_worker("host:0"),
    );
    client.ok("tasks.stop", &json!({"task": agent})).unwrap();
    let t = admin.task(&agent).unwrap();
    assert_eq!(
        (t["status"].as_str(), t["status_message"].as_str()),
        (Some("in_progress"), Some("stopping"))
    );
}

#[test]
fn faults_hit_the_next_calls_then_the_server_recovers() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let client = logged_in(&server);

    admin.fail_next(2, Some("tasks.get_all"));
    let ping = client.call("debug.ping", &json!({})).unwrap();
    assert_eq!(
        ping.status, 200,
        "a fault for another endpoint leaves this one alone"
    );
    for _ in 0..2 {
        let a = client.call("tasks.get_all", &json!({})).unwrap();
        assert_eq!(a.codes(), (500, 0));
    }
    assert_eq!(
        client.call("tasks.get_all", &json!({})).unwrap().status,
        200
    );

    admin.inject(FaultKind::Malformed, 1, None);
    let a = client.call("tasks.get_all", &json!({})).unwrap();
    assert_eq!(a.status, 200);
    assert!(
        a.body.is_err(),
        "a malformed answer is not JSON: {:?}",
        a.body
    );

    admin.inject(
        FaultKind::Error {
            code: 503,
            subcode: 0,
            msg: "maintenance".into(),
        },
        1,
        None,
    );
    assert_eq!(
        client.call("tasks.get_all", &json!({})).unwrap().codes(),
        (503, 0)
    );

    admin.inject(FaultKind::Delay(Duration::from_millis(300)), 1, None);
    let start = Instant::now();
    assert_eq!(
        client.call("tasks.get_all", &json!({})).unwrap().status,
        200
    );
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "the delayed call waited"
    );

    admin.fail_next(5, None);
    admin.clear_faults();
    assert_eq!(
        client.call("tasks.get_all", &json!({})).unwrap().status,
        200
    );

    // Every call was counted, faulty or not (1 login, 1 ping, 7 get_all).
    assert_eq!(admin.calls("tasks.get_all"), 7);
    assert_eq!(admin.calls("debug.ping"), 1);
    assert_eq!(admin.calls("auth.login"), 1);
}

#[test]
fn the_admin_http_api_and_the_binary() {
    let bin = env!("CARGO_BIN_EXE_clearml-test-server");
    let mut child = std::process::Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--access-key",
            "AK",
            "--secret-key",
            "SK",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the binary");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut guard = Kill(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("address");
    let base = format!("http://{}", line.trim());

    let http = reqwest::blocking::Client::new();
    let post = |path: &str, body: Value| -> Value {
        let r = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().unwrap()
    };
    let q = post("/_admin/queues", json!({"name": "gpu"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = post(
        "/_admin/tasks",
        json!({"name": "app", "status": "in_progress", "queue": q,
               "system_tags": ["external_service"], "runtime": {"_PORT": 1}}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t: Value = http
        .get(format!("{base}/_admin/tasks/{id}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(t["execution"]["queue"], q.as_str());
    assert_eq!(t["runtime"]["_PORT"], 1);

    let mut client = ApiClient::new(&base);
    client
        .login("AK", "SK")
        .expect("the binary takes the keys it was given");
    let found = client
        .ok(
            "tasks.get_all",
            &json!({"system_tags": ["external_service"], "only_fields": ["id"]}),
        )
        .unwrap();
    assert_eq!(found["tasks"], json!([{"id": id}]));

    post(
        &format!("/_admin/tasks/{id}/status"),
        json!({"status": "stopped"}),
    );
    let r = http
        .patch(format!("{base}/_admin/tasks/{id}"))
        .json(&json!({"runtime._PORT": 2}))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let t = client.ok("tasks.get_by_id", &json!({"task": id})).unwrap();
    assert_eq!(
        (
            t["task"]["status"].as_str(),
            t["task"]["runtime"]["_PORT"].as_i64()
        ),
        (Some("stopped"), Some(2))
    );

    post(
        "/_admin/faults",
        json!({"kind": "error", "count": 1, "code": 502}),
    );
    assert_eq!(client.call("debug.ping", &json!({})).unwrap().status, 502);
    post("/_admin/tokens/expire", json!({}));
    assert_eq!(
        client.call("tasks.get_all", &json!({})).unwrap().codes(),
        (401, 30)
    );
    let calls: Value = http
        .get(format!("{base}/_admin/calls"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(calls["tasks.get_all"], 2);
    let r = http
        .delete(format!("{base}/_admin/tasks/{id}"))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let r = http
        .get(format!("{base}/_admin/tasks/{id}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // SIGTERM ends it cleanly.
    let pid = nix::unistd::Pid::from_raw(guard.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait::until("the server to exit", Duration::from_secs(10), || {
        guard.0.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}");
}

#[test]
fn an_edit_hook_plays_a_concurrent_writer() {
    let server = ClearmlServer::start().expect("server");
    let admin = server.admin();
    let client = logged_in(&server);
    let id = admin.create_task(TaskSpec::new("racy").status("in_progress"));
    // The task rewrites its request right after the router's write: the router's key is lost.
    admin.after_edit(|_, runtime| {
        runtime.remove("endpoint");
        runtime.insert("_PORT".into(), json!(9999));
    });
    let data = client
        .ok(
            "tasks.edit",
            &json!({"task": id, "force": true, "runtime": {"endpoint": "e", "_PORT": 1}}),
        )
        .unwrap();
    assert_eq!(
        data["fields"]["runtime"]["endpoint"], "e",
        "the answer shows what was sent"
    );
    let now = client.ok("tasks.get_by_id", &json!({"task": id})).unwrap();
    assert_eq!(
        now["task"]["runtime"],
        json!({"_PORT": 9999}),
        "a re-read shows the loss"
    );
    admin.clear_after_edit();
    client
        .ok(
            "tasks.edit",
            &json!({"task": id, "force": true, "runtime": {"endpoint": "e"}}),
        )
        .unwrap();
    assert_eq!(admin.runtime(&id)["endpoint"], "e");
}

#[test]
fn large_answers_are_gzipped_for_clients_that_accept_it() {
    let server = ClearmlServer::start().expect("server");
    let client = logged_in(&server);
    for i in 0..20 {
        server
            .admin()
            .create_task(TaskSpec::new(&format!("task {i}")));
    }
    let raw = reqwest::blocking::Client::builder()
        .no_gzip()
        .build()
        .unwrap();
    let send = |accept: Option<&str>| {
        let mut req = raw
            .post(format!("{}/v2.31/tasks.get_all", server.url()))
            .bearer_auth(client.token.as_deref().unwrap())
            .json(&json!({}));
        if let Some(a) = accept {
            req = req.header("Accept-Encoding", a);
        }
        req.send().unwrap()
    };
    let r = send(Some("gzip, deflate"));
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&r.bytes().unwrap()[..]),
        &mut text,
    )
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"]["tasks"].as_array().unwrap().len(), 20);
    let r = send(None);
    assert!(r.headers().get("content-encoding").is_none());
    // The usual client (reqwest with gzip, like the daemon's) reads it transparently.
    let all = client.ok("tasks.get_all", &json!({})).unwrap();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 20);
}
