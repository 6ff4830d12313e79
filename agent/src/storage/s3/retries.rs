//! Counting the SDK's retried attempts for the agent's metrics.

/// Counts the SDK's retried attempts for the agent's
/// `cairn_storage_retries_total` (throttling, 5xx, timeouts, dropped
/// connections).
#[derive(Debug)]
pub(super) struct CountRetries;

impl aws_sdk_s3::config::Intercept for CountRetries {
    fn name(&self) -> &'static str {
        "CountRetries"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let attempts = cfg
            .load::<aws_smithy_runtime_api::client::retries::RequestAttempts>()
            .map_or(1, |a| a.attempts());
        if attempts > 1 {
            crate::telemetry::storage_retried();
        }
        Ok(())
    }
}
