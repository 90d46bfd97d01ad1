//! From exchanges to metrics: each protocol's request metrics (`protocol::Red`, fed per
//! observed end) and the service graph (`graph`, fed with paired ends).

pub mod graph;
