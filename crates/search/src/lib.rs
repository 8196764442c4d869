//! Multi-objective search over sub-network configurations (planned, see the search issue):
//! NSGA-II, R-NSGA-II, hill climbing, random search and heuristics, an evaluation cache,
//! Pareto fronts and hypervolume. Pure Rust, no burn dependency.
