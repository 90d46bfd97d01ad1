pub mod http;
pub mod zipkin;
