//! R-MONITOR: alerts delivered to the webhook an admin set, at least once. The platform keeps
//! each alert until the webhook answered 2xx; a webhook that is down gets them when it is back.
//! Each request carries the platform's signature over its body (`X-Tidegate-Signature`).

use std::sync::Arc;
use std::time::Duration;

use tidegate_runtime::Platform;

/// How often undelivered alerts are looked for.
const EVERY: Duration = Duration::from_secs(5);
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);

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
        // Signed by the platform, so the receiver can tell a real alert from a forged one.
        let (body, signature) = platform.alert_delivery(&alert)?;
        let answer = agent
            .post(&webhook)
            .header("content-type", "application/json")
            .header("x-tidegate-signature", &signature)
            .send(&body[..]);
        match answer {
            Ok(r) if r.status().is_success() => {
                platform.alert_delivered(&alert.id, alert.occurrences)?;
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
