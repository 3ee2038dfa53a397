//! Which service a call goes to on a listener: by its `Service:` prefix, or
//! the listener's only (or default) service.

use std::sync::Arc;

use super::service::ServiceInfo;

/// The services a listener serves, in config order.
#[derive(Debug)]
pub struct Routes {
    pub services: Vec<Arc<ServiceInfo>>,
    /// On a multi-service listener, where names without `Service:` go.
    pub default_service: Option<usize>,
}

/// Where a routed call goes.
pub enum Route<'a> {
    /// The service, and how many bytes of `Service:` prefix to strip.
    Service(&'a Arc<ServiceInfo>, usize),
    Unknown,
}

impl Routes {
    pub fn route(&self, name: &[u8]) -> Route<'_> {
        match name.iter().position(|&b| b == b':') {
            Some(colon) => {
                let prefix = &name[..colon];
                match self.services.iter().find(|s| s.name_bytes == prefix) {
                    Some(s) => Route::Service(s, if s.strip_prefix { colon + 1 } else { 0 }),
                    None => Route::Unknown,
                }
            }
            None => {
                let pick = if self.services.len() == 1 {
                    self.services.first()
                } else {
                    self.default_service
                        .and_then(|d| self.services.iter().find(|s| s.index == d))
                };
                match pick {
                    Some(s) => Route::Service(s, 0),
                    None => Route::Unknown,
                }
            }
        }
    }

    /// The same routes with service `info.index` replaced by `info` (its
    /// settings changed), or `None` if these routes do not use it.
    pub fn with_updated(&self, info: &Arc<ServiceInfo>) -> Option<Routes> {
        if !self.services.iter().any(|s| s.index == info.index) {
            return None;
        }
        let services = self
            .services
            .iter()
            .map(|s| if s.index == info.index { info } else { s })
            .cloned()
            .collect();
        Some(Routes {
            services,
            default_service: self.default_service,
        })
    }
}
