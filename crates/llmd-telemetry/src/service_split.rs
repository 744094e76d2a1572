//! One process, several `service.name`s.
//!
//! OpenTelemetry puts `service.name` on the *resource*, which is one per tracer provider, so a
//! process that runs several components (`llmd demo`, the in-process stacks of the tests) would
//! export every span as one service. Components that share a process therefore name themselves
//! on their spans, in the attribute [`crate::names::services::SPAN_ATTR`] (`service.name`), and
//! [`ServiceSplitExporter`] moves that attribute into the resource: each batch is split by it,
//! and each part is exported by an exporter of its own whose resource is the process's with
//! that `service.name`. Spans without the attribute keep the process's own resource.
//!
//! A component that runs alone (one service per process, the production case) does not set the
//! attribute, so `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` decide its name as usual.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::names::services::SPAN_ATTR;

/// Builds one more inner exporter (same endpoint and settings) for another service name.
pub(crate) type MakeExporter<E> = Box<dyn Fn() -> Result<E, String> + Send + Sync>;

/// Splits batches by the spans' `service.name` attribute (see the module docs).
pub(crate) struct ServiceSplitExporter<E> {
    default: E,
    make: MakeExporter<E>,
    resource: Resource,
    others: Mutex<HashMap<String, Arc<E>>>,
}

impl<E> std::fmt::Debug for ServiceSplitExporter<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services: Vec<String> = self
            .others
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("ServiceSplitExporter")
            .field("services", &services)
            .finish_non_exhaustive()
    }
}

impl<E: SpanExporter> ServiceSplitExporter<E> {
    pub(crate) fn new(default: E, make: MakeExporter<E>) -> Self {
        Self {
            default,
            make,
            resource: Resource::builder_empty().build(),
            others: Mutex::new(HashMap::new()),
        }
    }

    /// The exporter of `service`, created on first use.
    fn exporter_for(&self, service: &str) -> Result<Arc<E>, OTelSdkError> {
        let mut others = self
            .others
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("service map poisoned".into()))?;
        if let Some(e) = others.get(service) {
            return Ok(e.clone());
        }
        let mut e = (self.make)().map_err(OTelSdkError::InternalFailure)?;
        e.set_resource(&with_service_name(&self.resource, service));
        let e = Arc::new(e);
        others.insert(service.to_owned(), e.clone());
        Ok(e)
    }
}

/// `resource` with its `service.name` replaced.
fn with_service_name(resource: &Resource, service: &str) -> Resource {
    Resource::builder_empty()
        .with_attributes(
            resource
                .iter()
                .filter(|(k, _)| k.as_str() != "service.name")
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_service_name(service.to_owned())
        .build()
}

/// Takes the span's own service name out of its attributes.
fn take_service(span: &mut SpanData) -> Option<String> {
    let at = span
        .attributes
        .iter()
        .position(|kv| kv.key.as_str() == SPAN_ATTR)?;
    let kv = span.attributes.remove(at);
    match kv.value {
        Value::String(s) => Some(s.as_str().to_owned()),
        other => Some(other.as_str().into_owned()),
    }
}

/// Splits a batch: the spans without a service of their own, and the others by service.
fn split(batch: Vec<SpanData>) -> (Vec<SpanData>, Vec<(String, Vec<SpanData>)>) {
    let mut plain = Vec::new();
    let mut by: Vec<(String, Vec<SpanData>)> = Vec::new();
    for mut span in batch {
        match take_service(&mut span) {
            None => plain.push(span),
            Some(service) => match by.iter_mut().find(|(s, _)| *s == service) {
                Some((_, spans)) => spans.push(span),
                None => by.push((service, vec![span])),
            },
        }
    }
    (plain, by)
}

impl<E: SpanExporter + 'static> SpanExporter for ServiceSplitExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let (plain, by_service) = split(batch);
        let mut result = Ok(());
        if !plain.is_empty() {
            result = self.default.export(plain).await;
        }
        for (service, spans) in by_service {
            let r = match self.exporter_for(&service) {
                Ok(e) => e.export(spans).await,
                Err(e) => Err(e),
            };
            if r.is_err() {
                result = r;
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let others: Vec<Arc<E>> = self
            .others
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut result = self.default.shutdown_with_timeout(timeout);
        for e in others {
            if let Err(error) = e.shutdown_with_timeout(timeout) {
                result = Err(error);
            }
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.default.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
        self.default.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_grouped_by_their_service_and_the_attribute_removed() {
        let span = |name: &'static str, service: Option<&'static str>| {
            let mut s = SpanData {
                span_context: opentelemetry::trace::SpanContext::empty_context(),
                parent_span_id: opentelemetry::trace::SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: opentelemetry::trace::SpanKind::Internal,
                name: name.into(),
                start_time: std::time::SystemTime::UNIX_EPOCH,
                end_time: std::time::SystemTime::UNIX_EPOCH,
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                events: Default::default(),
                links: Default::default(),
                status: opentelemetry::trace::Status::Unset,
                instrumentation_scope: Default::default(),
            };
            if let Some(svc) = service {
                s.attributes.push(KeyValue::new(SPAN_ATTR, svc));
            }
            s.attributes.push(KeyValue::new("n", 1i64));
            s
        };
        let (plain, by) = split(vec![
            span("a", None),
            span("b", Some("epp")),
            span("c", Some("proxy")),
            span("d", Some("epp")),
        ]);
        assert_eq!(plain.len(), 1);
        let names: Vec<(String, Vec<String>)> = by
            .iter()
            .map(|(s, v)| (s.clone(), v.iter().map(|d| d.name.to_string()).collect()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("epp".to_owned(), vec!["b".to_owned(), "d".to_owned()]),
                ("proxy".to_owned(), vec!["c".to_owned()])
            ]
        );
        assert!(
            by.iter()
                .flat_map(|(_, v)| v)
                .all(|s| s.attributes.iter().all(|kv| kv.key.as_str() != SPAN_ATTR))
        );
        let r = with_service_name(
            &Resource::builder_empty()
                .with_service_name("proc")
                .with_attribute(KeyValue::new("k", "v"))
                .build(),
            "epp",
        );
        assert_eq!(
            r.get(&opentelemetry::Key::new("service.name")),
            Some(Value::from("epp"))
        );
        assert_eq!(r.get(&opentelemetry::Key::new("k")), Some(Value::from("v")));
    }
}
