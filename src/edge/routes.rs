//! Which endpoint group each call belongs to, for gRPC methods (by the paths build.rs generates
//! from `proto/`) and REST paths alike. The groups are Triton's restricted-protocol groups: the
//! edge decides by group what a call passes through (today the concurrency limit; API keys and
//! metrics next), never by typed-in method names.

use http::Method;

use crate::proto::methods::{grpc_inference_service as kserve, prediction_service as v1};

/// A group of endpoints that share a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// Liveness and readiness, for probes: never limited.
    Health,
    /// What the server and its models are: metadata, configuration, listings, reflection.
    Metadata,
    /// Running models: the only group behind the concurrency limit.
    Inference,
    /// Counters.
    Statistics,
    /// The model repository: its index, loading and unloading.
    ModelRepository,
    /// The Prometheus page.
    Metrics,
    /// Anything else, including paths that do not exist (answered by their protocol).
    Other,
}

impl Group {
    /// Every group, in the order of [`Group::index`].
    pub const ALL: [Group; 7] = [
        Group::Health,
        Group::Metadata,
        Group::Inference,
        Group::Statistics,
        Group::ModelRepository,
        Group::Metrics,
        Group::Other,
    ];

    /// Its place in [`Group::ALL`].
    pub fn index(self) -> usize {
        match self {
            Group::Health => 0,
            Group::Metadata => 1,
            Group::Inference => 2,
            Group::Statistics => 3,
            Group::ModelRepository => 4,
            Group::Metrics => 5,
            Group::Other => 6,
        }
    }

    /// Its name, as metrics label it (and as `--api-keys` will name it).
    pub fn label(self) -> &'static str {
        match self {
            Group::Health => "health",
            Group::Metadata => "metadata",
            Group::Inference => "inference",
            Group::Statistics => "statistics",
            Group::ModelRepository => "model-repository",
            Group::Metrics => "metrics",
            Group::Other => "other",
        }
    }
}

/// The gRPC methods of predictd's services by group. Health and reflection are services of
/// their own, matched by prefix in [`group`].
const GRPC: &[(&str, Group)] = &[
    (v1::PREDICT, Group::Inference),
    (v1::PREDICT_STREAM, Group::Inference),
    (v1::LIST_MODELS, Group::Metadata),
    (v1::GET_MODEL_METADATA, Group::Metadata),
    (kserve::SERVER_LIVE, Group::Health),
    (kserve::SERVER_READY, Group::Health),
    (kserve::MODEL_READY, Group::Health),
    (kserve::SERVER_METADATA, Group::Metadata),
    (kserve::MODEL_METADATA, Group::Metadata),
    (kserve::MODEL_INFER, Group::Inference),
    (kserve::MODEL_STREAM_INFER, Group::Inference),
    (kserve::MODEL_CONFIG, Group::Metadata),
    (kserve::MODEL_STATISTICS, Group::Statistics),
    (kserve::REPOSITORY_INDEX, Group::ModelRepository),
    (kserve::REPOSITORY_MODEL_LOAD, Group::ModelRepository),
    (kserve::REPOSITORY_MODEL_UNLOAD, Group::ModelRepository),
];

/// Whether `path` is a bidirectional streaming method (one call, many messages).
pub fn is_stream(path: &str) -> bool {
    path == v1::PREDICT_STREAM || path == kserve::MODEL_STREAM_INFER
}

/// The group of `request`: as the outermost layer noted it in the request's extensions, so
/// that each call is looked up once, or looked up now.
pub fn group_of<B>(request: &http::Request<B>) -> Group {
    request
        .extensions()
        .get::<Group>()
        .copied()
        .unwrap_or_else(|| group(request.method(), request.uri().path()))
}

/// The group of a call to `path` with `method`, on either transport.
pub fn group(method: &Method, path: &str) -> Group {
    if let Some(&(_, group)) = GRPC.iter().find(|(p, _)| *p == path) {
        return group;
    }
    if path.starts_with("/grpc.health.") {
        return Group::Health;
    }
    if path.starts_with("/grpc.reflection.") {
        return Group::Metadata;
    }
    rest_group(method, path)
}

/// The group of a KServe v2 REST path.
fn rest_group(method: &Method, path: &str) -> Group {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        ["metrics"] if method == Method::GET => Group::Metrics,
        ["v2"] => Group::Metadata,
        ["v2", "health", "live" | "ready"] => Group::Health,
        ["v2", "models", "stats"] => Group::Statistics,
        ["v2", "repository", ..] => Group::ModelRepository,
        ["v2", "models", _, rest @ ..] => match rest {
            ["infer"] | ["versions", _, "infer"] if method == Method::POST => Group::Inference,
            ["ready"] | ["versions", _, "ready"] => Group::Health,
            ["stats"] | ["versions", _, "stats"] => Group::Statistics,
            [] | ["versions", _] | ["config"] | ["versions", _, "config"] => Group::Metadata,
            _ => Group::Other,
        },
        _ => Group::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_methods_fall_in_their_groups() {
        assert_eq!(v1::PREDICT, "/predictd.v1.PredictionService/Predict");
        assert_eq!(
            kserve::MODEL_INFER,
            "/inference.GRPCInferenceService/ModelInfer"
        );
        assert_eq!(group(&Method::POST, v1::PREDICT), Group::Inference);
        assert_eq!(
            group(&Method::POST, kserve::MODEL_STREAM_INFER),
            Group::Inference
        );
        assert_eq!(group(&Method::POST, v1::LIST_MODELS), Group::Metadata);
        assert_eq!(group(&Method::POST, kserve::SERVER_READY), Group::Health);
        assert_eq!(
            group(&Method::POST, "/grpc.health.v1.Health/Check"),
            Group::Health
        );
        assert_eq!(
            group(
                &Method::POST,
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
            ),
            Group::Metadata
        );
        assert_eq!(
            group(&Method::POST, "/predictd.v1.PredictionService/Nope"),
            Group::Other
        );
    }

    #[test]
    fn rest_paths_fall_in_their_groups() {
        let post = |p| group(&Method::POST, p);
        let get = |p| group(&Method::GET, p);
        assert_eq!(post("/v2/models/m/infer"), Group::Inference);
        assert_eq!(post("/v2/models/m/versions/2/infer"), Group::Inference);
        assert_eq!(
            get("/v2/models/m/infer"),
            Group::Other,
            "only POST runs a model"
        );
        assert_eq!(get("/v2/health/ready"), Group::Health);
        assert_eq!(get("/v2/models/m/versions/1/ready"), Group::Health);
        assert_eq!(get("/v2"), Group::Metadata);
        assert_eq!(get("/v2/models/m"), Group::Metadata);
        assert_eq!(get("/v2/models/m/versions/1/config"), Group::Metadata);
        assert_eq!(get("/v2/models/stats"), Group::Statistics);
        assert_eq!(get("/v2/models/m/stats"), Group::Statistics);
        assert_eq!(post("/v2/repository/index"), Group::ModelRepository);
        assert_eq!(get("/metrics"), Group::Metrics);
        assert_eq!(get("/v2/repository/models/m/load"), Group::ModelRepository);
    }
}
