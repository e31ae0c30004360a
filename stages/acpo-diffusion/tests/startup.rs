//! The start-up tuning, in its own test process (it may set an environment variable, which
//! no other test here reads or writes).

#[test]
fn candles_pool_is_left_empty_unless_the_user_sized_it() {
    let var = acpo_diffusion::startup::CANDLE_THREADS_VAR;
    let before = std::env::var_os(var);
    acpo_diffusion::startup::tune_cpu_process();
    let after = std::env::var_os(var);
    match before {
        Some(set) => assert_eq!(after, Some(set), "a user's setting is kept"),
        None => assert_eq!(after.as_deref(), Some("1".as_ref())),
    }
}
