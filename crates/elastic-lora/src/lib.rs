//! Elastic low-rank adapters (planned, see the Shears and SQFT issues): `ElasticLoraLinear`, a
//! frozen base projection plus LoRA factors whose active rank (and, for LoNAS, whose output
//! width) is chosen at run time; `SearchSpace` and `SubnetConfig`; SparsePEFT and QA-SparsePEFT
//! merging; export to Hugging Face PEFT format. Builds on `secateur_models::Projection`.
