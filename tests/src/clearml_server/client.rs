//! A minimal blocking API client for tests: logs in with Basic credentials, sends calls with
//! the Bearer token, and hands back the whole envelope so tests can check codes and data.

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One answer: HTTP status and the parsed body (or the raw text if it was not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Result<Value, String>,
}

impl Answer {
    /// `(meta.result_code, meta.result_subcode)`; panics (test helper) if the body is not an
    /// envelope.
    pub fn codes(&self) -> (u64, u64) {
        let body = self.json();
        (
            body["meta"]["result_code"].as_u64().expect("result_code"),
            body["meta"]["result_subcode"]
                .as_u64()
                .expect("result_subcode"),
        )
    }
    pub fn json(&self) -> &Value {
        match &self.body {
            Ok(v) => v,
            Err(text) => panic!("answer is not JSON: {text:?}"),
        }
    }
    pub fn data(&self) -> &Value {
        &self.json()["data"]
    }
    pub fn msg(&self) -> String {
        self.json()["meta"]["result_msg"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub struct ApiClient {
    base: String,
    http: reqwest::blocking::Client,
    pub token: Option<String>,
}

impl ApiClient {
    pub fn new(base: &str) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::blocking::Client::new(),
            token: None,
        }
    }

    /// A client of `server` that trusts its CA when it serves HTTPS.
    pub fn for_server(server: &super::ClearmlServer) -> Result<ApiClient> {
        let mut client = ApiClient::new(&server.url());
        if let Some(ca) = server.ca_pem() {
            let pem = std::fs::read(&ca).with_context(|| format!("read {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).context("the test CA")?;
            client.http = reqwest::blocking::Client::builder()
                .add_root_certificate(cert)
                .build()
                .context("an HTTPS client")?;
        }
        Ok(client)
    }

    /// Logs in and keeps the token; fails unless the server says 200.
    pub fn login(&mut self, access_key: &str, secret_key: &str) -> Result<String> {
        let resp = self
            .http
            .post(format!("{}/v2.31/auth.login", self.base))
            .basic_auth(access_key, Some(secret_key))
            .json(&serde_json::json!({}))
            .send()
            .context("auth.login")?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().context("auth.login body")?;
        if status != 200 {
            bail!("auth.login answered {status}: {body}");
        }
        let token = body["data"]["token"]
            .as_str()
            .context("auth.login: no token")?
            .to_string();
        self.token = Some(token.clone());
        Ok(token)
    }

    /// Sends `data` to `/v2.31/<endpoint>` with the method given and the token, if any.
    pub fn call_with(
        &self,
        method: reqwest::Method,
        endpoint: &str,
        data: &Value,
    ) -> Result<Answer> {
        let mut req = self
            .http
            .request(method, format!("{}/v2.31/{endpoint}", self.base))
            .json(data);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().with_context(|| endpoint.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().with_context(|| format!("{endpoint} body"))?;
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).map_err(|_| text),
        })
    }

    /// POSTs `data` to `/v2.31/<endpoint>`.
    pub fn call(&self, endpoint: &str, data: &Value) -> Result<Answer> {
        self.call_with(reqwest::Method::POST, endpoint, data)
    }

    /// Calls `endpoint` and returns `data`, failing unless the result is 200.
    pub fn ok(&self, endpoint: &str, data: &Value) -> Result<Value> {
        let a = self.call(endpoint, data)?;
        if a.status != 200 {
            bail!("{endpoint} answered {}: {:?}", a.status, a.body);
        }
        Ok(a.data().clone())
    }
}
