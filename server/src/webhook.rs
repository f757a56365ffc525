//! R-MONITOR: alerts delivered to the webhook an admin set, at least once. The platform keeps
//! each alert until the webhook answered 2xx; a webhook that is down gets them when it is back.

use std::sync::Arc;
use std::time::Duration;

use tidegate_runtime::{AlertView, Platform};

/// How often undelivered alerts are looked for.
const EVERY: Duration = Duration::from_secs(5);
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The body the webhook receives.
fn body(alert: &AlertView) -> serde_json::Value {
    serde_json::json!({ "format": "tidegate-alert-v1", "alert": alert })
}

/// Delivers what waits, oldest first; stops at the first failure (the rest wait their turn).
fn deliver(platform: &Platform) -> tidegate_runtime::Result<usize> {
    let Some((webhook, alerts)) = platform.undelivered_alerts()? else {
        return Ok(0);
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut sent = 0;
    for alert in alerts {
        match agent.post(&webhook).send_json(body(&alert)) {
            Ok(r) if r.status().is_success() => {
                platform.alert_delivered(&alert.id)?;
                sent += 1;
            }
            Ok(r) => {
                tracing::warn!(
                    status = r.status().as_u16(),
                    "the alert webhook refused an alert"
                );
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the alert webhook could not be reached");
                break;
            }
        }
    }
    Ok(sent)
}

/// Runs for as long as the server does.
pub(crate) async fn deliver_forever(platform: Arc<Platform>) {
    let mut every = tokio::time::interval(EVERY);
    loop {
        every.tick().await;
        let p = Arc::clone(&platform);
        match tokio::task::spawn_blocking(move || deliver(&p)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "alert delivery failed"),
            Err(e) => tracing::error!(error = %e, "alert delivery panicked"),
        }
    }
}
