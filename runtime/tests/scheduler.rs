//! Sigma schedules and the Euler step against `tests/fixtures/references/scheduler.safetensors`
//! (diffusers' `FlowMatchEulerDiscreteScheduler`, float32).

mod common;

use common::{fixture_path, max_rel_elem, Fixture};
use qwen_runtime::scheduler::{euler_step, euler_step_array, SchedulerConfig};
use qwen_runtime::SchedulerError;

/// Tolerance on every sigma and timestep: relative to the reference value (f32 ulp ≈ 6e-8).
const SIGMA_REL_TOL: f64 = 1e-6;

fn qwen_config() -> SchedulerConfig {
    SchedulerConfig::from_file(fixture_path(
        "tiny-qwen-image/scheduler/scheduler_config.json",
    ))
    .unwrap()
}

/// (WxH, image_seq_len) of every resolution in the fixture.
fn resolutions(meta: &std::collections::HashMap<String, String>) -> Vec<(String, usize)> {
    ["64x64", "1024x1024", "1664x928"]
        .iter()
        .map(|r| {
            (
                r.to_string(),
                meta[&format!("image_seq_len.{r}")].parse().unwrap(),
            )
        })
        .collect()
}

/// Compares one schedule with `<prefix>.sigmas` / `.timesteps`; returns the max relative error.
fn compare(fx: &Fixture, prefix: &str, sigmas: &[f32], timesteps: &[f32]) -> f64 {
    let (_, want_s) = fx.f32(&format!("{prefix}.sigmas"));
    let (_, want_t) = fx.f32(&format!("{prefix}.timesteps"));
    assert_eq!(sigmas.len(), want_s.len(), "{prefix}");
    assert_eq!(timesteps.len(), want_t.len(), "{prefix}");
    assert_eq!(*sigmas.last().unwrap(), 0.0, "{prefix}: final sigma");
    let err = max_rel_elem(sigmas, &want_s, 1e-30).max(max_rel_elem(timesteps, &want_t, 1e-30));
    assert!(err <= SIGMA_REL_TOL, "{prefix}: max rel error {err:e}");
    err
}

#[test]
fn qwen_schedules_match_diffusers() {
    let fx = Fixture::reference("scheduler.safetensors");
    let meta = fx.metadata();
    let config = qwen_config();
    assert_eq!(config.shift_terminal, Some(0.02));
    assert!(config.use_dynamic_shifting);

    let mut worst = 0.0f64;
    let mut checked = 0;
    for (res, len) in resolutions(&meta) {
        let mu: f64 = meta[&format!("mu.{res}")].parse().unwrap();
        assert!((config.mu(len) - mu).abs() <= 1e-15, "mu {res}");
        for n in [2, 4, 8, 20, 50] {
            let s = config.schedule(n, len).unwrap();
            assert_eq!(s.steps(), n);
            worst = worst.max(compare(
                &fx,
                &format!("qwen.{res}.n{n}"),
                &s.sigmas,
                &s.timesteps,
            ));
            assert!(
                (s.sigmas[n - 1] - 0.02).abs() <= 1e-7,
                "terminal {res} n{n}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 15);
    eprintln!("qwen schedules: max rel error {worst:e}");

    // Spec §1.4 worked values, N = 50 at 1024²: first and last sigmas.
    let s = config.schedule(50, 4096).unwrap().sigmas;
    let first = [1.0, 0.989701, 0.979192, 0.968465, 0.957516];
    let last = [0.165502, 0.131149, 0.095499, 0.058476, 0.02];
    for (got, want) in s[..5].iter().zip(first).chain(s[45..50].iter().zip(last)) {
        assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
    }
}

#[test]
fn one_step_with_the_terminal_stretch_goes_from_1_straight_to_0() {
    let fx = Fixture::reference("scheduler.safetensors");
    let config = qwen_config();
    for (res, len) in resolutions(&fx.metadata()) {
        // diffusers divides 0 by 0 here and stores NaN.
        let (_, reference) = fx.f32(&format!("qwen.{res}.n1.sigmas"));
        assert!(reference[0].is_nan() && reference[1] == 0.0);
        let s = config.schedule(1, len).unwrap();
        assert_eq!(s.sigmas, [1.0, 0.0]);
        assert_eq!(s.timesteps, [1000.0]);
        assert_eq!(s.dt(0), -1.0);
    }
    assert!(matches!(
        config.schedule(0, 16),
        Err(SchedulerError::ZeroSteps)
    ));
}

#[test]
fn lightning_and_static_shift_schedules_match_diffusers() {
    let fx = Fixture::reference("scheduler.safetensors");
    let meta = fx.metadata();
    let lightning = qwen_config().lightning();
    let mu: f64 = meta["mu.lightning"].parse().unwrap();
    assert!((lightning.mu(4096) - mu).abs() <= 1e-15);
    assert!((lightning.mu(16) - mu).abs() <= 1e-15);

    // Static shift 3 is the same map, 3s / (1 + 2s), with other f32 roundings.
    let static3 = SchedulerConfig {
        shift_terminal: None,
        ..qwen_config()
    }
    .with_static_shift(3.0);

    let (mut worst_lightning, mut worst_static) = (0.0f64, 0.0f64);
    for n in [1, 2, 4, 8] {
        let prefix = format!("lightning.1024x1024.n{n}");
        let s = lightning.schedule(n, 4096).unwrap();
        worst_lightning = worst_lightning.max(compare(&fx, &prefix, &s.sigmas, &s.timesteps));
        let s = static3.schedule(n, 4096).unwrap();
        worst_static = worst_static.max(compare(&fx, &prefix, &s.sigmas, &s.timesteps));
    }
    eprintln!("lightning: max rel error {worst_lightning:e}; static shift 3: {worst_static:e}");

    // Spec §1.4: 4 Lightning steps are 1, .9, .75, .5.
    let s = lightning.schedule(4, 1234).unwrap().sigmas;
    for (got, want) in s.iter().zip([1.0, 0.9, 0.75, 0.5, 0.0]) {
        assert!((got - want).abs() <= 1e-7, "{got} vs {want}");
    }
}

#[test]
fn euler_steps_match_diffusers() {
    let fx = Fixture::reference("scheduler.safetensors");
    let (_, want_sigmas) = fx.f32("euler.sigmas");
    let sigmas = qwen_config().schedule(3, 16).unwrap().sigmas;
    assert_eq!(
        max_rel_elem(&sigmas, &want_sigmas, 1e-30),
        0.0,
        "{sigmas:?}"
    );

    let (shape, sample) = fx.f32("euler.input.sample");
    let (_, v) = fx.f32("euler.input.model_output");
    let (_, after) = fx.f32("euler.output.after_each_step");
    let n = sample.len();

    use qwen_runtime::__private::mlx_rs::Array;
    let dims: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
    let v_array = Array::from_slice(&v, &dims);
    let mut x = sample.clone();
    let mut x_array = Array::from_slice(&sample, &dims);
    let mut worst = 0.0f64;
    for i in 0..3 {
        euler_step(&mut x, &v, sigmas[i], sigmas[i + 1]);
        x_array = euler_step_array(&x_array, &v_array, sigmas[i], sigmas[i + 1]).unwrap();
        let want = &after[i * n..(i + 1) * n];
        let err = max_rel_elem(&x, want, 1e-6);
        assert!(err <= 1e-6, "step {i}: {err:e}");
        worst = worst.max(err);
        assert_eq!(x_array.as_slice::<f32>(), &x[..], "array path, step {i}");
    }
    eprintln!("euler: max rel error {worst:e}");
}

#[test]
fn config_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("scheduler_config.json");
    let err = SchedulerConfig::from_file(&missing).unwrap_err();
    assert!(matches!(err, SchedulerError::NotFound { .. }));
    assert!(err.to_string().contains("scheduler_config.json"), "{err}");

    std::fs::write(&missing, r#"{"use_karras_sigmas": true}"#).unwrap();
    let err = SchedulerConfig::from_file(&missing).unwrap_err();
    assert!(
        matches!(&err, SchedulerError::Unsupported { option, .. } if option == "use_karras_sigmas")
    );
    assert!(err.to_string().contains("scheduler_config.json"), "{err}");

    std::fs::write(&missing, r#"{"time_shift_type": "cosine"}"#).unwrap();
    let err = SchedulerConfig::from_file(&missing).unwrap_err();
    assert!(matches!(err, SchedulerError::Json { .. }), "{err}");

    // Defaults are diffusers' class defaults.
    std::fs::write(&missing, "{}").unwrap();
    assert_eq!(
        SchedulerConfig::from_file(&missing).unwrap(),
        SchedulerConfig::default()
    );
}
