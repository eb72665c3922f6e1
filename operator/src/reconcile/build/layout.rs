//! Where the pusher listens and where the Deployment mounts its files: what the config file
//! ([`super::config`]) and the Deployment ([`super::workload`]) must agree on.

/// Port of the pusher's API, WeChat events and health checks.
pub const HTTP_PORT: u16 = 8080;
/// Port of the pusher's `/metrics`.
pub const METRICS_PORT: u16 = 9090;
/// Key of the config file in the ConfigMap (and its name in the mounted folder).
pub const CONFIG_FILE: &str = "pusher.yaml";

/// Where the Deployment mounts things, and the file names the config refers to.
pub mod mounts {
    /// The ConfigMap.
    pub const CONFIG: &str = "/etc/wxpush/config";
    /// The credentials Secret's keys, each in a file named after its credential (`appId`,
    /// `appSecret`, `corpId`, `corpSecret`, `agentId`, `webhookKey`).
    pub const CREDENTIALS: &str = "/etc/wxpush/credentials";
    /// File of the server-URL token.
    pub const EVENT_TOKEN: &str = "eventToken";
    /// File of the EncodingAESKey.
    pub const ENCODING_AES_KEY: &str = "encodingAesKey";
    /// The producers' token.
    pub const AUTH: &str = "/etc/wxpush/auth";
    /// File of the producers' token.
    pub const AUTH_TOKEN: &str = "token";
    /// The Redis URL.
    pub const REDIS: &str = "/etc/wxpush/redis";
    /// File of the Redis URL.
    pub const REDIS_URL: &str = "url";
    /// The callbacks' signing key.
    pub const CALLBACKS: &str = "/etc/wxpush/callbacks";
    /// File of the signing key.
    pub const SIGNING_KEY: &str = "signingKey";
    /// A small writable scratch folder (the root filesystem is read-only).
    pub const TMP: &str = "/tmp";
}
