//! How a stage command reads its parameters.
//!
//! Contract with the engine: before running a stage's `cmd`, `acpo repro`
//! writes the values of exactly the params the stage declares into a JSON
//! object `{ "<dotted.key>": <value>, ... }` and points the environment
//! variable `ACPO_PARAMS` at that file. A stage reads only those keys, so
//! its cache key covers everything it depends on.
