//! Mirrors every measurement into the `metrics` crate facade (feature `metrics-facade`).
//!
//! The in-process registry needs no exporter; projects that already run one (Prometheus,
//! StatsD, …) enable this feature and get the same series, under the same names, through
//! whatever recorder they installed.

use tonic::Code;

use super::registry::{MethodStats, Names};
use crate::grpc::code_name;

pub(crate) fn started(names: Names, stats: &MethodStats) {
    let labels = [
        ("grpc_type", stats.grpc_type.as_str().to_owned()),
        ("grpc_service", stats.service.clone()),
        ("grpc_method", stats.method.clone()),
    ];
    metrics::counter!(names.started, &labels).increment(1);
    metrics::gauge!(names.in_flight, &labels).increment(1.0);
}

pub(crate) fn handled(names: Names, stats: &MethodStats, code: Code, secs: f64) {
    let labels = [
        ("grpc_type", stats.grpc_type.as_str().to_owned()),
        ("grpc_service", stats.service.clone()),
        ("grpc_method", stats.method.clone()),
    ];
    metrics::gauge!(names.in_flight, &labels).decrement(1.0);
    metrics::histogram!(names.handling_seconds, &labels).record(secs);
    let [t, s, m] = labels;
    let with_code = [t, s, m, ("grpc_code", code_name(code).to_owned())];
    metrics::counter!(names.handled, &with_code).increment(1);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::super::registry::{Registry, Side};

    /// Remembers the key of every series registered with it.
    #[derive(Default)]
    struct Keys(Mutex<Vec<String>>);

    impl Keys {
        fn push(&self, key: &Key) {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            self.0
                .lock()
                .unwrap()
                .push(format!("{}{{{}}}", key.name(), labels.join(",")));
        }
    }

    impl Recorder for Keys {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.push(key);
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            self.push(key);
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            self.push(key);
            Histogram::noop()
        }
    }

    /// With the feature on, every measurement also reaches the installed `metrics` recorder.
    #[test]
    fn mirrors_into_the_metrics_facade() {
        let keys = Keys::default();
        let registry = Registry::new(Side::Client, Default::default());
        metrics::with_local_recorder(&keys, || {
            registry
                .start("/kv.v1.KvService/Get")
                .finish(tonic::Code::NotFound);
        });
        let keys = keys.0.into_inner().unwrap();
        let labels = "grpc_type=unary,grpc_service=kv.v1.KvService,grpc_method=Get";
        assert!(
            keys.contains(&format!("grpc_client_started_total{{{labels}}}")),
            "{keys:?}"
        );
        let handled = format!("grpc_client_handled_total{{{labels},grpc_code=NOT_FOUND}}");
        assert!(keys.contains(&handled), "{keys:?}");
        assert!(keys.contains(&format!("grpc_client_handling_seconds{{{labels}}}")));
        assert!(keys.contains(&format!("grpc_client_in_flight{{{labels}}}")));
    }
}
