//! `[metrics]`: where `/metrics` and `/healthz` are served (docs/config.md).

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::doc::documented;

documented! {
    /// The HTTP listener of /metrics (Prometheus) and /healthz.
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct MetricsConfig {
        /// host:port for /metrics and /healthz; "" disables both.
        pub listen: Spanned<String>,
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Spanned::new(0..0, "127.0.0.1:9187".into()),
        }
    }
}

impl MetricsConfig {
    /// The address to listen on; `None` when disabled (`listen = ""`).
    pub fn listen(&self) -> Option<&str> {
        Some(self.listen.get_ref().as_str()).filter(|l| !l.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_listen_disables_the_listener() {
        let c = |t: &str| toml::from_str::<MetricsConfig>(t).unwrap();
        assert_eq!(c("").listen(), Some("127.0.0.1:9187"));
        assert_eq!(c("listen = \"\"").listen(), None);
        assert_eq!(c("listen = \"[::1]:1\"").listen(), Some("[::1]:1"));
    }
}
