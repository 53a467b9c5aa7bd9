//! Which certificates the client trusts: the built-in (webpki) roots and the system store
//! (`/etc/ssl/certs` and friends, `SSL_CERT_FILE` / `SSL_CERT_DIR`, read by
//! `rustls-native-certs`), plus the CA bundles the configuration names (`SSL_VERIFY=<path>`,
//! `CLEARML_API_CA_BUNDLE`): a PEM file, or a directory of them (`c_rehash` style), as the
//! SDK's `verify_certificate` takes through `requests`. A bundle that is missing or holds no
//! certificate stops start-up, naming the variable and the file.

use crate::clearml::error::ApiError;
use crate::config::ClearmlConfig;
use std::path::Path;

/// `builder` trusting what `cfg` says (or nothing checked with `SSL_VERIFY=false`).
pub(super) fn trust(
    builder: reqwest::ClientBuilder,
    cfg: &ClearmlConfig,
) -> Result<reqwest::ClientBuilder, ApiError> {
    if !cfg.ssl_verify {
        return Ok(builder.danger_accept_invalid_certs(true));
    }
    let mut builder = builder.tls_built_in_root_certs(true);
    for (var, path) in cfg.ca_bundles() {
        for cert in ca_bundle(var, path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// The certificates of the bundle `path` (a PEM file or a directory of them) named by `var`.
pub fn ca_bundle(var: &'static str, path: &Path) -> Result<Vec<reqwest::Certificate>, ApiError> {
    let error = |reason: String| ApiError::CaBundle {
        var,
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| error(format!("cannot be read: {e}")))?;
    let files = if meta.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| error(format!("cannot be listed: {e}")))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut certs = Vec::new();
    for file in &files {
        let pem = std::fs::read(file)
            .map_err(|e| error(format!("file {} cannot be read: {e}", file.display())))?;
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(found) => certs.extend(found),
            // A file of a directory that is no PEM (an index, a README) is not a bundle's.
            Err(_) if meta.is_dir() => {}
            Err(e) => return Err(error(format!("is not a PEM certificate bundle: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(error(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_missing_or_empty_bundle_names_the_variable_and_the_file() {
        let e = ca_bundle("SSL_VERIFY", Path::new("/nonexistent/ca.pem")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("SSL_VERIFY") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "not a certificate").expect("write");
        let e = ca_bundle("CLEARML_API_CA_BUNDLE", file.path()).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let dir = tempfile::tempdir().expect("dir");
        let e = ca_bundle("CLEARML_API_CA_BUNDLE", dir.path()).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
}
