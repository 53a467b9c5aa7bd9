//! How a test server is started: address, credentials, the token secret and lifetime, the
//! edition (`feature_set`), the release it poses as, the cookie name, and HTTPS.

use std::net::SocketAddr;
use std::time::Duration;

/// The open-source server's default `secure.auth.token_secret` (clearml/clearml-server
/// v2.3.0 `apiserver/config/default/secure.conf:10`): what a docker-compose install signs with
/// unless the operator set `CLEARML__secure__auth__token_secret`. It is valid base64url, so a
/// router that base64url-decodes it gets another key without noticing.
pub const DEFAULT_TOKEN_SECRET: &str = "Rq8FW84sSqVgq7WvBB_4EzNl9y8z8IGiDXX3C345_a5AZfcwZcwCIA";

/// The open-source Helm chart's default token secret (clearml/clearml-helm-charts
/// `charts/clearml/values.yaml:42` at 747c018, chart 7.14.4), passed to the API server as
/// `CLEARML__secure__auth__token_secret` (`templates/apiserver-deployment.yaml:136-140`).
pub const HELM_DEFAULT_TOKEN_SECRET: &str = "ymLh1ok5k5xNUQfS944Xdx9xjf0wueokqKM2dMZfHuH9ayItG2";

/// The browser cookie of a docker-compose install (`apiserver.auth.session_auth_cookie_name`,
/// clearml-server v2.3.0 `apiserver/config/default/apiserver.conf:72`).
pub const COMPOSE_COOKIE: &str = "clearml_token_basic";

/// The open-source Helm chart's cookie (`clearml.cookieName`, clearml-helm-charts
/// `charts/clearml/values.yaml:24`), set through `CLEARML__APISERVER__AUTH__SESSION_AUTH_COOKIE_NAME`.
pub const HELM_COOKIE: &str = "clearml-token-k8s";

/// What the open-source server puts in every token's `feature_set` (clearml-server v2.3.0
/// `apiserver/bll/auth/__init__.py:64`): the SDK's endpoint calls refuse it.
pub const FEATURE_SET_BASIC: &str = "basic";

/// What an Enterprise server says; `Task.request_external_endpoint` and friends require it
/// (clearml 2.1.7 `clearml/task.py:1014,1126,1245`, `Session.verify_feature_set("advanced")`).
pub const FEATURE_SET_ADVANCED: &str = "advanced";

/// A server release the test server poses as: its version string and the highest API version
/// it serves (`ServiceRepo._max_version`, `apiserver/service_repo/service_repo.py:42` at each
/// tag). Endpoints added after `api` answer as unknown (404/0), as on that release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerRelease {
    pub version: &'static str,
    pub api: (u32, u32),
}

impl ServerRelease {
    /// 2.3.0, API 2.34 (2025-11-04): the first with `tasks.edit_runtime`.
    pub const V2_3: ServerRelease = ServerRelease {
        version: "2.3.0",
        api: (2, 34),
    };
    /// 2.2.0, API 2.33: the last without `tasks.edit_runtime`.
    pub const V2_2: ServerRelease = ServerRelease {
        version: "2.2.0",
        api: (2, 33),
    };
    /// 2.0.0, API 2.31 (what the test server posed as before it knew `tasks.edit_runtime`).
    pub const V2_0: ServerRelease = ServerRelease {
        version: "2.0.0",
        api: (2, 31),
    };

    /// `2.34`, as `server.info` and the token's `api_version` print it.
    pub fn api_string(&self) -> String {
        format!("{}.{}", self.api.0, self.api.1)
    }
}

/// An API key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl Credentials {
    /// A fresh random pair, shaped like the real server's (20-character key, 32+ secret).
    pub fn random() -> Credentials {
        Credentials {
            access_key: format!("AK{:018X}", rand::random::<u64>() >> 8),
            secret_key: format!("{:032x}", rand::random::<u128>()),
        }
    }
}

/// How to start a server. `Default`: loopback, ephemeral port, one random key pair, what an
/// open-source 2.3.0 server does out of the box (feature set `basic`, the default token
/// secret, 30-day tokens, the compose cookie), plain HTTP. Builders switch one thing each.
pub struct ServerOptions {
    /// Where to listen; ignored when `listener` is set.
    pub listen: SocketAddr,
    /// An already bound listener, e.g. one created inside a test's network namespace.
    pub listener: Option<std::net::TcpListener>,
    pub credentials: Credentials,
    /// The `feature_set` claim of issued tokens: [`FEATURE_SET_BASIC`] (open source) or
    /// [`FEATURE_SET_ADVANCED`] (Enterprise).
    pub feature_set: String,
    pub token_lifetime: Duration,
    /// The bytes of `secure.auth.token_secret`: PyJWT takes the string's UTF-8 bytes as the
    /// HMAC key (`apiserver/service_repo/auth/payload/token.py:16,83`).
    pub token_secret: Vec<u8>,
    pub release: ServerRelease,
    /// The browser cookie `auth.login` sets and calls are authorized with.
    pub cookie_name: String,
    /// Serve HTTPS with a certificate of a CA made for this server; extra names (IPs or DNS
    /// names) go into its subjectAltName besides `localhost`, `127.0.0.1` and the bound address.
    pub https: Option<Vec<String>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: None,
            credentials: Credentials::random(),
            feature_set: FEATURE_SET_BASIC.into(),
            // `apiserver.auth.default_expiration_sec` (apiserver.conf:69).
            token_lifetime: Duration::from_secs(30 * 24 * 3600),
            token_secret: DEFAULT_TOKEN_SECRET.as_bytes().to_vec(),
            release: ServerRelease::V2_3,
            cookie_name: COMPOSE_COOKIE.into(),
            https: None,
        }
    }
}

impl ServerOptions {
    /// Enterprise behaviour: tokens say `feature_set: advanced`, so the SDK's
    /// `request_external_endpoint` / `wait_for_external_endpoint` / `list_external_endpoints`
    /// work.
    pub fn advanced(mut self) -> Self {
        self.feature_set = FEATURE_SET_ADVANCED.into();
        self
    }

    /// Sign tokens with this `secure.auth.token_secret`.
    pub fn token_secret(mut self, secret: &str) -> Self {
        self.token_secret = secret.as_bytes().to_vec();
        self
    }

    /// Pose as another release (e.g. [`ServerRelease::V2_2`], without `tasks.edit_runtime`).
    pub fn release(mut self, release: ServerRelease) -> Self {
        self.release = release;
        self
    }

    /// Use another browser cookie name (e.g. [`HELM_COOKIE`]).
    pub fn cookie_name(mut self, name: &str) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// Serve HTTPS; `names` are added to the certificate (see [`ServerOptions::https`]).
    pub fn https(mut self, names: &[&str]) -> Self {
        self.https = Some(names.iter().map(|n| n.to_string()).collect());
        self
    }

    /// Listen on an already bound listener.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }
}
