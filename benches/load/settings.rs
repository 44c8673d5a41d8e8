//! Settings from the environment (`LOAD_*`).

pub(crate) struct Settings {
    pub(crate) seconds: f64,
    pub(crate) models: Vec<String>,
    pub(crate) concurrency: Vec<usize>,
    pub(crate) tonic_concurrency: Vec<usize>,
    pub(crate) h2load_concurrency: Vec<usize>,
    pub(crate) client_threads: usize,
    pub(crate) repeats: usize,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    env_or(name, default)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub(crate) fn parse<T: std::str::FromStr>(name: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name}: cannot parse '{value}'"))
}

impl Settings {
    pub(crate) fn from_env() -> Settings {
        let numbers = |name: &str, default: &str| -> Vec<usize> {
            env_list(name, default)
                .iter()
                .map(|v| parse::<usize>(name, v).max(1))
                .collect()
        };
        Settings {
            seconds: parse::<f64>("LOAD_SECONDS", &env_or("LOAD_SECONDS", "5")).max(0.1),
            models: env_list("LOAD_MODELS", "digits_mlp,digits_cnn"),
            concurrency: numbers("LOAD_CONCURRENCY", "1,4,16,64"),
            tonic_concurrency: numbers("LOAD_TONIC_CONCURRENCY", "64"),
            h2load_concurrency: numbers("LOAD_H2LOAD_CONCURRENCY", "1,64"),
            client_threads: parse::<usize>(
                "LOAD_CLIENT_THREADS",
                &env_or("LOAD_CLIENT_THREADS", "1"),
            )
            .max(1),
            repeats: parse::<usize>("LOAD_REPEATS", &env_or("LOAD_REPEATS", "1")).max(1),
        }
    }
}
