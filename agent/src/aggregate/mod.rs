//! From exchanges to metrics: each protocol's request metrics (`protocol::Red`, fed per
//! observed end), the service graph (`graph`, fed with paired ends) and the requests per
//! service and operation of the last minutes (`operations`, for the web page).

pub mod graph;
pub mod operations;
